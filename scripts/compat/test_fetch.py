"""Fetch on the raw wire (kwire): long poll honours max_wait_ms and is woken
by an append; record batches come back byte for byte as produced (only the
base offset and the partition leader epoch may differ); a fetch offset inside
a batch returns the whole batch."""

from __future__ import annotations

import struct
import threading
import time
import uuid

import pytest

import kwire

BROKER_PARAMS = {"shards": 2, "broker_id": 0}


def ensure_topic(broker, topic: str) -> int:
    """Auto-creates a 1-partition topic; returns the port of partition 0's leader."""
    deadline = time.monotonic() + 15
    with kwire.Conn(broker.host, broker.ports[0]) as c:
        v = kwire.pick_version(kwire.negotiate(c), kwire.METADATA, 4, 12)
        while True:
            t = kwire.metadata(c, v, [topic], allow_auto_create=True).topics.get(topic)
            if t and t.error_code == 0 and 0 in t.partitions and t.partitions[0].leader >= 0:
                return broker.port_of_node(t.partitions[0].leader)
            assert time.monotonic() < deadline, t
            time.sleep(0.2)


def versions(c: kwire.Conn) -> tuple[int, int]:
    keys = kwire.negotiate(c)
    return kwire.pick_version(keys, kwire.PRODUCE, 3, 9), kwire.pick_version(keys, kwire.FETCH, 4, 11)


def fetch(c, fv, topic, offset, max_wait_ms, **kw) -> kwire.FetchPartition:
    body = kwire.fetch_body(fv, topic, 0, offset, max_wait_ms, **kw)
    return kwire.parse_fetch(c.request(kwire.FETCH, fv, body), fv)[(topic, 0)]


def same_batch(got: bytes, sent: bytes) -> bool:
    # Skip base_offset (0..8) and partition_leader_epoch (12..16).
    return got[8:12] == sent[8:12] and got[16:] == sent[16:]


def test_long_poll_waits_then_wakes_on_append(broker):
    topic = f"lp-{uuid.uuid4().hex[:8]}"
    port = ensure_topic(broker, topic)
    with kwire.Conn(broker.host, port) as c:
        pv, fv = versions(c)
        t0 = time.monotonic()
        empty = fetch(c, fv, topic, 0, 1000)
        waited = time.monotonic() - t0
        assert (empty.error_code, empty.high_watermark) == (0, 0), empty
        assert not kwire.split_batches(empty.records)
        assert 0.8 <= waited <= 3.0, f"empty fetch with max_wait_ms=1000 returned after {waited:.2f}s"

        sent = kwire.record_batch([kwire.Record(b"lp", b"wake up", [("h", b"1")], 1_740_000_000_000)])

        def produce_later():
            time.sleep(0.5)
            with kwire.Conn(broker.host, port) as p:
                r = kwire.produce(p, pv, topic, 0, sent)
                assert r.error_code == 0

        th = threading.Thread(target=produce_later)
        t1 = time.monotonic()
        th.start()
        got = fetch(c, fv, topic, 0, 10000)
        woke = time.monotonic() - t1
        th.join()
        assert got.error_code == 0 and got.high_watermark == 1, got
        batches = kwire.split_batches(got.records)
        assert len(batches) == 1 and same_batch(batches[0], sent), got.records
        assert woke < 3.0, f"a fetch parked with max_wait_ms=10000 was answered {woke:.2f}s after start " \
                           "(append at 0.5s should wake it)"


def test_batches_round_trip_byte_for_byte(broker):
    topic = f"bytes-{uuid.uuid4().hex[:8]}"
    port = ensure_topic(broker, topic)
    sent = [kwire.record_batch([kwire.Record(f"k{b}-{i}".encode(), bytes([b, i]) * (50 * i + 1),
                                             [("b", str(b).encode())], 1_740_000_000_000 + 7 * i)
                                for i in range(1 + b % 4)])
            for b in range(12)]
    with kwire.Conn(broker.host, port) as c:
        pv, fv = versions(c)
        base = []
        for s in sent:
            r = kwire.produce(c, pv, topic, 0, s)
            assert r.error_code == 0, r
            base.append(r.base_offset)
        total = sum(1 + b % 4 for b in range(12))
        got = []
        offset = 0
        while offset < total:
            f = fetch(c, fv, topic, offset, 100, partition_max_bytes=512)
            assert f.error_code == 0 and f.high_watermark == total, f
            batches = kwire.split_batches(f.records)
            assert batches, f"no whole batch at offset {offset} with partition_max_bytes=512 " \
                            "(the first batch must be returned even if larger)"
            for b in batches:
                (bo,) = struct.unpack_from(">q", b, 0)
                if bo >= offset:
                    got.append((bo, b))
                (n,) = struct.unpack_from(">i", b, 57)
                offset = bo + n
    assert [bo for bo, _ in got] == base
    for (bo, g), s in zip(got, sent):
        assert same_batch(g, s), f"batch at {bo} differs from the one produced"


@pytest.mark.parametrize("inside", [1, 2])
def test_fetch_offset_inside_batch_returns_whole_batch(broker, inside):
    topic = f"inside-{uuid.uuid4().hex[:8]}"
    port = ensure_topic(broker, topic)
    sent = kwire.record_batch([kwire.Record(b"k", f"r{i}".encode()) for i in range(4)])
    with kwire.Conn(broker.host, port) as c:
        pv, fv = versions(c)
        assert kwire.produce(c, pv, topic, 0, sent).base_offset == 0
        f = fetch(c, fv, topic, inside, 100)
        batches = kwire.split_batches(f.records)
        assert batches and struct.unpack_from(">q", batches[0], 0)[0] == 0, \
            f"fetch at offset {inside} should return the batch starting at 0"
        assert same_batch(batches[0], sent)
