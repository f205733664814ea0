"""KIP-932 share groups with a real client: confluent-kafka's ShareConsumer
(librdkafka 2.16) speaking ShareGroupHeartbeat, ShareFetch and
ShareAcknowledge.

Checks data, not calls: several consumers of one share group (more of them
than partitions, so partitions are shared) get every record exactly once;
released records come back with a higher delivery count and rejected ones
never do; a record whose holder never acknowledges it returns to another
member once its acquisition lock runs out; records past the delivery limit
are skipped; and a kill -9 of the broker loses no acknowledgement (nothing
accepted is delivered again) and no record (everything else still is).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from confluent_kafka import AcknowledgeType, ShareConsumer
from test_admin_http import scrape, total
from test_consumer_protocol import produce
from test_groups import admin_for, create_topic, unique

LOCK_MS = 2000
BROKER_PARAMS = {"shards": 2, "broker_id": 0,
                 "args": ["--offsets-topic-partitions", "10",
                          "--group-share-record-lock-duration-ms", str(LOCK_MS),
                          "--group-share-delivery-count-limit", "3",
                          "--group-share-heartbeat-interval-ms", "500",
                          "--group-share-session-timeout-ms", "6000"]}

DEADLINE_S = 40


def share_consumer(broker, group: str, **extra) -> ShareConsumer:
    conf = {"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
            "group.id": group}
    conf.update(extra)
    return ShareConsumer(conf)


def wait_started(consumers: list[ShareConsumer], seconds: float = 4.0) -> None:
    """Polls until the share-partitions exist (they start at the log end,
    Kafka's default share.auto.offset.reset=latest)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for c in consumers:
            assert len(c.poll(0.2)) == 0


def values(msgs) -> list[str]:
    out = []
    for m in msgs:
        assert m.error() is None, m.error()
        out.append(m.value().decode())
    return out


def test_each_record_reaches_one_of_more_consumers_than_partitions(broker):
    topic, group = unique("share"), unique("sg")
    create_topic(broker, topic, 2)
    consumers = [share_consumer(broker, group) for _ in range(3)]
    try:
        for c in consumers:
            c.subscribe([topic])
        wait_started(consumers)
        want = [f"v{i}" for i in range(600)]
        produce(broker, topic, want)
        seen: dict[str, int] = {}
        per_consumer = [0, 0, 0]
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and len(seen) < len(want):
            for i, c in enumerate(consumers):
                got = values(c.poll(0.3))
                per_consumer[i] += len(got)
                for v in got:
                    seen[v] = seen.get(v, 0) + 1
        assert sorted(seen) == sorted(want), f"{len(seen)} of {len(want)} arrived"
        dups = {v: n for v, n in seen.items() if n > 1}
        assert not dups, f"delivered more than once: {list(dups.items())[:5]}"
        # Three members on two partitions: one partition is shared.
        assert sum(1 for n in per_consumer if n > 0) >= 2, per_consumer
        # /metrics: the leaders hold a session per member and partition
        # leader, and both share-partitions.
        m = scrape(broker)
        assert total(m, "broker_share_sessions") >= 3, m
        assert total(m, "broker_share_partitions") >= 2
    finally:
        for c in consumers:
            c.close()
    # Closed sessions let the share-partitions go (their states stay with
    # the coordinator).
    deadline = time.monotonic() + 10
    while total(scrape(broker), "broker_share_partitions") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    m = scrape(broker)
    assert (total(m, "broker_share_sessions"), total(m, "broker_share_partitions")) == (0, 0)
    # ListGroups lists it (librdkafka's list_consumer_groups keeps only
    # consumer and classic groups, as Kafka's AdminClient does).
    with pytest.warns(DeprecationWarning):
        listed = admin_for(broker).list_groups(timeout=10)
    assert group in {g.id for g in listed}


def test_released_records_return_and_rejected_ones_do_not(broker):
    topic, group = unique("share"), unique("sg")
    create_topic(broker, topic, 1)
    c = share_consumer(broker, group, **{"share.acknowledgement.mode": "explicit"})
    try:
        c.subscribe([topic])
        wait_started([c])
        produce(broker, topic, [f"v{i}" for i in range(30)])
        first: dict[str, int] = {}
        deadline = time.monotonic() + DEADLINE_S
        while len(first) < 30 and time.monotonic() < deadline:
            msgs = c.poll(0.5)
            for m in msgs:
                v = m.value().decode()
                first[v] = m.delivery_count()
                i = int(v[1:])
                kind = (AcknowledgeType.RELEASE if i % 3 == 0 else
                        AcknowledgeType.REJECT if i % 3 == 1 else AcknowledgeType.ACCEPT)
                c.acknowledge(m, kind)
            if msgs:
                c.commit_sync(10)
        assert len(first) == 30 and set(first.values()) == {1}, first
        again: dict[str, int] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(again) < 10:
            msgs = c.poll(0.5)
            for m in msgs:
                again[m.value().decode()] = m.delivery_count()
                c.acknowledge(m, AcknowledgeType.ACCEPT)
            if msgs:
                c.commit_sync(10)
        # Only the released ones, delivered a second time.
        assert sorted(again) == sorted(f"v{i}" for i in range(0, 30, 3)), again
        assert set(again.values()) == {2}, again
        # Nothing else comes: every record is accepted or rejected now.
        end = time.monotonic() + 2
        while time.monotonic() < end:
            assert not c.poll(0.3)
    finally:
        c.close()


HOLDER = """
import sys, time
from confluent_kafka import ShareConsumer
c = ShareConsumer({"bootstrap.servers": sys.argv[1], "broker.address.family": "v4",
                   "group.id": sys.argv[2], "share.acknowledgement.mode": "explicit"})
c.subscribe([sys.argv[3]])
got = []
while not got:
    got = list(c.poll(0.3))
print(",".join(f"{m.value().decode()}:{m.delivery_count()}" for m in got), flush=True)
time.sleep(600)
"""


def test_unacknowledged_records_move_on_when_the_lock_expires_and_stop_at_the_limit(broker):
    topic, group = unique("share"), unique("sg")
    create_topic(broker, topic, 1)
    waiter = share_consumer(broker, group)
    waiter.subscribe([topic])
    wait_started([waiter])
    waiter.close()
    produce(broker, topic, [f"v{i}" for i in range(5)])
    counts: list[str] = []
    # Each holder takes the records, never acknowledges them and is killed:
    # once the lock (2 s) runs out the next holder gets them, one delivery
    # more each time.
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, broker.bootstrap, group, topic],
                                stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline().strip()
        finally:
            proc.kill()
            proc.wait()
        counts.append(line)
    assert counts == [",".join(f"v{i}:{n}" for i in range(5)) for n in (1, 2, 3)], counts
    # The third delivery was the last (limit 3): archived, never again.
    last = share_consumer(broker, group)
    try:
        last.subscribe([topic])
        end = time.monotonic() + LOCK_MS / 1000 + 3
        while time.monotonic() < end:
            assert not last.poll(0.3)
    finally:
        last.close()


