"""A broker restarted with another core count (shard count) after kill -9:
every old WAL slice is recovered, its partitions move to the shards that
exist now (no data copied: the WAL data is uploaded, then the leader
changes), the WAL is formatted for the new count, and the broker serves.

Writes go only to the WAL here (uploads wait an hour), so every record and
every committed group offset must come back out of the old slices:
2 shards -> 1 -> 3, read back in order each time with librdkafka, and the
group's committed offsets intact. Metadata lists only the shards that exist.

With the object store out, the old slices cannot be emptied: the broker
exits after `reshard_timeout_ms` and leaves the WAL as it was; started with
the old count it serves every record, and once the store is back the new
count takes over with nothing lost.
"""
from __future__ import annotations

import os
import time
import uuid
from collections import Counter

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaAdminClient

from conftest import Broker
from s3_servers import CREDENTIALS, create_bucket, start_moto, start_proxy
from test_idempotence import create_topic

# Nothing is uploaded on its own during the test: the data is in the WAL.
BROKER_PARAMS = {"shards": 2, "broker_id": 0,
                 "args": ["--upload-interval-ms", "3600000", "--upload-bytes", str(512 << 20)]}
PARTITIONS = 6
PER_PARTITION = 1500


def produce(bootstrap: str, topic: str, tag: str) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                  "enable.idempotence": True, "linger.ms": 5})
    failed = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failed.append(err)

    for i in range(PER_PARTITION):
        for part in range(PARTITIONS):
            p.produce(topic, f"{tag}-{part}-{i}".encode() * 8, partition=part, on_delivery=on_delivery)
        if i % 200 == 0:
            p.poll(0)
    assert p.flush(60) == 0, "undelivered records"
    assert not failed, failed[:3]


def read_all(bootstrap: str, topic: str, expect: int) -> dict[int, list[bytes]]:
    c = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                  "group.id": f"read-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + 90
    try:
        while sum(map(len, out.values())) < expect * PARTITIONS and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            assert not m.error(), m.error()
            got = out[m.partition()]
            assert m.offset() == len(got), f"partition {m.partition()}: offset {m.offset()} after {len(got)}"
            got.append(m.value())
    finally:
        c.close()
    return out


def check(out: dict[int, list[bytes]], tags: list[str]) -> None:
    for part, values in out.items():
        want = [f"{tag}-{part}-{i}".encode() * 8 for tag in tags for i in range(PER_PARTITION)]
        assert len(values) == len(want), f"partition {part}: {len(values)} of {len(want)} records"
        assert values == want, f"partition {part}: records out of order or changed"


def commit_offsets(bootstrap: str, topic: str, group: str) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                  "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, p, 100 + p) for p in range(PARTITIONS)], asynchronous=False)
    c.close()


def committed(bootstrap: str, topic: str, group: str) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                  "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    finally:
        c.close()
    return [tp.offset for tp in got]


