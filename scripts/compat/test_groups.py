"""Consumer groups with real clients: confluent-kafka (librdkafka) group
consumers (eager and cooperative-sticky), kafka-python's group consumer,
AdminClient's group operations, session-timeout expiry of a killed member,
and committed offsets across a kill -9 restart.

Every test checks data: which partitions each member owns, that every
message is consumed exactly once across the group, and the committed offsets
read back. Session timeouts are short (2 s) and the broker's initial
rebalance delay small, so the module stays well under a minute or two.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BROKER_PARAMS = {"shards": 2, "broker_id": 0,
                 "args": ["--offsets-topic-partitions", "10",
                          "--group-initial-rebalance-delay-ms", "100"]}

N_PARTITIONS = 6
SESSION_MS = 2000
DEADLINE_S = 30


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin_for(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})


def create_topic(broker, name: str, partitions: int = N_PARTITIONS) -> None:
    admin = admin_for(broker)
    fs = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                             operation_timeout=30)
    fs[name].result(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        t = admin.list_topics(timeout=10).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return
        time.sleep(0.1)
    pytest.fail(f"topic {name} not in metadata")


def produce(broker, topic: str, values: list[str]) -> None:
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "linger.ms": 5})
    errors = []
    for i, v in enumerate(values):
        p.produce(topic, value=v.encode(), key=str(i).encode(), partition=i % N_PARTITIONS,
                  on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(30) == 0
    assert not errors, errors[:3]


def group_consumer(broker, group: str, **extra) -> Consumer:
    conf = {"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
            "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 200,
            "topic.metadata.refresh.interval.ms": 1000}
    conf.update(extra)
    return Consumer(conf)


class Member:
    """A consumer plus what it consumed, polled from the test thread."""

    def __init__(self, consumer: Consumer, name: str) -> None:
        self.c = consumer
        self.name = name
        self.seen: list[tuple[int, int, str]] = []  # (partition, offset, value)

    def poll_once(self, timeout: float = 0.05) -> None:
        msg = self.c.poll(timeout)
        if msg is None:
            return
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                return
            raise AssertionError(f"{self.name}: {msg.error()}")
        self.seen.append((msg.partition(), msg.offset(), msg.value().decode()))

    def owned(self) -> set[int]:
        return {tp.partition for tp in self.c.assignment()}


def poll_until(members: list[Member], cond, what: str, timeout: float = DEADLINE_S) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        for m in members:
            m.poll_once()
        if cond():
            return time.monotonic() - start
    owned = {m.name: sorted(m.owned()) for m in members}
    pytest.fail(f"timed out waiting for {what}; assignments: {owned}")


def split_evenly(members: list[Member]) -> bool:
    owned = [m.owned() for m in members]
    union = set().union(*owned)
    disjoint = sum(len(o) for o in owned) == len(union)
    per = N_PARTITIONS // len(members)
    return union == set(range(N_PARTITIONS)) and disjoint and all(len(o) == per for o in owned)


def consumed_values(members: list[Member]) -> list[str]:
    return [v for m in members for (_, _, v) in m.seen]


def close_all(members: list[Member]) -> None:
    for m in members:
        try:
            m.c.close()
        except Exception:
            pass


# -- confluent-kafka -------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_group_splits_partitions_and_consumes_exactly_once(broker, strategy):
    topic, group = unique("grp"), unique(f"g-{strategy}")
    create_topic(broker, topic)
    first = [f"a{i}" for i in range(600)]
    produce(broker, topic, first)

    members = []
    for name in ("m1", "m2"):
        c = group_consumer(broker, group, **{"partition.assignment.strategy": strategy})
        c.subscribe([topic])
        members.append(Member(c, name))
    try:
        poll_until(members, lambda: split_evenly(members), "2 members with 3 partitions each")
        poll_until(members, lambda: len(consumed_values(members)) >= len(first), "first batch")
        for _ in range(10):  # nothing more arrives: no duplicates
            for m in members:
                m.poll_once()
        assert sorted(consumed_values(members)) == sorted(first)
        for m in members:
            assert {p for (p, _, _) in m.seen} <= m.owned() | {p for (p, _, _) in m.seen}
        # Commit: one member synchronously, the other asynchronously.
        members[0].c.commit(asynchronous=False)
        members[1].c.commit(asynchronous=True)
        committed_total = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            members[1].poll_once()
            tps = [TopicPartition(topic, p) for p in range(N_PARTITIONS)]
            got = members[0].c.committed(tps, timeout=10)
            committed_total = sum(tp.offset for tp in got if tp.offset >= 0)
            if committed_total == len(first):
                break
        assert committed_total == len(first), "sync + async commits cover every message"

        # A third member: the partitions are split three ways and the new
        # member resumes from the committed offsets (reads nothing old).
        c3 = group_consumer(broker, group, **{"partition.assignment.strategy": strategy})
        c3.subscribe([topic])
        members.append(Member(c3, "m3"))
        for m in members:
            m.seen.clear()
        poll_until(members, lambda: split_evenly(members), "3 members with 2 partitions each")
        assert members[2].owned(), "the new member got partitions"
        second = [f"b{i}" for i in range(300)]
        produce(broker, topic, second)
        poll_until(members, lambda: len(consumed_values(members)) >= len(second), "second batch")
        for _ in range(10):
            for m in members:
                m.poll_once()
        assert sorted(consumed_values(members)) == sorted(second), \
            "after the rebalance every new message is consumed once and nothing old is re-read"
        for m in members:
            m.c.commit(asynchronous=False)
    finally:
        close_all(members)

    # A brand-new consumer in the group resumes from the committed offsets.
    produce(broker, topic, ["c0", "c1"])
    late = Member(group_consumer(broker, group), "late")
    late.c.subscribe([topic])
    try:
        poll_until([late], lambda: len(late.seen) >= 2, "messages after the committed offsets")
        for _ in range(10):
            late.poll_once()
        assert sorted(v for (_, _, v) in late.seen) == ["c0", "c1"]
    finally:
        late.c.close()


KILLED_MEMBER = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Consumer
    bootstrap, group, topic, session = sys.argv[1:5]
    c = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4", "group.id": group,
                  "session.timeout.ms": int(session), "heartbeat.interval.ms": 200,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    while True:
        c.poll(0.1)
        if c.assignment():
            print("assigned", sorted(tp.partition for tp in c.assignment()), flush=True)
            break
    while True:
        c.poll(0.1)
""")


