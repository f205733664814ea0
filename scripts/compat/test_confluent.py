"""confluent-kafka (librdkafka) against the broker: admin operations and a
100,000-message round trip per compression type, checked message by message."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import (OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, Consumer, KafkaError,
                             KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewPartitions, NewTopic

BROKER_PARAMS = {"shards": 2, "broker_id": 0}

N_MESSAGES = 100_000
N_PARTITIONS = 6
COMPRESSIONS = ["none", "gzip", "snappy", "lz4", "zstd"]
BASE_TS = 1_700_000_000_000  # explicit CreateTime; each message adds its index
ADMIN_TIMEOUT = 30


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin_for(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})


def create_topic(admin: AdminClient, name: str, partitions: int, config: dict | None = None) -> None:
    fs = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                       config=config or {})], operation_timeout=ADMIN_TIMEOUT)
    fs[name].result(timeout=ADMIN_TIMEOUT)
    wait_for_topic(admin, name, partitions)


def wait_for_topic(admin: AdminClient, name: str, partitions: int, timeout: float = 15.0):
    """Metadata can lag CreateTopics by a moment; wait until every partition has a leader."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=10)
        t = md.topics.get(name)
        last = t
        if t is not None and t.error is None and len(t.partitions) == partitions and \
                all(p.leader >= 0 for p in t.partitions.values()):
            return md
        time.sleep(0.2)
    pytest.fail(f"topic {name} not visible with {partitions} led partitions in metadata; last: {last!r}")


# -- admin ---------------------------------------------------------------------

def test_metadata_lists_every_shard(broker):
    md = admin_for(broker).list_topics(timeout=10)
    got = {b.id: (b.host, b.port) for b in md.brokers.values()}
    assert got == broker.expected_nodes


def test_create_describe_delete_topic(broker):
    admin = admin_for(broker)
    name = unique("admin")
    create_topic(admin, name, N_PARTITIONS, {"retention.ms": "3600000"})

    md = admin.list_topics(timeout=10)
    t = md.topics[name]
    assert sorted(t.partitions) == list(range(N_PARTITIONS))
    leaders = [t.partitions[p].leader for p in range(N_PARTITIONS)]
    assert set(leaders) == set(broker.expected_nodes), f"leaders {leaders} should cover every shard"
    for p in t.partitions.values():
        assert p.replicas == [p.leader] and p.isrs == [p.leader], p

    # Creating it again is an error the client understands.
    fs = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)],
                             operation_timeout=ADMIN_TIMEOUT)
    with pytest.raises(KafkaException) as ei:
        fs[name].result(timeout=ADMIN_TIMEOUT)
    assert ei.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    # DescribeConfigs lists every topic config, with the one we set.
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([res])[res].result(timeout=ADMIN_TIMEOUT)
    assert configs["retention.ms"].value == "3600000", configs["retention.ms"]
    for key in ("cleanup.policy", "segment.bytes", "max.message.bytes", "compression.type"):
        assert key in configs, f"DescribeConfigs lacks default config {key}: {sorted(configs)}"
    assert configs["cleanup.policy"].value == "delete"
    # Source and default flag tell a set value from a default (what tools show).
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not configs["retention.ms"].is_default
    assert configs["cleanup.policy"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["cleanup.policy"].is_default

    # CreatePartitions grows the topic.
    fs = admin.create_partitions([NewPartitions(name, N_PARTITIONS + 2)],
                                 operation_timeout=ADMIN_TIMEOUT)
    fs[name].result(timeout=ADMIN_TIMEOUT)
    wait_for_topic(admin, name, N_PARTITIONS + 2)

    fs = admin.delete_topics([name], operation_timeout=ADMIN_TIMEOUT)
    fs[name].result(timeout=ADMIN_TIMEOUT)
    deadline = time.monotonic() + 15
    while name in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{name} still listed after DeleteTopics"
        time.sleep(0.2)


def test_create_topic_with_invalid_partition_count_fails(broker):
    admin = admin_for(broker)
    name = unique("badparts")
    fs = admin.create_topics([NewTopic(name, num_partitions=0, replication_factor=1)],
                             operation_timeout=ADMIN_TIMEOUT)
    with pytest.raises(KafkaException) as ei:
        fs[name].result(timeout=ADMIN_TIMEOUT)
    assert ei.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    assert name not in admin.list_topics(timeout=10).topics


def test_describe_broker_configs(broker):
    admin = admin_for(broker)
    res = ConfigResource(ConfigResource.Type.BROKER, str(broker.node_id(0)))
    configs = admin.describe_configs([res])[res].result(timeout=ADMIN_TIMEOUT)
    assert configs["num.partitions"].value == "1", configs["num.partitions"]
    assert configs["auto.create.topics.enable"].value == "true", configs["auto.create.topics.enable"]


def test_describe_cluster(broker):
    admin = admin_for(broker)  # keep a reference: a freed handle cancels the request
    desc = admin.describe_cluster(request_timeout=ADMIN_TIMEOUT).result(timeout=ADMIN_TIMEOUT)
    got = {n.id: (n.host, n.port) for n in desc.nodes}
    assert got == broker.expected_nodes
    assert desc.controller is None or desc.controller.id in broker.expected_nodes


# -- produce / consume round trip ---------------------------------------------

def message(i: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], int]:
    """Deterministic message i: key, value, headers, timestamp. Sizes vary;
    content is half repetitive, half unique so every codec has work to do."""
    key = None if i % 97 == 0 else f"key-{i % 5000}".encode()
    if i % 1009 == 0:
        value = None  # tombstone
    else:
        filler = (b"abcdefghij" * 20)[: 20 + (i * 37) % 180]
        value = f"value-{i}-".encode() + filler + i.to_bytes(4, "big") * 4
    headers = [("idx", str(i).encode()), ("h2", f"hv-{i % 7}".encode())]
    if i % 13 == 0:
        headers.append(("empty", b""))
    if i % 17 == 0:
        headers.append(("nul", None))
    return key, value, headers, BASE_TS + i


