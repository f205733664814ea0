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


# -- cross-checks against kafka-python's schema-generated protocol classes ----

def _reencode(cls, data: bytes, version: int) -> bytes:
    msg = cls.decode(data, version=version)
    msg._header = None  # decoded messages carry no header; encode() wants the attribute
    return msg.encode(version=version)


@pytest.mark.parametrize("version", range(1, 13))
def test_metadata_request_matches_kafka_python(version):
    from kafka.protocol.metadata import MetadataRequest
    for topics in (["a", "bb"], None, []):
        body = kwire.metadata_body(version, topics, True)
        assert _reencode(MetadataRequest, body, version) == body


@pytest.mark.parametrize("version", range(1, 13))
def test_metadata_response_from_kafka_python(version):
    import uuid
    from kafka.protocol.metadata import MetadataResponse
    B = MetadataResponse.MetadataResponseBroker
    T = MetadataResponse.MetadataResponseTopic
    P = T.MetadataResponsePartition
    tid = uuid.uuid4()
    resp = MetadataResponse(
        throttle_time_ms=0, cluster_id="c", controller_id=1000, authorized_operations=[],
        brokers=[B(node_id=1000, host="127.0.0.1", port=9092, rack=None),
                 B(node_id=1001, host="127.0.0.1", port=9093, rack="r")],
        topics=[T(error_code=0, name="t", topic_id=tid, is_internal=False, authorized_operations=[],
                  partitions=[P(error_code=0, partition_index=i, leader_id=1000 + i % 2, leader_epoch=0,
                                replica_nodes=[1000 + i % 2], isr_nodes=[1000 + i % 2], offline_replicas=[])
                              for i in range(4)])])
    md = kwire.parse_metadata(kwire.Reader(resp.encode(version=version)), version)
    assert md.brokers == {1000: ("127.0.0.1", 9092), 1001: ("127.0.0.1", 9093)}
    assert {i: p.leader for i, p in md.topics["t"].partitions.items()} == {0: 1000, 1: 1001, 2: 1000, 3: 1001}
    assert (md.topics["t"].topic_id == tid) == (version >= 10)


@pytest.mark.parametrize("version", range(3, 10))
def test_produce_request_matches_kafka_python(version):
    from kafka.protocol.producer import ProduceRequest
    batch = kwire.record_batch([kwire.Record(b"k", b"v")])
    body = kwire.produce_body(version, -1, 1234, {"t1": {0: batch, 3: batch}, "t2": {1: None}})
    assert _reencode(ProduceRequest, body, version) == body


@pytest.mark.parametrize("version", range(3, 10))
def test_produce_response_from_kafka_python(version):
    from kafka.protocol.producer import ProduceResponse
    TP = ProduceResponse.TopicProduceResponse
    PP = TP.PartitionProduceResponse
    resp = ProduceResponse(throttle_time_ms=0, responses=[TP(name="t", partition_responses=[
        PP(index=2, error_code=6, base_offset=-1, log_append_time_ms=-1, log_start_offset=-1,
           record_errors=[], error_message="not leader"),
        PP(index=0, error_code=0, base_offset=77, log_append_time_ms=-1, log_start_offset=0,
           record_errors=[], error_message=None)])])
    out = kwire.parse_produce(kwire.Reader(resp.encode(version=version)), version)
    assert out[("t", 2)].error_code == 6
    assert (out[("t", 0)].error_code, out[("t", 0)].base_offset) == (0, 77)


@pytest.mark.parametrize("version", range(0, 4))
def test_api_versions_response_from_kafka_python(version):
    from kafka.protocol.metadata import ApiVersionsResponse
    AV = ApiVersionsResponse.ApiVersion
    resp = ApiVersionsResponse(error_code=0, throttle_time_ms=0,
                               api_keys=[AV(api_key=18, min_version=0, max_version=3),
                                         AV(api_key=0, min_version=3, max_version=9)])
    out = kwire.parse_api_versions(kwire.Reader(resp.encode(version=version)), version)
    assert out.api_keys == {18: (0, 3), 0: (3, 9)}


@pytest.mark.parametrize("version", range(4, 12))
def test_fetch_request_matches_kafka_python(version):
    from kafka.protocol.consumer import FetchRequest
    body = kwire.fetch_body(version, "t", 3, 12345, 500, partition_max_bytes=777)
    assert _reencode(FetchRequest, body, version) == body


@pytest.mark.parametrize("version", range(4, 12))
def test_fetch_response_from_kafka_python(version):
    from kafka.protocol.consumer import FetchResponse
    R = FetchResponse.FetchableTopicResponse
    batch = kwire.record_batch([kwire.Record(b"k", b"v")], base_offset=5)
    resp = FetchResponse(throttle_time_ms=0, error_code=0, session_id=0, responses=[R(topic="t", partitions=[
        R.PartitionData(partition_index=3, error_code=0, high_watermark=6, last_stable_offset=6,
                        log_start_offset=0, aborted_transactions=None, preferred_read_replica=-1,
                        records=batch + batch[:20])])])
    out = kwire.parse_fetch(kwire.Reader(resp.encode(version=version)), version)
    assert (out[("t", 3)].error_code, out[("t", 3)].high_watermark) == (0, 6)
    assert kwire.split_batches(out[("t", 3)].records) == [batch]
