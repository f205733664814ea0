"""KIP-848 consumer groups (`group.protocol=consumer`) with a real client:
confluent-kafka (librdkafka 2.16) speaking ConsumerGroupHeartbeat.

Checks data, not just calls: which partitions each member owns once the
group settles, that every message is consumed exactly once across the group
while members come and go, committed offsets (OffsetCommit v9 with member
epochs), ConsumerGroupDescribe through the AdminClient, ListGroups' group
type, a regex subscription picking up a new topic, that a classic member
cannot join a consumer group, and a group that survives a kill -9 restart of
the broker without losing or repeating committed progress.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, Producer, TopicPartition
from test_groups import admin_for, create_topic, unique

BROKER_PARAMS = {"shards": 2, "broker_id": 0,
                 "args": ["--offsets-topic-partitions", "10",
                          # Short, so that the killed-member case stays quick.
                          "--group-consumer-session-timeout-ms", "10000",
                          "--group-consumer-heartbeat-interval-ms", "500"]}

PARTITIONS = 6
DEADLINE_S = 40


def produce(broker, topic: str, values: list[str]) -> None:
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4", "linger.ms": 5})
    errors: list = []
    for i, v in enumerate(values):
        p.produce(topic, v.encode(), key=str(i).encode(),
                  on_delivery=lambda err, _m: err and errors.append(err))
        p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors


def consumer(broker, group: str, **extra) -> Consumer:
    conf = {"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
            "group.id": group, "group.protocol": "consumer",
            "auto.offset.reset": "earliest", "enable.auto.commit": False}
    conf.update(extra)
    return Consumer(conf)


def poll_until(consumers: list[Consumer], seen: dict, want: int, timeout: float = DEADLINE_S) -> None:
    """Polls every consumer until `want` distinct values arrived; records
    each value's count (duplicates are failures for the caller)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < want:
        for c in consumers:
            got = False
            for m in c.consume(500, timeout=0.05):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    pytest.fail(f"consumer error: {m.error()}")
                v = m.value().decode()
                seen[v] = seen.get(v, 0) + 1
                got = True
            if got:
                c.commit(asynchronous=False)
    assert len(seen) >= want, f"only {len(seen)} of {want} messages arrived"


def settle(consumers: list[Consumer], total: int, timeout: float = DEADLINE_S) -> list[set]:
    """Polls (dropping any message: call it before producing) until the
    members' assignments are disjoint, cover `total`
    partitions and are balanced (the uniform assignor's target); returns
    them."""
    deadline = time.monotonic() + timeout
    last: list[set] = []
    while time.monotonic() < deadline:
        for c in consumers:
            c.poll(0.05)
        last = [{(tp.topic, tp.partition) for tp in c.assignment()} for c in consumers]
        union = set().union(*last)
        sizes = [len(a) for a in last]
        if len(union) == total and sum(sizes) == total and max(sizes) - min(sizes) <= 1:
            return last
    pytest.fail(f"assignments did not settle: {last}")


def test_two_members_split_the_partitions_and_consume_exactly_once(broker):
    topic = unique("kip848")
    group = unique("g848")
    create_topic(broker, topic)
    values = [f"v{i}" for i in range(600)]
    a = consumer(broker, group)
    b = consumer(broker, group)
    try:
        a.subscribe([topic])
        b.subscribe([topic])
        parts = settle([a, b], PARTITIONS)
        assert sorted(len(p) for p in parts) == [3, 3], parts
        # (Produced once the group has settled: settle's polls would have
        # taken messages.)
        produce(broker, topic, values)
        seen: dict = {}
        poll_until([a, b], seen, len(values))
        assert set(seen) == set(values)
        assert max(seen.values()) == 1, "a message was consumed twice"

        # ConsumerGroupDescribe through the AdminClient: both members, the
        # consumer type, and the assignments we saw.
        admin = admin_for(broker)
        desc = admin.describe_consumer_groups([group])[group].result(20)
        assert len(desc.members) == 2
        assert "CONSUMER" in str(desc.type).upper(), desc.type
        described = sorted(len(m.assignment.topic_partitions) for m in desc.members)
        assert described == [3, 3], described

        # ListGroups: the group is listed as a consumer group.
        listed = admin.list_consumer_groups().result(20)
        mine = [g for g in listed.valid if g.group_id == group]
        assert mine and "CONSUMER" in str(mine[0].type).upper(), mine

        # Committed offsets (OffsetCommit v9 with the member epoch).
        committed = a.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=20)
        assert sum(tp.offset for tp in committed) == len(values)

        # One leaves: the other takes over all partitions.
        b.close()
        parts = settle([a], PARTITIONS)
        assert len(parts[0]) == PARTITIONS
    finally:
        a.close()
        try:
            b.close()
        except RuntimeError:
            pass


MEMBER_SCRIPT = """
import sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "broker.address.family": "v4",
              "group.id": sys.argv[2], "group.protocol": "consumer",
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([sys.argv[3]])
while True:
    c.poll(0.1)
    if c.assignment():
        print("assigned", len(c.assignment()), flush=True)
"""