def payload_bytes(i: int) -> int:
    key, value, headers, _ = message(i)
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_100k(broker, compression, figures):
    admin = admin_for(broker)
    topic = unique(f"rt-{compression}")
    create_topic(admin, topic, N_PARTITIONS)

    # ---- produce ----
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "broker.address.family": "v4",
        "acks": "all",
        "compression.type": compression,
        "enable.idempotence": False,
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 200000,
        "message.timeout.ms": 60000,
    })
    reports: dict[int, tuple[int, int]] = {}
    errors: list[str] = []

    def on_delivery(i, err, msg):
        if err is not None:
            errors.append(f"#{i}: {err}")
        elif i in reports:
            errors.append(f"#{i}: second delivery report")
        else:
            reports[i] = (msg.partition(), msg.offset())

    total_bytes = sum(payload_bytes(i) for i in range(N_MESSAGES))
    t0 = time.monotonic()
    for i in range(N_MESSAGES):
        key, value, headers, ts = message(i)
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, timestamp=ts,
                                 on_delivery=lambda err, msg, i=i: on_delivery(i, err, msg))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(90)
    produce_s = time.monotonic() - t0
    assert remaining == 0, f"{remaining} messages undelivered after flush"
    assert not errors, f"{len(errors)} delivery errors, first: {errors[:5]}"
    assert len(reports) == N_MESSAGES

    # Offsets per partition are exactly 0..n-1, assigned in produce order.
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for i, (p, off) in reports.items():
        by_partition.setdefault(p, []).append((off, i))
    assert set(by_partition) <= set(range(N_PARTITIONS))
    assert len(by_partition) == N_PARTITIONS, f"only partitions {sorted(by_partition)} got data"
    for p, entries in by_partition.items():
        entries.sort()
        assert [o for o, _ in entries] == list(range(len(entries))), f"partition {p}: offsets not 0..n-1"
        idxs = [i for _, i in entries]
        assert idxs == sorted(idxs), f"partition {p}: offsets not in produce order"

    # ---- consume ----
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "broker.address.family": "v4",
        "group.id": "compat-unused",  # librdkafka requires one; assign() never joins
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
    })
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(N_PARTITIONS)])
        seen: dict[int, tuple[int, int]] = {}
        last_offset = {p: -1 for p in range(N_PARTITIONS)}
        problems: list[str] = []
        t1 = time.monotonic()
        deadline = t1 + 120
        while len(seen) < N_MESSAGES and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10000, timeout=1.0):
                check_message(msg, topic, seen, last_offset, problems)
        consume_s = time.monotonic() - t1
        # Anything arriving after the last expected message is a duplicate or junk.
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                check_message(msg, topic, seen, last_offset, problems)
    finally:
        consumer.close()

    assert not problems, f"{len(problems)} problems, first: {problems[:10]}"
    missing = N_MESSAGES - len(seen)
    assert missing == 0, f"{missing} messages never consumed, e.g. {sorted(set(range(N_MESSAGES)) - set(seen))[:10]}"
    assert seen == reports, "consumed (partition, offset) differ from delivery reports"

    mb = total_bytes / 1e6
    figures.record(
        f"confluent-kafka {compression:6s} {N_MESSAGES} msgs {mb:.1f} MB payload, "
        f"{N_PARTITIONS} partitions, acks=all: produce {N_MESSAGES / produce_s:,.0f} msg/s "
        f"{mb / produce_s:.1f} MB/s; consume {N_MESSAGES / consume_s:,.0f} msg/s {mb / consume_s:.1f} MB/s")