def test_member_that_stops_heartbeating_is_removed_after_session_timeout(broker, tmp_path):
    topic, group = unique("grp-kill"), unique("g-kill")
    create_topic(broker, topic)
    survivor = Member(group_consumer(broker, group), "survivor")
    survivor.c.subscribe([topic])
    script = tmp_path / "member.py"
    script.write_text(KILLED_MEMBER)
    proc = subprocess.Popen([sys.executable, str(script), broker.bootstrap, group, topic,
                             str(SESSION_MS)], stdout=subprocess.PIPE, text=True)
    try:
        poll_until([survivor], lambda: len(survivor.owned()) == N_PARTITIONS // 2,
                   "the partitions split between survivor and the other process")
        line = proc.stdout.readline()
        assert line.startswith("assigned"), line
        proc.kill()  # no LeaveGroup, no more heartbeats
        proc.wait(10)
        killed_at = time.monotonic()
        took = poll_until([survivor], lambda: survivor.owned() == set(range(N_PARTITIONS)),
                          "the survivor to own every partition")
        elapsed = time.monotonic() - killed_at
        assert elapsed >= SESSION_MS / 1000 * 0.8, f"removed after {elapsed:.2f}s: before the session timeout?"
        assert took < SESSION_MS / 1000 + 8, f"took {took:.2f}s"
        admin = admin_for(broker)  # keep the handle alive until the result is in
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        assert len(desc.members) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        survivor.c.close()


def test_static_member_restart_keeps_its_partitions(broker):
    """group.instance.id: a restarted static member (librdkafka sends no
    LeaveGroup for it) takes its old partitions back at once, well before
    its session would expire, and the other member keeps its own."""
    topic, group = unique("grp-static"), unique("g-static")
    create_topic(broker, topic)
    session_ms = 10_000

    def static(instance: str) -> Member:
        c = group_consumer(broker, group, **{"group.instance.id": instance,
                                             "session.timeout.ms": session_ms})
        c.subscribe([topic])
        return Member(c, instance)

    members = [static("s1"), static("s2")]
    try:
        poll_until(members, lambda: split_evenly(members), "a stable static group")
        before = {m.name: m.owned() for m in members}
        members[0].c.close()
        start = time.monotonic()
        members[0] = static("s1")
        poll_until(members, lambda: split_evenly(members), "s1 back in the group")
        took = time.monotonic() - start
        assert took < session_ms / 1000 / 2, f"took {took:.1f}s: waited for the session to expire?"
        assert {m.name: m.owned() for m in members} == before
    finally:
        close_all(members)


# -- AdminClient -----------------------------------------------------------------