def test_a_killed_member_is_fenced_and_its_partitions_move(broker):
    """A member whose process dies sends no more heartbeats: after the
    session timeout (10 s here) it is removed and the survivor gets its
    partitions."""
    topic = unique("kip848-gone")
    group = unique("g848-gone")
    create_topic(broker, topic)
    a = consumer(broker, group)
    proc = subprocess.Popen([sys.executable, "-c", MEMBER_SCRIPT, broker.bootstrap, group, topic],
                            stdout=subprocess.PIPE, text=True)
    try:
        a.subscribe([topic])
        assert proc.stdout is not None
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        # `a` must keep polling: it gives partitions up from its poll loop.
        line = ""
        deadline = time.monotonic() + DEADLINE_S
        while not line and time.monotonic() < deadline:
            a.poll(0.05)
            try:
                line = lines.get_nowait()
            except queue.Empty:
                pass
        assert line.startswith("assigned"), f"the other member got nothing: {line!r}"
        parts = settle([a], 3)
        assert len(parts[0]) == 3
        proc.kill()
        proc.wait(10)
        killed_at = time.monotonic()
        parts = settle([a], PARTITIONS, timeout=30)
        took = time.monotonic() - killed_at
        assert len(parts[0]) == PARTITIONS
        assert took > 5, f"partitions moved {took:.1f} s after the kill, before the session timeout"
        values = [f"k{i}" for i in range(200)]
        produce(broker, topic, values)
        seen: dict = {}
        poll_until([a], seen, len(values))
        assert max(seen.values()) == 1
    finally:
        proc.kill()
        a.close()


def test_regex_subscription_picks_up_a_new_topic(broker):
    prefix = unique("rx")
    group = unique("g848-rx")
    create_topic(broker, f"{prefix}-one", 2)
    c = consumer(broker, group, **{"topic.metadata.refresh.interval.ms": 1000})
    try:
        c.subscribe([f"^{prefix}-.*"])
        settle([c], 2)
        create_topic(broker, f"{prefix}-two", 3)
        parts = settle([c], 5)
        assert {t for t, _ in parts[0]} == {f"{prefix}-one", f"{prefix}-two"}
        produce(broker, f"{prefix}-two", ["x", "y", "z"])
        seen: dict = {}
        poll_until([c], seen, 3)
        assert set(seen) == {"x", "y", "z"}
    finally:
        c.close()


def test_a_classic_member_cannot_join_a_consumer_group(broker):
    topic = unique("kip848-mixed")
    group = unique("g848-mixed")
    create_topic(broker, topic)
    c = consumer(broker, group)
    classic = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                        "group.id": group, "group.protocol": "classic",
                        "auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])
        settle([c], PARTITIONS)
        classic.subscribe([topic])
        deadline = time.monotonic() + 15
        error = None
        while time.monotonic() < deadline and error is None:
            m = classic.poll(0.2)
            if m is not None and m.error() and m.error().code() != KafkaError._PARTITION_EOF:
                error = m.error()
            c.poll(0.05)
        assert error is not None, "the classic member got no error"
        assert error.code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL, error
        assert not classic.assignment()
        # The consumer-protocol member keeps everything.
        assert len(c.assignment()) == PARTITIONS
    finally:
        classic.close()
        c.close()


def test_unknown_assignor_is_refused(broker):
    topic = unique("kip848-asg")
    create_topic(broker, topic)
    c = consumer(broker, unique("g848-asg"), **{"group.remote.assignor": "no-such-assignor"})
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 15
        error = None
        while time.monotonic() < deadline and error is None:
            m = c.poll(0.2)
            if m is not None and m.error():
                error = m.error()
        # librdkafka raises UNSUPPORTED_ASSIGNOR (112) as a fatal consumer
        # error that carries the broker's error.
        assert error is not None, "no error for an unknown assignor"
        assert error.code() in (KafkaError.UNSUPPORTED_ASSIGNOR, KafkaError._FATAL), error
        assert "assignor or its version range is not supported" in error.str(), error
    finally:
        c.close()


def test_range_assignor_and_group_survive_kill_9(fresh_broker):
    broker = fresh_broker
    topic = unique("kip848-crash")
    group = unique("g848-crash")
    create_topic(broker, topic)
    first = [f"f{i}" for i in range(300)]
    produce(broker, topic, first)
    c = consumer(broker, group, **{"group.remote.assignor": "range"})
    c.subscribe([topic])
    seen: dict = {}
    poll_until([c], seen, len(first))
    c.close()

    admin = admin_for(broker)  # kept alive until result()
    desc = admin.describe_consumer_groups([group])[group].result(20)
    assert len(desc.members) == 0
    broker.kill9()
    broker.restart()

    # The group (type and committed offsets) is back; a member resumes where
    # the group left off: nothing of `first` again.
    second = [f"s{i}" for i in range(300)]
    produce(broker, topic, second)
    c = consumer(broker, group, **{"group.remote.assignor": "range"})
    try:
        c.subscribe([topic])
        later: dict = {}
        poll_until([c], later, len(second))
        assert set(later) == set(second), sorted(set(later) - set(second))[:5]
        assert max(later.values()) == 1
    finally:
        c.close()
    admin = admin_for(broker)
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(20)
    assert sum(tp.offset for tp in offsets.topic_partitions) == len(first) + len(second)
    listed = admin.list_consumer_groups().result(20)
    mine = [g for g in listed.valid if g.group_id == group]
    assert mine and "CONSUMER" in str(mine[0].type).upper(), mine