FIRST = """
import sys, time
from confluent_kafka import ShareConsumer
c = ShareConsumer({"bootstrap.servers": sys.argv[1], "broker.address.family": "v4",
                   "group.id": sys.argv[2]})
c.subscribe([sys.argv[3]])
end = time.monotonic() + 4
while time.monotonic() < end:
    assert not c.poll(0.2)
print("ready", flush=True)
want = int(sys.stdin.readline())
accepted = set()
while len(accepted) < want:
    accepted.update(m.value().decode() for m in c.poll(0.5))
c.commit_sync(10)
print(",".join(sorted(accepted)), flush=True)
sys.stdin.readline()
held = []
while not held:
    held = [m.value().decode() for m in c.poll(0.5)]
print(",".join(held), flush=True)
time.sleep(600)
"""


def test_acknowledgements_survive_kill_9(fresh_broker):
    """A consumer accepts 200 records, holds some of the next 200 without
    acknowledging them, and is killed with the broker (kill -9 both)."""
    broker = fresh_broker
    topic, group = unique("share"), unique("sg")
    create_topic(broker, topic, 2)
    proc = subprocess.Popen([sys.executable, "-c", FIRST, broker.bootstrap, group, topic],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        first = [f"a{i}" for i in range(200)]
        produce(broker, topic, first)
        proc.stdin.write("200\n")
        proc.stdin.flush()
        accepted = set(proc.stdout.readline().strip().split(","))
        assert accepted == set(first)
        second = [f"b{i}" for i in range(200)]
        produce(broker, topic, second)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        held = proc.stdout.readline().strip().split(",")
        assert held and set(held) <= set(second), held
    finally:
        proc.kill()
        proc.wait()
    broker.kill9()
    broker.restart()
    c2 = share_consumer(broker, group)
    try:
        c2.subscribe([topic])
        rest: dict[str, int] = {}
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and len(rest) < len(second):
            for v in values(c2.poll(0.5)):
                rest[v] = rest.get(v, 0) + 1
        again = accepted & set(rest)
        assert not again, f"accepted before the kill, delivered again: {sorted(again)[:5]}"
        # Everything not accepted arrives, what the dead consumer held too.
        assert set(rest) == set(second), f"{len(set(second) - set(rest))} lost"
        assert all(n == 1 for n in rest.values())
    finally:
        c2.close()


def test_share_state_apis_at_the_coordinator(broker):
    """The share-coordinator APIs Kafka's brokers send each other
    (Initialize, Read, ReadSummary, DeleteShareGroupState), answered by the
    group's coordinator; a state initialized there is where a real share
    consumer then starts."""
    import kwire
    topic, group = unique("share"), unique("sg")
    create_topic(broker, topic, 1)
    produce(broker, topic, [f"v{i}" for i in range(10)])
    with kwire.Conn("127.0.0.1", broker.ports[0]) as k:
        err, node = kwire.find_coordinator(k, group)
        assert err == 0, err
        topic_id = kwire.metadata(k, 12, [topic]).topics[topic].topic_id
    other = [p for p in broker.ports if p != broker.port_of_node(node)]
    with kwire.Conn("127.0.0.1", other[0]) as k:
        # Not the coordinator: NOT_COORDINATOR (16), as Kafka answers.
        assert kwire.read_share_group_state_summary(k, group, topic_id, 0)[0] == 16
    with kwire.Conn("127.0.0.1", broker.port_of_node(node)) as k:
        assert kwire.read_share_group_state_summary(k, group, topic_id, 0) == (0, -1, -1)
        assert kwire.initialize_share_group_state(k, group, topic_id, 0, 1, 6) == 0
        assert kwire.read_share_group_state_summary(k, group, topic_id, 0) == (0, 1, 6)
        assert kwire.read_share_group_state(k, group, topic_id, 0) == (0, 1, 6, [])
        # An older state epoch is fenced.
        assert kwire.initialize_share_group_state(k, group, topic_id, 0, 0, 2) == kwire.FENCED_STATE_EPOCH
    c = share_consumer(broker, group)
    try:
        c.subscribe([topic])
        got: list[str] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < 4 and time.monotonic() < deadline:
            got += values(c.poll(0.5))
        # Initialized at 6: neither the log start nor its end.
        assert got == ["v6", "v7", "v8", "v9"], got
        # (librdkafka 2.16's close() sent an empty ShareAcknowledge here, so
        # the acknowledgements are committed explicitly.)
        c.commit_sync(10)
    finally:
        c.close()
    with kwire.Conn("127.0.0.1", broker.port_of_node(node)) as k:
        # Accepted, and persisted by the leader before it answered.
        err, epoch, start, batches = kwire.read_share_group_state(k, group, topic_id, 0)
        assert (err, epoch, start) == (0, 1, 10), (err, epoch, start, batches)
        assert kwire.delete_share_group_state(k, group, topic_id, 0) == 0
        assert kwire.read_share_group_state_summary(k, group, topic_id, 0) == (0, -1, -1)


def set_group_configs(broker, group: str, **configs: str) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
    res = ConfigResource(ResourceType.GROUP, group, incremental_configs=[
        ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET)
        for k, v in configs.items()])
    admin = admin_for(broker)
    admin.incremental_alter_configs([res])[res].result(10)


