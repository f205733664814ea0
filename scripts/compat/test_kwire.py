"""Self-checks of kwire.py (no broker needed): if our hand-written encoder
were wrong, the raw-wire tests would blame the broker for our mistake.
The record batch is checked against kafka-python's independent parser."""

import random

import pytest
from kafka.record.default_records import DefaultRecordBatch
from kafka.record import _crc32c as kp_crc32c

import kwire


def test_crc32c_known_vector():
    # RFC 3720 B.4 check value for "123456789".
    assert kwire.crc32c(b"123456789") == 0xE3069283
    rng = random.Random(7)
    for n in (0, 1, 5, 100, 1000):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        assert kwire.crc32c(data) == kp_crc32c.crc(data)


@pytest.mark.parametrize("v", [0, 1, -1, 63, -64, 64, 300, -300, 2**31 - 1, -(2**31), 2**40])
def test_varint_round_trip(v):
    w = kwire.Writer().varint(v)
    r = kwire.Reader(w.getvalue())
    assert r.varint() == v
    r.expect_end("varint")


def test_record_batch_parsed_by_kafka_python():
    recs = [
        kwire.Record(b"k0", b"v0", [("h", b"x"), ("nul", None)], 1_700_000_000_000),
        kwire.Record(None, b"v1" * 100, [], 1_700_000_000_005),
        kwire.Record(b"k2", None, [("a", b""), ("b", b"\x00\xff")], 1_699_999_999_990),
    ]
    raw = kwire.record_batch(recs, base_offset=42)
    batch = DefaultRecordBatch(raw)
    assert batch.validate_crc()
    assert batch.base_offset == 42
    assert batch.records_count == 3
    assert batch.last_offset_delta == 2
    assert batch.first_timestamp == 1_699_999_999_990
    assert batch.max_timestamp == 1_700_000_000_005
    got = list(batch)
    assert [r.offset for r in got] == [42, 43, 44]
    assert [r.key for r in got] == [b"k0", None, b"k2"]
    assert [r.value for r in got] == [b"v0", b"v1" * 100, None]
    assert [r.timestamp for r in got] == [rec.timestamp for rec in recs]
    assert [list(r.headers) for r in got] == [rec.headers for rec in recs]
    assert DefaultRecordBatch(kwire.record_batch(recs, corrupt_crc=True)).validate_crc() is False


def test_metadata_and_produce_bodies_decode_symmetrically():
    # Encoding a request and decoding a response share primitives; make sure
    # a flexible body round-trips the compact encodings we rely on.
    w = kwire.Writer().string("abc", compact=True).string(None, compact=True).bytes_(b"xy", compact=True)
    w.array_len(3, compact=True).tags(True)
    r = kwire.Reader(w.getvalue())
    assert r.string(True) == "abc"
    assert r.string(True) is None
    assert r.bytes_(True) == b"xy"
    assert r.array_len(True) == 3
    assert r.skip_tags(True) == {}
    r.expect_end("compact")
