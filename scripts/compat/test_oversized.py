"""A batch larger than the WAL can hold (issue 15, defect 3).

One shard on a 64 MiB WAL: its largest WAL record is about half the slice,
~32 MiB. A topic may still say max.message.bytes = 64 MB. A 40 MiB record
must be answered MESSAGE_TOO_LARGE (not retried by the client), not
KAFKA_STORAGE_ERROR (retried, and a WAL recovery that fails every produce of
the shard meanwhile); DescribeConfigs reports the cap produce enforces, and
the cap is exact: a batch of that size is taken, one byte more is not.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

import kwire

WAL_BYTES = 64 << 20
BROKER_PARAMS = {"shards": 1, "broker_id": 0, "args": ["--wal-size-bytes", str(WAL_BYTES)]}
TOPIC_MAX = 64_000_000
MESSAGE_TOO_LARGE = 10


def admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})


def create_big_topic(broker) -> str:
    topic = f"big-{uuid.uuid4().hex[:8]}"
    a = admin(broker)  # kept alive until the result is in
    fs = a.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": str(TOPIC_MAX)})])
    fs[topic].result(timeout=30)
    return topic


def described_max_message_bytes(broker, topic: str) -> int:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    a = admin(broker)
    entries = a.describe_configs([res])[res].result(timeout=30)
    return int(entries["max.message.bytes"].value)


def producer(broker) -> Producer:
    return Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                     "acks": "all", "message.max.bytes": 100_000_000,
                     "message.timeout.ms": 60_000, "linger.ms": 0})


def produce_one(p: Producer, topic: str, value: bytes, timeout: float = 60) -> KafkaError | None:
    out = []
    p.produce(topic, value=value, partition=0, on_delivery=lambda err, msg: out.append(err))
    p.flush(timeout)
    assert out, "no delivery report"
    return out[0]


def test_record_larger_than_the_wal_is_message_too_large(broker):
    topic = create_big_topic(broker)
    cap = described_max_message_bytes(broker, topic)
    assert cap < 40 << 20, f"max.message.bytes {cap} is reported, but the WAL cannot hold that"
    assert cap <= WAL_BYTES // 2

    p = producer(broker)
    started = time.monotonic()
    err = produce_one(p, topic, b"x" * (40 << 20))
    took = time.monotonic() - started
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    # Not retriable: answered at once, not after message.timeout.ms of retries.
    assert took < 20, f"the refusal took {took:.1f}s"

    # The shard keeps serving: the next produces succeed at once.
    values = [f"small-{i}".encode() for i in range(10)]
    for v in values:
        assert produce_one(p, topic, v, timeout=10) is None
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": f"g-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                  "fetch.max.bytes": 100_000_000, "receive.message.max.bytes": 200_000_000})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < len(values) and time.monotonic() < deadline:
            for m in c.consume(10, timeout=1):
                assert m.error() is None, m.error()
                got.append((m.offset(), m.value()))
        assert got == list(enumerate(values)), "the refused record took no offset"
    finally:
        c.close()
    log = broker.log_text()
    assert "WAL failed" not in log, "a request error was treated as a device failure"


def _varint(n: int) -> bytes:
    return kwire.Writer().varint(n).getvalue()


def _batch_len(value_len: int) -> int:
    """Size of kwire.record_batch([Record(None, value)]): a 61-byte batch
    header, then one record (its length, attributes, timestamp and offset
    deltas, a null key, the value with its length, no headers)."""
    body = 5 + len(_varint(value_len)) + value_len
    return 61 + len(_varint(body)) + body


def batch_of_size(size: int, fill: bytes = b"y") -> bytes:
    """A valid one-record batch of exactly `size` bytes (or one byte more,
    when varint widths make `size` itself impossible)."""
    n = size - 80
    while _batch_len(n) < size:
        n += 1
    b = kwire.record_batch([kwire.Record(None, fill * n)])
    assert len(b) == _batch_len(n), (len(b), _batch_len(n))
    return b


def test_reported_cap_is_exactly_what_produce_takes(broker):
    topic = create_big_topic(broker)
    cap = described_max_message_bytes(broker, topic)
    assert cap < TOPIC_MAX
    with kwire.Conn(broker.host, broker.ports[0], timeout=60) as c:
        v = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
        at_cap = batch_of_size(cap)
        if len(at_cap) > cap:  # varint widths: take the largest size below
            at_cap = batch_of_size(cap - 2)
        assert cap - 2 <= len(at_cap) <= cap
        r = kwire.produce(c, v, topic, 0, at_cap, timeout_ms=30000)
        assert r.error_code == kwire.NONE and r.base_offset == 0, r
        over = batch_of_size(cap + 1)
        assert len(over) > cap
        r = kwire.produce(c, v, topic, 0, over, timeout_ms=30000)
        assert r.error_code == MESSAGE_TOO_LARGE, r
        assert r.error_message and "max.message.bytes" in r.error_message, r
        r = kwire.produce(c, v, topic, 0, kwire.record_batch([kwire.Record(b"k", b"after")]))
        assert r.error_code == kwire.NONE and r.base_offset == 1, r


def create_topic_v5(conn: kwire.Conn, name: str, configs: dict[str, str]) -> dict[str, str]:
    """CreateTopics v5 (the first version that returns the topic's configs);
    returns them."""
    w = kwire.Writer().array_len(1, True).string(name, True).int32(1).int16(1)
    w.array_len(0, True)  # assignments
    w.array_len(len(configs), True)
    for k, v in configs.items():
        w.string(k, True).string(v, True).tags(True)
    w.tags(True).int32(30000).bool(False).tags(True)
    r = conn.request(kwire.CREATE_TOPICS, 5, w.getvalue())
    r.int32()  # throttle_time_ms
    assert r.array_len(True) == 1
    assert r.string(True) == name
    err, msg = r.int16(), r.string(True)
    assert err == kwire.NONE, (err, msg)
    r.int32()  # num_partitions
    r.int16()  # replication_factor
    out = {}
    for _ in range(max(r.array_len(True), 0)):
        k, v = r.string(True), r.string(True)
        r.bool()  # read_only
        r.int8()  # config_source
        r.bool()  # is_sensitive
        r.skip_tags(True)
        out[k] = v
    r.skip_tags(True)
    r.skip_tags(True)
    r.expect_end("CreateTopics v5 response")
    return out


def test_create_topics_reports_the_cap_too(broker):
    """CreateTopics v5+ answers with the new topic's configs: the same
    capped max.message.bytes as DescribeConfigs."""
    name = f"big-ct-{uuid.uuid4().hex[:8]}"
    with kwire.Conn(broker.host, broker.ports[0]) as c:
        configs = create_topic_v5(c, name, {"max.message.bytes": str(TOPIC_MAX)})
    assert int(configs["max.message.bytes"]) == described_max_message_bytes(broker, name) < TOPIC_MAX
