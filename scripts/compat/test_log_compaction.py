"""Log compaction (cleanup.policy=compact) with real clients: after the
cleaner ran, a topic read from the start holds exactly the latest record of
each key, at the offset it was written at (gaps, as in Kafka); tombstones
stay for delete.retention.ms and then go; a keyless record is refused with
INVALID_RECORD; __consumer_offsets is compacted too, and everything holds
across kill -9.
"""
from __future__ import annotations

import random
import re
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from objects_load import wait_for

BROKER_PARAMS = {"shards": 1, "args": [
    "--upload-interval-ms", "200",
    "--object-compaction-interval-ms", "500",
    "--log-cleaner-backoff-ms", "500",
    "--object-compaction-min-age-ms", "0",
    "--object-gc-interval-ms", "300",
    "--object-delete-delay-ms", "500",
    "--object-orphan-grace-ms", "1000",
    # Keep the whole metadata log readable by metadata-shell.
    "--metadata-snapshot-entries", "1000000",
]}

KEYS = 40
ROUNDS = 8
DELETED = 5  # k0..k4 get tombstones


def create(broker, topic: str, **configs) -> None:
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    fs = a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                   config={k.replace("_", "."): str(v) for k, v in configs.items()})])
    for f in fs.values():
        f.result(30)


def produce(broker, topic: str, records, compression: str = "lz4") -> dict[str, tuple[int, bytes | None]]:
    """Produces (key, value) pairs in order; returns key -> (offset, value)
    of the last write of each key, from the delivery reports."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5,
                  "compression.type": compression})
    latest: dict[str, tuple[int, bytes | None]] = {}
    errors = []

    def done(err, msg):
        if err:
            errors.append(err)
        else:
            k = msg.key().decode()
            if k not in latest or latest[k][0] < msg.offset():
                latest[k] = (msg.offset(), msg.value())

    for k, v in records:
        p.produce(topic, key=k.encode(), value=v, partition=0, on_delivery=done)
    assert p.flush(30) == 0
    assert not errors, errors
    return latest


def read_all(broker, topic: str) -> list[tuple[int, str | None, bytes | None]]:
    """Every record from offset 0 to the high watermark (confluent-kafka)."""
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"read-{time.monotonic()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    deadline = time.monotonic() + 30
    last = -1
    while last < high - 1 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        assert not m.error(), m.error()
        out.append((m.offset(), m.key().decode() if m.key() else None, m.value()))
        last = m.offset()
    c.close()
    return out


def read_all_kafka_python(broker, topic: str) -> list[tuple[int, str | None, bytes | None]]:
    from kafka import KafkaConsumer, TopicPartition as KTP
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=3000)
    tp = KTP(topic, 0)
    c.assign([tp])
    c.seek(tp, 0)
    out = [(m.offset, m.key.decode() if m.key else None, m.value) for m in c]
    c.close()
    return out


def cleaner_passes(broker, topic: str) -> int:
    return len(re.findall(rf'log cleaner pass.*topic="?{re.escape(topic)}[" ]', broker.log_text()))


def cleaned_to(broker, topic: str) -> int:
    """The highest offset the cleaner has reported cleaning `topic` to."""
    got = re.findall(rf'log cleaner pass.*topic="?{re.escape(topic)}[" ].*cleaned_to=(\d+)',
                     broker.log_text())
    return max((int(g) for g in got), default=0)



def test_compacted_topic_keeps_the_latest_per_key_and_drops_old_tombstones(broker):
    topic = "compacted"
    create(broker, topic, cleanup_policy="compact", min_cleanable_dirty_ratio="0.01",
           delete_retention_ms=10_000)
    latest = {}
    for r in range(ROUNDS):
        recs = [(f"k{i}", f"k{i}-round{r}".encode() * 20) for i in range(KEYS)]
        latest.update(produce(broker, topic, recs, compression=["lz4", "zstd", "gzip", "none"][r % 4]))
        time.sleep(0.3)  # several uploads, so several ranges
    latest.update(produce(broker, topic, [(f"k{i}", None) for i in range(DELETED)]))
    high = KEYS * ROUNDS + DELETED

    wait_for("the cleaner to compact the whole topic", lambda: cleaned_to(broker, topic) == high)
    # Reads now come from the cleaned objects: exactly the latest record of
    # each key, at its original offset, tombstones included for now.
    expected = sorted((off, k, v) for k, (off, v) in latest.items())
    after = read_all(broker, topic)
    assert after == expected, (len(after), len(expected), after[:5], expected[:5])
    assert read_all_kafka_python(broker, topic) == expected
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wm"})
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, high)
    c.close()

    # After delete.retention.ms the tombstones (and so their keys) are gone,
    # once new writes make the partition dirty enough to clean again.
    time.sleep(10.5)
    # Large enough to make the log dirtier than min.cleanable.dirty.ratio
    # (0.01 of a few KB once cleaned): a short value sat right at the ratio
    # and the pass came or not depending on how well the last round packed.
    latest.update(produce(broker, topic, [("k39", b"final" * 200)]))
    wait_for("another cleaner pass", lambda: cleaned_to(broker, topic) == high + 1)
    expected = sorted((off, k, v) for k, (off, v) in latest.items() if v is not None)
    after = read_all(broker, topic)
    assert after == expected
    assert not any(k == f"k{i}" for _, k, _ in after for i in range(DELETED))

    # Compacted data and the cleaned offset survive kill -9.
    broker.kill9()
    broker.restart()
    assert read_all(broker, topic) == expected


def test_max_compaction_lag_cleans_below_the_dirty_ratio(broker):
    """A little dirt (far below min.cleanable.dirty.ratio) is still cleaned
    once it is older than max.compaction.lag.ms (what librdkafka's 0077
    relies on)."""
    topic = "max-lag"
    create(broker, topic, cleanup_policy="compact", min_cleanable_dirty_ratio="0.99",
           max_compaction_lag_ms=2000)
    produce(broker, topic, [(f"k{i}", f"v{i}".encode() * 200) for i in range(KEYS)])
    # Never cleaned: all of it is dirty, so the ratio is met.
    wait_for("the first pass", lambda: cleaned_to(broker, topic) == KEYS)
    latest = produce(broker, topic, [("k0", b"new")])
    produced_at = time.monotonic()
    # 1 small record against 40 big ones: only the lag can make it due.
    wait_for("a pass forced by max.compaction.lag.ms",
             lambda: cleaned_to(broker, topic) == KEYS + 1, timeout=30)
    assert time.monotonic() - produced_at >= 1.5, "cleaned before the lag was up"
    after = read_all(broker, topic)
    assert len(after) == KEYS and (latest["k0"][0], "k0", b"new") in after


def test_keyless_record_to_a_compacted_topic_is_refused(broker):
    topic = "compacted-keys"
    create(broker, topic, cleanup_policy="compact")
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "retries": 0})
    errors = []
    p.produce(topic, value=b"no key", partition=0,
              on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() == KafkaError.INVALID_RECORD, errors[0]
    # Keyed records still go in, and a topic without compaction takes keyless ones.
    assert produce(broker, topic, [("a", b"1")])["a"][0] == 0
    create(broker, "not-compacted")
    p.produce("not-compacted", value=b"no key", partition=0)
    assert p.flush(30) == 0


def test_consumer_offsets_are_compacted(broker):
    topic = "offsets-src"
    create(broker, topic)
    produce(broker, topic, [("x", b"y")])
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "many-commits",
                  "enable.auto.commit": False})
    for i in range(300):
        c.commit(offsets=[TopicPartition(topic, 0, i)], asynchronous=False)
    c.close()
    wait_for("the cleaner to compact __consumer_offsets",
             lambda: cleaner_passes(broker, "__consumer_offsets") >= 1)
    m = re.findall(r"log cleaner pass.*topic=\"?__consumer_offsets.*bytes_in=(\d+) bytes_out=(\d+)",
                   broker.log_text())
    assert m and int(m[-1][1]) < int(m[-1][0]), m
    broker.kill9()
    broker.restart()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "many-commits"})
    got = c.committed([TopicPartition(topic, 0)], timeout=10)
    c.close()
    assert got[0].offset == 299


def committed_objects(broker) -> set[int]:
    shell = broker.tool("metadata-shell")
    return {int(i) for i in re.findall(r"^  object (\d+) node", shell, re.M)}


def on_disk(broker) -> set[int]:
    return {int(p.stem, 16) for p in (broker.data_dir / "objects").rglob("*.sso")}


def test_kill9_during_log_compaction_loses_nothing_and_leaks_nothing(fresh_broker):
    broker = fresh_broker
    topic = "compacted-crash"
    create(broker, topic, cleanup_policy="compact", min_cleanable_dirty_ratio="0.01")
    rng = random.Random(11)
    latest = {}
    keys = 200
    rounds = 8
    for r in range(rounds):
        # Incompressible values, so that passes take a while to read and write.
        recs = [(f"k{rng.randrange(keys)}", rng.randbytes(8000)) for _ in range(600)]
        latest.update(produce(broker, topic, recs))
        # Somewhere in the middle of uploads and cleaner passes.
        time.sleep(rng.uniform(0.2, 1.2))
        broker.kill9()
        broker.restart()
    high = rounds * 600
    wait_for("the cleaner to compact the whole topic", lambda: cleaned_to(broker, topic) == high)
    expected = sorted((off, k, v) for k, (off, v) in latest.items())
    assert read_all(broker, topic) == expected
    # Orphans of the killed passes age out: the store holds exactly the
    # committed objects.
    wait_for("the store to hold exactly the committed objects",
             lambda: on_disk(broker) == committed_objects(broker), timeout=60)
