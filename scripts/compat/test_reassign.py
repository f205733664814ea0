"""Partition reassignment (AlterPartitionReassignments) moves a partition to
another node in milliseconds with no data copied: the old leader uploads
what its WAL holds and hands over; the new leader reads the objects.

* An idempotent producer keeps writing while its partition moves there and
  back: every record is stored once, in order, and the moves are timed.
* A group's committed offsets survive a move of its __consumer_offsets
  partition (the coordinator moves with it).
* Everything is still there after kill -9.
* A target that is not a node is INVALID_REPLICA_ASSIGNMENT; cancelling
  finds nothing in progress (NO_REASSIGNMENT_IN_PROGRESS), as in Kafka.
"""
from __future__ import annotations

import threading
import time
import uuid

import kafka.errors as Errors
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaAdminClient
from kafka import TopicPartition as KTP

import kwire
from test_idempotence import create_topic

# Snapshots every 20 metadata entries: the restarts here load the
# metadata (epoch histories among it) from a snapshot, not only the log.
BROKER_PARAMS = {"shards": 2, "broker_id": 0,
                 "args": ["--upload-interval-ms", "200", "--metadata-snapshot-entries", "20"]}


def leader_of(admin: KafkaAdminClient, topic: str, partition: int) -> int:
    parts = admin.describe_topic_partitions([topic])["topics"][0]["partitions"]
    return next(p["leader_id"] for p in parts if p["partition_index"] == partition)


def move(admin: KafkaAdminClient, topic: str, partition: int, node: int) -> float:
    t0 = time.monotonic()
    r = admin.alter_partition_reassignments({KTP(topic, partition): [node]})
    elapsed = time.monotonic() - t0
    assert list(r.values()) == [None], r
    assert leader_of(admin, topic, partition) == node
    return elapsed