def leaders(broker, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        # kafka-python asks DescribeCluster v2 for fenced nodes too: those
        # of shards this broker no longer has are listed, marked fenced.
        cluster = admin.describe_cluster()
        brokers = cluster["brokers"]
        live = sorted(b.get("node_id", b.get("broker_id")) for b in brokers if not b.get("is_fenced"))
        assert live == sorted(broker.expected_nodes), f"DescribeCluster lists {live} live"
        fenced = {b["broker_id"] for b in brokers if b.get("is_fenced")}
        assert not fenced & set(broker.expected_nodes), f"live nodes shown fenced: {fenced}"
        parts = admin.describe_topic_partitions([topic])["topics"][0]["partitions"]
        return {p["partition_index"]: p["leader_id"] for p in parts}
    finally:
        admin.close()


def restart_with(broker, shards: int) -> float:
    broker.kill9()
    broker.shards = shards
    t0 = time.monotonic()
    broker.restart()
    return time.monotonic() - t0


def test_restart_with_fewer_then_more_shards(fresh_broker, figures):
    b = fresh_broker
    topic = f"cores-{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:6]}"
    create_topic(b, topic, PARTITIONS)
    before = Counter(leaders(b, topic).values())
    assert set(before) == {0, 1}, f"spread over both shards first: {before}"
    produce(b.bootstrap, topic, "a")
    commit_offsets(b.bootstrap, topic, group)
    objects = b.data_dir / "objects"
    in_objects = sum(f.stat().st_size for f in objects.rglob("*") if f.is_file()) if objects.exists() else 0
    assert in_objects < PER_PARTITION * PARTITIONS * 40, \
        f"{in_objects} bytes uploaded already: the test needs the data in the WAL only"

    took = restart_with(b, 1)
    log = b.log_text()
    assert "WAL formatted for the new shard count" in log, b.log_tail()
    assert set(leaders(b, topic).values()) == {0}
    check(read_all(b.bootstrap, topic, PER_PARTITION), ["a"])
    assert committed(b.bootstrap, topic, group) == [100 + p for p in range(PARTITIONS)]
    produce(b.bootstrap, topic, "b")
    figures.record(f"core count 2 -> 1 after kill -9: serving again in {took:.2f} s")

    took = restart_with(b, 3)
    after = Counter(leaders(b, topic).values())
    assert set(after) <= {0, 1, 2}, after
    assert len(after) >= 2, f"new shards got no partitions: {after}"
    check(read_all(b.bootstrap, topic, 2 * PER_PARTITION), ["a", "b"])
    assert committed(b.bootstrap, topic, group) == [100 + p for p in range(PARTITIONS)]
    produce(b.bootstrap, topic, "c")
    check(read_all(b.bootstrap, topic, 3 * PER_PARTITION), ["a", "b", "c"])
    figures.record(f"core count 1 -> 3 after kill -9: serving again in {took:.2f} s")
    assert b.log_text().count("WAL formatted for the new shard count") == 2


def test_a_store_outage_stops_the_new_count_and_loses_nothing(tmp_path):
    moto = start_moto()
    proxy = None
    b = None
    try:
        bucket = f"cores-{uuid.uuid4().hex[:8]}"
        create_bucket(moto.fields["url"], bucket)
        proxy = start_proxy(moto.fields["url"])
        for k, v in CREDENTIALS.items():
            os.environ.setdefault(k, v)
        b = Broker(tmp_path, shards=2, args=[
            *BROKER_PARAMS["args"], "--objects-url", f"s3://{bucket}/c", "--s3-endpoint", proxy.url,
            "--s3-retry-base-ms", "50", "--s3-request-timeout-ms", "2000",
            "--reshard-timeout-ms", "3000"])
        import random
        b.start(random.Random())
        topic = f"cores-{uuid.uuid4().hex[:8]}"
        create_topic(b, topic, PARTITIONS)
        produce(b.bootstrap, topic, "a")
        b.kill9()

        proxy.set_faults(outage="refuse")
        b.shards = 1
        b._wait_ports_closed()
        ok, why = b._launch("one shard while the store is out")
        assert not ok and "exited" in why, f"started without its data in objects: {why}"
        log = b.log_text()
        assert "the WAL is left as it was: start with shards = 2" in log, b.log_tail()
        assert "WAL formatted for the new shard count" not in log

        # The old count still serves everything from its WAL.
        b.shards = 2
        b.restart()
        check(read_all(b.bootstrap, topic, PER_PARTITION), ["a"])
        b.kill9()

        proxy.set_faults(outage=None)
        b.shards = 1
        b.restart()
        assert "WAL formatted for the new shard count" in b.log_text()
        check(read_all(b.bootstrap, topic, PER_PARTITION), ["a"])
        assert not b.new_panics()
    finally:
        if b is not None:
            b.stop()
        if proxy is not None:
            proxy.close()
        moto.close()
