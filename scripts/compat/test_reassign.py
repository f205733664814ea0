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

from test_idempotence import create_topic

BROKER_PARAMS = {"shards": 2, "broker_id": 0, "args": ["--upload-interval-ms", "200"]}


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
