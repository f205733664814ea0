"""Data leaves object storage: retention.ms moves the log start and the
old objects go; DeleteRecords (confluent-kafka and kafka-python) moves the
low watermark; DeleteTopics leaves no object of the topic behind. Reads
below the log start get OFFSET_OUT_OF_RANGE, and a consumer that resets
starts at the new log start.
"""
from __future__ import annotations

import re
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from objects_load import wait_for

BROKER_PARAMS = {"shards": 1, "args": [
    "--upload-interval-ms", "200",
    "--log-retention-check-interval-ms", "300",
    "--object-gc-interval-ms", "300",
    "--object-delete-delay-ms", "500",
]}


def admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create(broker, topic: str, partitions: int = 1, **configs) -> None:
    a = admin(broker)
    fs = a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                               config={k.replace("_", "."): str(v)
                                                       for k, v in configs.items()})])
    for f in fs.values():
        f.result(30)


def produce(broker, topic: str, n: int, partition: int = 0) -> None:
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(n):
        p.produce(topic, key=str(i).encode(), value=b"v" * 1000, partition=partition)
    assert p.flush(30) == 0


def watermarks(broker, topic: str, partition: int = 0) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        c.close()


def topics_by_object(broker) -> dict[int, set[str]]:
    """Committed object id -> topics it holds ranges of (metadata-shell)."""
    shell = broker.tool("metadata-shell")
    held, current = {}, None
    for line in shell.splitlines():
        m = re.match(r"  object (\d+) node", line)
        if m:
            current = int(m.group(1))
            held[current] = set()
        elif current is not None and (r := re.match(r"    (\S+)-\d+ ", line)):
            held[current].add(r.group(1))
        elif not line.startswith("    "):
            current = None
    return held


def objects_of(broker, topic: str) -> set[int]:
    """Ids of committed objects holding `topic`."""
    return {i for i, topics in topics_by_object(broker).items() if topic in topics}


def object_ids_on_disk(broker) -> set[int]:
    return {int(p.stem, 16) for p in (broker.data_dir / "objects").rglob("*.sso")}



def test_retention_ms_moves_log_start_and_deletes_old_objects(broker):
    topic = "ret-time"
    create(broker, topic, retention_ms=2000)
    produce(broker, topic, 500)
    wait_for("the data to reach objects", lambda: objects_of(broker, topic))
    old = objects_of(broker, topic)
    # Kept until they are 2 s old; then the log start moves past them.
    assert watermarks(broker, topic) == (0, 500)
    wait_for("retention to move the log start", lambda: watermarks(broker, topic)[0] == 500,
             timeout=20)
    wait_for("the expired objects to leave the store",
             lambda: not (old & object_ids_on_disk(broker)), timeout=20)
    assert not objects_of(broker, topic)
    produce(broker, topic, 10)  # the log goes on after the new start
    assert watermarks(broker, topic) == (500, 510)

    # Below the log start: OFFSET_OUT_OF_RANGE, which a consumer with
    # auto.offset.reset=error reports...
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ret-err",
                  "auto.offset.reset": "error", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 10)])
    errors = []
    deadline = time.monotonic() + 15
    while not errors and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error():
            errors.append(m.error())
    c.close()
    assert errors and errors[0].code() == KafkaError._AUTO_OFFSET_RESET, errors
    # ...and one with earliest resets to the new start.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ret-reset",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 10)])
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 10 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.offset())
    c.close()
    assert got == list(range(500, 510))


def test_retention_bytes_keeps_the_newest(broker):
    topic = "ret-bytes"
    # Each upload of ~100 KB is one range; keep at least 250 KB.
    create(broker, topic, retention_bytes=250_000)
    for _ in range(6):
        produce(broker, topic, 100)
        time.sleep(0.4)  # one object per round
    wait_for("retention by size", lambda: watermarks(broker, topic)[0] > 0, timeout=20)
    low, high = watermarks(broker, topic)
    assert high == 600
    kept = (high - low) * 1000
    assert 250_000 <= kept <= 600_000, (low, high)


def test_delete_records_with_confluent_and_kafka_python(broker):
    topic = "delrec"
    create(broker, topic, partitions=2)
    produce(broker, topic, 100, partition=0)
    produce(broker, topic, 100, partition=1)
    a = admin(broker)
    fs = a.delete_records([TopicPartition(topic, 0, 40)])
    for tp, f in fs.items():
        assert f.result(30).low_watermark == 40, tp
    assert watermarks(broker, topic, 0) == (40, 100)
    # Past the high watermark: OFFSET_OUT_OF_RANGE.
    fs = a.delete_records([TopicPartition(topic, 0, 1000)])
    err = list(fs.values())[0].exception(30)
    assert err is not None and "OFFSET_OUT_OF_RANGE" in str(err), err

    from kafka import KafkaAdminClient, TopicPartition as KTP
    ka = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        out = ka.delete_records({KTP(topic, 1): 70})
        assert out[KTP(topic, 1)]["low_watermark"] == 70, out
        out = ka.delete_records({KTP(topic, 1): -1})  # up to the high watermark
        assert out[KTP(topic, 1)]["low_watermark"] == 100, out
    finally:
        ka.close()
    assert watermarks(broker, topic, 1) == (100, 100)
    # The low watermark survives a restart.
    broker.kill9()
    broker.restart()
    assert watermarks(broker, topic, 0) == (40, 100)
    assert watermarks(broker, topic, 1) == (100, 100)


def test_delete_topics_leaves_no_object_behind(fresh_broker):
    # A broker of its own, so that no other topic's data shares its uploads.
    broker = fresh_broker
    topic = "deltopic"
    create(broker, topic, partitions=2)
    produce(broker, topic, 300, partition=0)
    produce(broker, topic, 300, partition=1)
    wait_for("the data to reach objects", lambda: objects_of(broker, topic))
    held = topics_by_object(broker)
    ids = {i for i, topics in held.items() if topic in topics}
    alone = {i for i in ids if held[i] == {topic}}
    assert alone == ids and ids <= object_ids_on_disk(broker), held
    a = admin(broker)
    for f in a.delete_topics([topic]).values():
        f.result(30)
    wait_for("the deleted topic's objects to leave the store",
             lambda: not (alone & object_ids_on_disk(broker)), timeout=20)
    assert not objects_of(broker, topic)
    assert "deleted objects no partition references" in broker.log_text()