def check_message(msg, topic, seen, last_offset, problems) -> None:
    if msg.error() is not None:
        if msg.error().code() != KafkaError._PARTITION_EOF:
            problems.append(f"consumer error: {msg.error()}")
        return
    if msg.topic() != topic:
        problems.append(f"message from topic {msg.topic()}")
        return
    hdrs = msg.headers() or []
    try:
        i = int(dict(hdrs)["idx"])
    except (KeyError, ValueError, TypeError):
        problems.append(f"message at {msg.partition()}/{msg.offset()} without idx header: {hdrs}")
        return
    p, off = msg.partition(), msg.offset()
    if i in seen:
        problems.append(f"#{i} consumed twice ({seen[i]} and {(p, off)})")
        return
    if off <= last_offset[p]:
        problems.append(f"partition {p}: offset {off} after {last_offset[p]}")
    last_offset[p] = off
    seen[i] = (p, off)
    key, value, headers, ts = message(i)
    if msg.key() != key:
        problems.append(f"#{i}: key {msg.key()!r} != {key!r}")
    if msg.value() != value:
        problems.append(f"#{i}: value differs ({len(msg.value() or b'')} vs {len(value or b'')} bytes)")
    if [(k, v) for k, v in hdrs] != headers:
        problems.append(f"#{i}: headers {hdrs} != {headers}")
    if msg.timestamp() != (TIMESTAMP_CREATE_TIME, ts):
        problems.append(f"#{i}: timestamp {msg.timestamp()} != {(TIMESTAMP_CREATE_TIME, ts)}")


# -- offsets -------------------------------------------------------------------

def test_list_offsets_watermarks_and_timestamps(broker):
    """ListOffsets: earliest/latest, and by timestamp using the records' CreateTime."""
    admin = admin_for(broker)
    topic = unique("offsets")
    create_topic(admin, topic, 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                         "acks": "all", "linger.ms": 0, "enable.idempotence": False})
    for i in range(100):
        producer.produce(topic, value=f"m{i}".encode(), partition=0, timestamp=BASE_TS + 10 * i)
        if i % 10 == 9:
            producer.flush(30)  # several batches, so lookups cross batch boundaries
    assert producer.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                         "group.id": "compat-unused", "enable.auto.commit": False})
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 100)
        cases = {
            BASE_TS: 0,              # exact first timestamp
            BASE_TS + 505: 51,       # between records: first record with ts >= target
            BASE_TS + 555: 56,       # inside a batch
            BASE_TS + 590: 59,       # a batch's max timestamp
            BASE_TS + 591: 60,       # just after it: first record of the next batch
            BASE_TS + 990: 99,       # exact last timestamp
            BASE_TS + 10_000: -1,    # after the last record: no offset (Kafka answers -1)
        }
        got = {}
        for ts in cases:
            tp = consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)[0]
            assert tp.error is None, tp.error
            got[ts] = tp.offset
        if got[BASE_TS + 10_000] == 100:
            got[BASE_TS + 10_000] = -1  # librdkafka may report "end" as the end offset
        assert got == cases, "offsets_for_times (timestamp -> offset) differ"
    finally:
        consumer.close()


def test_fetch_from_inside_a_batch(broker):
    """A fetch offset in the middle of a batch: the broker returns the whole
    batch and the client skips the records before its offset."""
    admin = admin_for(broker)
    topic = unique("midbatch")
    create_topic(admin, topic, 1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                         "acks": "all", "linger.ms": 200, "enable.idempotence": False})
    for i in range(20):  # one linger window: one or two batches
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0)
    assert producer.flush(30) == 0

    for start in (7, 13, 19):
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                             "group.id": "compat-unused", "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(topic, 0, start)])
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 20 - start and time.monotonic() < deadline:
                for m in consumer.consume(num_messages=100, timeout=0.5):
                    assert m.error() is None, m.error()
                    got.append((m.offset(), m.key(), m.value()))
        finally:
            consumer.close()
        want = [(i, f"k{i}".encode(), f"v{i}".encode()) for i in range(start, 20)]
        assert got == want, f"from offset {start}: {got[:3]}..."