def read_partition(bootstrap: str, topic: str, partition: int) -> list[bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                  "group.id": f"read-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # end of partition
                    break
                raise AssertionError(m.error())
            assert m.offset() == len(out), f"offset {m.offset()} after {len(out)} records"
            out.append(m.value())
    finally:
        c.close()
    return out


def test_a_partition_moves_under_load_and_back(broker, figures):
    topic = f"move-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, 2)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    home = leader_of(admin, topic, 0)
    other = next(n for n in broker.expected_nodes if n != home)
    n = 60000
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "enable.idempotence": True, "linger.ms": 2})
    failed, delivered = [], [0]

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failed.append(err)
        else:
            delivered[0] += 1

    def produce() -> None:
        for i in range(n):
            while True:
                try:
                    p.produce(topic, value=b"m-%d" % i, partition=0, on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.05)
            if i % 1000 == 0:
                p.poll(0)
                time.sleep(0.01)  # keep the load going across the moves
        p.flush(60)

    def until_delivered(count: int) -> None:
        deadline = time.monotonic() + 60
        while delivered[0] < count and time.monotonic() < deadline:
            time.sleep(0.005)

    t = threading.Thread(target=produce)
    t.start()
    # Each move happens with acknowledged records on the leader and more
    # in flight.
    until_delivered(n // 4)
    there = move(admin, topic, 0, other)
    until_delivered(n // 2)
    back = move(admin, topic, 0, home)
    t.join(120)
    assert not failed, failed[:5]
    values = read_partition(broker.bootstrap, topic, 0)
    assert values == [b"m-%d" % i for i in range(n)], \
        f"{len(values)} records, {len(set(values))} distinct"
    figures.record(f"reassignment: a partition under idempotent produce moved between shards "
                   f"in {there * 1000:.0f} ms and back in {back * 1000:.0f} ms; {n} records "
                   f"exactly once, in order")
    broker.kill9()
    broker.restart()
    assert read_partition(broker.bootstrap, topic, 0) == values
    admin.close()


def first_offset_read(bootstrap: str, tp: TopicPartition) -> int:
    """The offset of the first record a consumer assigned `tp` reads."""
    c = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                  "group.id": f"ep-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    try:
        c.assign([tp])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is None:
                return m.offset()
        raise AssertionError(f"nothing read from {tp}")
    finally:
        c.close()


def test_leader_epochs_follow_moves(broker):
    """Each move starts a leader epoch where the objects end. Batches carry
    the epoch they were written in, OffsetForLeaderEpoch says where each
    epoch ends (as Kafka's leader-epoch cache does), Fetch reports a
    diverging epoch, and librdkafka's truncation check (KIP-320) uses it."""
    topic = f"epochs-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, 1)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    home = leader_of(admin, topic, 0)
    other = next(n for n in broker.expected_nodes if n != home)
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})

    def write(n: int) -> None:
        for i in range(n):
            p.produce(topic, value=b"v-%d" % i, partition=0)
        assert p.flush(30) == 0

    write(30)
    move(admin, topic, 0, other)
    write(20)
    move(admin, topic, 0, home)
    write(10)
    with kwire.Conn(broker.host, broker.ports[home % 1000]) as c:
        for v in (2, 3, 4):
            got = kwire.offset_for_leader_epoch(c, v, topic, [(0, 2, e) for e in (0, 1, 2, 3)])
            assert got == [(0, 0, 0, 30), (0, 0, 1, 50), (0, 0, 2, 60), (0, 0, -1, -1)], (v, got)
        # A stale or future current epoch, as Kafka checks it; -1 skips it.
        got = kwire.offset_for_leader_epoch(c, 4, topic, [(0, 1, 0), (0, 3, 0), (0, -1, 1)])
        assert got == [(kwire.FENCED_LEADER_EPOCH, 0, -1, -1),
                       (kwire.UNKNOWN_LEADER_EPOCH, 0, -1, -1), (0, 0, 1, 50)], got
        got = kwire.offset_for_leader_epoch(c, 4, topic, [(7, -1, 0)])
        assert got == [(kwire.UNKNOWN_TOPIC_OR_PARTITION, 7, -1, -1)], got
        # Fetch v12+ checks the epoch of the last batch read, as Kafka does:
        # at offset 40 after a batch of epoch 0 (which ended at 30), the
        # answer is no records and where to truncate to.
        err, hw, records, diverging = kwire.fetch_v12(c, topic, 0, 40, last_fetched_epoch=0)
        assert (err, hw, diverging) == (0, 60, (0, 30)), (err, hw, diverging)
        assert not records
        err, _, records, diverging = kwire.fetch_v12(c, topic, 0, 40, last_fetched_epoch=1)
        assert (err, diverging) == (0, None) and records, (err, diverging)
        assert kwire.fetch_v12(c, topic, 0, 60, last_fetched_epoch=2)[3] is None
        # An epoch the log never had: no end to truncate to.
        assert kwire.fetch_v12(c, topic, 0, 40, last_fetched_epoch=9)[0] == 1  # OFFSET_OUT_OF_RANGE
    with kwire.Conn(broker.host, broker.ports[other % 1000]) as c:
        got = kwire.offset_for_leader_epoch(c, 4, topic, [(0, -1, 0)])
        assert got == [(kwire.NOT_LEADER_OR_FOLLOWER, 0, -1, -1)], got
    # Every record carries the epoch it was written in.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": f"ep-{uuid.uuid4().hex[:6]}", "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, 0)])
    epochs = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            break
        epochs.append(m.leader_epoch())
    c.close()
    assert epochs == [0] * 30 + [1] * 20 + [2] * 10, epochs
    # A position at epoch 0 past that epoch's end is a truncated log to
    # librdkafka: it goes back to where the broker says epoch 0 ends. One
    # within it, or within epoch 1, is read from where it is.
    assert first_offset_read(broker.bootstrap, TopicPartition(topic, 0, 25, leader_epoch=0)) == 25
    assert first_offset_read(broker.bootstrap, TopicPartition(topic, 0, 35, leader_epoch=1)) == 35
    assert first_offset_read(broker.bootstrap, TopicPartition(topic, 0, 35, leader_epoch=0)) == 30
    # The history survives kill -9 (it is in the metadata log and snapshots).
    broker.kill9()
    broker.restart()
    snaps = list((broker.data_dir / "metadata").glob("snapshot-*.snap"))
    assert snaps, "no metadata snapshot was written"

    with kwire.Conn(broker.host, broker.ports[home % 1000]) as c:
        got = kwire.offset_for_leader_epoch(c, 4, topic, [(0, 2, e) for e in (0, 1, 2)])
        assert got == [(0, 0, 0, 30), (0, 0, 1, 50), (0, 0, 2, 60)], got
    admin.close()


def test_group_offsets_move_with_their_coordinator(broker):
    from test_groups_wire import java_hash
    topic, group = f"mvg-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, 1)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 42)], asynchronous=False)
    c.close()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    parts = admin.describe_topic_partitions(["__consumer_offsets"])["topics"][0]["partitions"]
    p = (java_hash(group) & 0x7FFFFFFF) % len(parts)
    home = leader_of(admin, "__consumer_offsets", p)
    other = next(n for n in broker.expected_nodes if n != home)
    move(admin, "__consumer_offsets", p, other)
    deadline = time.monotonic() + 30
    while True:
        c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                      "group.id": group})
        try:
            got = c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
        except Exception:  # the coordinator may still be loading
            got = None
        finally:
            c.close()
        if got == 42 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == 42
    admin.close()


def test_bad_reassignments_get_kafkas_errors(broker):
    topic = f"mvbad-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, 1)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    r = admin.alter_partition_reassignments({KTP(topic, 0): [777]})
    assert list(r.values()) == [Errors.InvalidReplicationAssignmentError], r
    r = admin.alter_partition_reassignments({KTP(topic, 0): None})
    assert list(r.values()) == [Errors.NoReassignmentInProgressError], r
    assert admin.list_partition_reassignments() == {}
    admin.close()