def test_admin_lists_describes_and_deletes_groups(broker):
    topic, group = unique("grp-admin"), unique("g-admin")
    create_topic(broker, topic)
    produce(broker, topic, [f"v{i}" for i in range(12)])
    members = []
    for name in ("m1", "m2"):
        c = group_consumer(broker, group, **{"client.id": f"client-{name}"})
        c.subscribe([topic])
        members.append(Member(c, name))
    admin = admin_for(broker)
    try:
        poll_until(members, lambda: split_evenly(members), "a stable 2-member group")
        poll_until(members, lambda: len(consumed_values(members)) >= 12, "messages")
        for m in members:
            m.c.commit(asynchronous=False)
        deadline = time.monotonic() + 10
        while True:
            listed = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
            by_id = {g.group_id: g for g in listed.valid}
            if group in by_id or time.monotonic() > deadline:
                break
        assert group in by_id, [g.group_id for g in listed.valid]
        assert by_id[group].state == ConsumerGroupState.STABLE
        assert not listed.errors

        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        assert desc.state == ConsumerGroupState.STABLE
        assert desc.partition_assignor == "range"
        assert {m.client_id for m in desc.members} == {"client-m1", "client-m2"}
        assigned = {}
        for m in desc.members:
            parts = {tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
            assigned[m.client_id] = parts
            assert m.host.startswith("/127.0.0.1")
        assert assigned["client-m1"] | assigned["client-m2"] == set(range(N_PARTITIONS))
        assert not assigned["client-m1"] & assigned["client-m2"]
        assert assigned["client-m1"] == members[0].owned()

        # A group with members cannot be deleted.
        with pytest.raises(Exception) as err:
            admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
        assert "NON_EMPTY_GROUP" in str(err.value) or "not empty" in str(err.value).lower()
    finally:
        close_all(members)

    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    assert desc.state == ConsumerGroupState.EMPTY
    assert not desc.members
    admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    listed = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
    assert group not in {g.group_id for g in listed.valid}
    # Deleting it again: GROUP_ID_NOT_FOUND.
    with pytest.raises(Exception) as err:
        admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    assert "GROUP_ID_NOT_FOUND" in str(err.value) or "does not exist" in str(err.value).lower()
    # Its offsets went with it.
    c = group_consumer(broker, group)
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(N_PARTITIONS)], timeout=10)
        assert all(tp.offset < 0 for tp in got), got
    finally:
        c.close()


# -- kafka-python ----------------------------------------------------------------

def test_kafka_python_group_commit_and_committed(broker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.structs import OffsetAndMetadata

    topic, group = unique("grp-kp"), unique("g-kp")
    create_topic(broker, topic)
    values = [f"k{i}" for i in range(60)]
    produce(broker, topic, values)
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=500,
                             consumer_timeout_ms=10000)
    try:
        got = []
        for msg in consumer:
            got.append(msg.value.decode())
            if len(got) == len(values):
                break
        assert sorted(got) == sorted(values)
        assert len(consumer.assignment()) == N_PARTITIONS
        consumer.commit()
        for p in range(N_PARTITIONS):
            tp = KTP(topic, p)
            assert consumer.committed(tp) == consumer.position(tp) == len(values) // N_PARTITIONS
        # Metadata strings are kept and returned.
        tp0 = KTP(topic, 0)
        consumer.commit({tp0: OffsetAndMetadata(3, "my-metadata", -1)})
        meta = consumer.committed(tp0, metadata=True)
        assert (meta.offset, meta.metadata) == (3, "my-metadata")

        # kafka-python's admin: DescribeGroups (it rejects authorized
        # operations sentinels other than INT32_MIN) and OffsetFetch of all
        # partitions (no topics named).
        from kafka.admin import KafkaAdminClient
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            desc = admin.describe_groups([group])[group]
            assert desc["error"] is None
            assert (desc["group_state"], desc["protocol_type"], desc["protocol_data"]) == \
                ("Stable", "consumer", "range")
            (member,) = desc["members"]
            assert member["member_metadata"]["topics"] == [topic]
            assert member["member_assignment"]["assigned_partitions"] == \
                [{"topic": topic, "partitions": list(range(N_PARTITIONS))}]
            offsets = admin.list_group_offsets(group)[group]
            assert {tp.partition: om.offset for tp, om in offsets.items()} == \
                {0: 3, **{p: len(values) // N_PARTITIONS for p in range(1, N_PARTITIONS)}}
            assert offsets[KTP(topic, 0)].metadata == "my-metadata"
        finally:
            admin.close()
    finally:
        consumer.close()


# -- restart ---------------------------------------------------------------------

def test_committed_offsets_survive_kill_and_restart(fresh_broker):
    broker = fresh_broker
    topic, group = unique("grp-restart"), unique("g-restart")
    create_topic(broker, topic)
    produce(broker, topic, [f"r{i}" for i in range(60)])
    c = group_consumer(broker, group)
    offsets = [TopicPartition(topic, p, 3 + p) for p in range(N_PARTITIONS)]
    c.commit(offsets=offsets, asynchronous=False)
    got = c.committed([TopicPartition(topic, p) for p in range(N_PARTITIONS)], timeout=10)
    assert [tp.offset for tp in got] == [3 + p for p in range(N_PARTITIONS)]
    c.close()

    broker.proc.kill()  # kill -9: no clean shutdown
    broker.proc.wait(10)
    broker.start(random.Random())

    admin = admin_for(broker)
    md = admin.list_topics(timeout=10)
    assert topic in md.topics, "the topic survives the restart (metadata log)"
    c = group_consumer(broker, group)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                got = c.committed([TopicPartition(topic, p) for p in range(N_PARTITIONS)],
                                  timeout=10)
                break
            except Exception:
                # COORDINATOR_LOAD_IN_PROGRESS while the partition is replayed
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert [tp.offset for tp in got] == [3 + p for p in range(N_PARTITIONS)]
    finally:
        c.close()
