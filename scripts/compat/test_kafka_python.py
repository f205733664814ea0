"""kafka-python (pure Python client, its own protocol code) against the broker:
admin create/describe/delete and a 5,000-message round trip per compression."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import TopicAlreadyExistsError

BROKER_PARAMS = {"shards": 2, "broker_id": 0}

N_MESSAGES = 5_000
N_PARTITIONS = 3
BASE_TS = 1_710_000_000_000


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin(broker):
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="compat-kafka-python",
                         request_timeout_ms=30000)
    yield a
    a.close()


def wait_for_partitions(admin, name: str, n: int, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        topics = [t for t in admin.describe_topics([name]) if t["name"] == name]
        last = topics
        if topics and topics[0]["error_code"] == 0 and len(topics[0]["partitions"]) == n \
                and all(p["leader_id"] >= 0 for p in topics[0]["partitions"]):
            return topics[0]
        time.sleep(0.2)
    pytest.fail(f"{name}: expected {n} led partitions, metadata says {last}")


def test_admin_create_describe_delete(broker, admin):
    name = unique("kp-admin")
    res = admin.create_topics({name: {"num_partitions": N_PARTITIONS, "replication_factor": 1}})
    assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(name, 0)]

    t = wait_for_partitions(admin, name, N_PARTITIONS)
    assert sorted(p["partition_index"] for p in t["partitions"]) == list(range(N_PARTITIONS))
    assert {p["leader_id"] for p in t["partitions"]} <= set(broker.expected_nodes)
    assert name in admin.list_topics()

    cluster = admin.describe_cluster()
    assert {b["broker_id"]: (b["host"], b["port"]) for b in cluster["brokers"]} == broker.expected_nodes

    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics({name: {"num_partitions": 1, "replication_factor": 1}})
    res = admin.create_topics({name: {"num_partitions": 1, "replication_factor": 1}}, raise_errors=False)
    assert res["topics"][0]["error_code"] == 36  # TOPIC_ALREADY_EXISTS

    res = admin.delete_topics([name])
    assert [(t["name"], t["error_code"]) for t in res["topics"]] == [(name, 0)]
    deadline = time.monotonic() + 15
    while name in admin.list_topics():
        assert time.monotonic() < deadline, f"{name} still listed after delete_topics"
        time.sleep(0.2)


def message(i: int):
    key = f"k{i % 250}".encode()
    value = f"kafka-python value {i} ".encode() + bytes([i % 251]) * (i % 300)
    headers = [("idx", str(i).encode()), ("src", b"kafka-python")]
    return key, value, headers, BASE_TS + i


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_round_trip(broker, admin, compression, figures):
    topic = unique(f"kp-rt-{compression or 'none'}")
    admin.create_topics({topic: {"num_partitions": N_PARTITIONS, "replication_factor": 1}})
    wait_for_partitions(admin, topic, N_PARTITIONS)

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             compression_type=compression, enable_idempotence=False,
                             linger_ms=5, request_timeout_ms=30000)
    t0 = time.monotonic()
    futures = []
    for i in range(N_MESSAGES):
        key, value, headers, ts = message(i)
        futures.append(producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=ts))
    producer.flush(60)
    produce_s = time.monotonic() - t0
    reports = {}
    for i, f in enumerate(futures):
        md = f.get(timeout=30)
        assert md.topic == topic
        reports[i] = (md.partition, md.offset)
    producer.close(10)

    per_part: dict[int, list[tuple[int, int]]] = {}
    for i, (p, off) in reports.items():
        per_part.setdefault(p, []).append((off, i))
    assert sorted(per_part) == list(range(N_PARTITIONS)), "keys should spread over all partitions"
    for p, entries in per_part.items():
        entries.sort()
        assert [o for o, _ in entries] == list(range(len(entries))), f"partition {p}: offsets not 0..n-1"
        assert [i for _, i in entries] == sorted(i for _, i in entries), f"partition {p}: not in send order"

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             request_timeout_ms=30000, fetch_max_wait_ms=100)
    tps = [TopicPartition(topic, p) for p in range(N_PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen = {}
    problems = []
    last = {p: -1 for p in range(N_PARTITIONS)}
    t1 = time.monotonic()
    deadline = t1 + 60
    try:
        while len(seen) < N_MESSAGES and time.monotonic() < deadline:
            for tp, recs in consumer.poll(timeout_ms=500, max_records=2000).items():
                for r in recs:
                    check_record(r, topic, seen, last, problems)
        consume_s = time.monotonic() - t1
        for tp, recs in consumer.poll(timeout_ms=500).items():
            for r in recs:
                check_record(r, topic, seen, last, problems)
    finally:
        consumer.close()

    assert not problems, problems[:10]
    assert len(seen) == N_MESSAGES, f"{N_MESSAGES - len(seen)} messages never consumed"
    assert seen == reports
    figures.record(f"kafka-python    {compression or 'none':6s} {N_MESSAGES} msgs: produce "
                   f"{N_MESSAGES / produce_s:,.0f} msg/s; consume {N_MESSAGES / consume_s:,.0f} msg/s")


def check_record(r, topic, seen, last, problems):
    hdrs = list(r.headers or [])
    try:
        i = int(dict(hdrs)["idx"])
    except (KeyError, ValueError):
        problems.append(f"record at {r.partition}/{r.offset} without idx header")
        return
    if i in seen:
        problems.append(f"#{i} consumed twice")
        return
    if r.offset <= last[r.partition]:
        problems.append(f"partition {r.partition}: offset {r.offset} after {last[r.partition]}")
    last[r.partition] = r.offset
    seen[i] = (r.partition, r.offset)
    key, value, headers, ts = message(i)
    if r.topic != topic or r.key != key or r.value != value:
        problems.append(f"#{i}: topic/key/value differ: {r.topic} {r.key!r} {r.value[:40]!r}")
    if hdrs != headers:
        problems.append(f"#{i}: headers {hdrs} != {headers}")
    if (r.timestamp_type, r.timestamp) != (0, ts):
        problems.append(f"#{i}: timestamp {(r.timestamp_type, r.timestamp)} != (0, {ts})")