def test_group_configs_start_earliest_and_skip_aborted_transactions(broker):
    """share.auto.offset.reset=earliest and share.isolation.level=
    read_committed, set as group configs before the group exists: records
    produced before the consumer joined arrive, aborted ones never do."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import ConfigResource, ResourceType
    topic, group = unique("share"), unique("sg")
    create_topic(broker, topic, 1)
    set_group_configs(broker, group, share_auto_offset_reset="earliest",
                      share_isolation_level="read_committed")
    admin = admin_for(broker)
    described = admin.describe_configs([ConfigResource(ResourceType.GROUP, group)])
    (cfg,) = [f.result(10) for f in described.values()]
    assert cfg["share.isolation.level"].value == "read_committed"
    assert cfg["share.record.lock.duration.ms"].value == str(LOCK_MS)
    produce(broker, topic, ["plain-1"])
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "transactional.id": unique("tx")})
    p.init_transactions(20)
    for outcome in ("aborted", "committed", "aborted"):
        p.begin_transaction()
        for i in range(3):
            p.produce(topic, f"{outcome}-{i}".encode())
        p.flush(10)
        if outcome == "aborted":
            p.abort_transaction(20)
        else:
            p.commit_transaction(20)
    produce(broker, topic, ["plain-2"])
    c = share_consumer(broker, group)
    try:
        c.subscribe([topic])
        got: list[str] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < 5 and time.monotonic() < deadline:
            got += values(c.poll(0.5))
        end = time.monotonic() + 2
        while time.monotonic() < end:
            got += values(c.poll(0.3))
        assert got == ["plain-1", "committed-0", "committed-1", "committed-2", "plain-2"], got
    finally:
        c.close()
    # A config Kafka has and this broker does not apply is refused.
    from confluent_kafka import KafkaException
    with pytest.raises(KafkaException, match="not supported"):
        set_group_configs(broker, group, streams_assignment_interval_ms="0")


def test_share_state_follows_partition_and_coordinator_moves(broker):
    """Accepted records stay accepted when the partition moves to another
    node and the group's coordinator (its __consumer_offsets partition)
    moves too: the new leader reads the state from the new coordinator."""
    from kafka import KafkaAdminClient
    from test_groups_wire import java_hash
    from test_reassign import leader_of, move
    topic, group = unique("share"), unique("sg")
    create_topic(broker, topic, 1)
    set_group_configs(broker, group, share_auto_offset_reset="earliest")
    produce(broker, topic, [f"v{i}" for i in range(200)])
    c = share_consumer(broker, group, **{"share.acknowledgement.mode": "explicit"})
    first: list[str] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + DEADLINE_S
        while len(first) < 100 and time.monotonic() < deadline:
            for m in c.poll(0.5):
                if len(first) < 100:
                    first.append(m.value().decode())
                    c.acknowledge(m, AcknowledgeType.ACCEPT)
                else:
                    c.acknowledge(m, AcknowledgeType.RELEASE)
            c.commit_sync(10)
    finally:
        c.close()
    assert len(first) == 100
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        home = leader_of(admin, topic, 0)
        move(admin, topic, 0, next(n for n in broker.expected_nodes if n != home))
        parts = admin.describe_topic_partitions(["__consumer_offsets"])["topics"][0]["partitions"]
        p = (java_hash(group) & 0x7FFFFFFF) % len(parts)
        coordinator = leader_of(admin, "__consumer_offsets", p)
        move(admin, "__consumer_offsets", p,
             next(n for n in broker.expected_nodes if n != coordinator))
    finally:
        admin.close()
    c2 = share_consumer(broker, group)
    try:
        c2.subscribe([topic])
        rest: dict[str, int] = {}
        deadline = time.monotonic() + DEADLINE_S
        while len(rest) < 100 and time.monotonic() < deadline:
            for v in values(c2.poll(0.5)):
                rest[v] = rest.get(v, 0) + 1
        c2.commit_sync(10)
    finally:
        c2.close()
    again = set(first) & set(rest)
    assert not again, f"accepted before the moves, delivered again: {sorted(again)[:5]}"
    assert set(first) | set(rest) == {f"v{i}" for i in range(200)}
