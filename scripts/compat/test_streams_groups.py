"""KIP-1071 streams groups on the wire: StreamsGroupHeartbeat and
StreamsGroupDescribe, and how a streams group meets the rest of the group
coordinator.

Kafka Streams itself (group.protocol=streams, two instances, exactly-once
word count, StreamsGroupCommand) is the `streams-protocol` check of
`scripts/conformance` (Java, run by CI with --quick). These tests drive the
protocol by hand where the Java client cannot be steered: the internal
topics the broker creates and their sizes, the statuses, revocation before
a task moves, offset commits fenced by member epoch, a group id used by two
group types, DeleteGroups, and a kill -9 restart.
"""

from __future__ import annotations

import time

import kwire
import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import ConfigResource, ResourceType
from test_groups import admin_for, create_topic, unique

# No initial rebalance delay (Kafka's default is 3 s), except where a test
# sets it as a group config.
BROKER_PARAMS = {"shards": 2, "broker_id": 0,
                 "args": ["--offsets-topic-partitions", "10",
                          "--group-streams-initial-rebalance-delay-ms", "0"]}

MISSING_SOURCE_TOPICS, MISSING_INTERNAL_TOPICS, SHUTDOWN_APPLICATION = 1, 3, 4
ASSIGNMENT_DELAYED = 5
GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP, UNKNOWN_MEMBER_ID = 69, 68, 25
STALE_MEMBER_EPOCH = 113


def topology(app: str, source: str) -> list[kwire.StreamsSubtopology]:
    """A word count's shape: 0 reads the source and writes the repartition
    topic; 1 reads that and keeps a changelog."""
    rep, log = f"{app}-count-repartition", f"{app}-count-changelog"
    return [
        kwire.StreamsSubtopology("0", source_topics=[source], repartition_sinks=[rep]),
        kwire.StreamsSubtopology(
            "1", repartition_sources=[(rep, 0, {"cleanup.policy": "delete"})],
            changelogs=[(log, 0, {"cleanup.policy": "compact"})]),
    ]


def coordinator(broker, group: str) -> kwire.Conn:
    with kwire.Conn(broker.host, broker.ports[0]) as k:
        err, node = kwire.find_coordinator(k, group)
        assert err == 0, err
    return kwire.Conn(broker.host, broker.port_of_node(node))


def join(k: kwire.Conn, group: str, member: str, topo, process: str = "p1"):
    return kwire.streams_group_heartbeat(k, group, member, 0, topology=topo, process_id=process,
                                         owned={}, rebalance_timeout_ms=30000)


def tasks(hb: kwire.StreamsHeartbeatResponse) -> set[tuple[str, int]]:
    return {(s, p) for s, ps in (hb.active or {}).items() for p in ps}


def beat_until(k, group: str, member: str, epoch: int, owned, pred, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        hb = kwire.streams_group_heartbeat(k, group, member, epoch, owned=owned)
        assert hb.error_code == 0, (hb.error_code, hb.error_message)
        epoch = hb.member_epoch
        if hb.active is not None:
            owned = hb.active
        if pred(hb):
            return hb, owned
        assert time.monotonic() < deadline, hb
        time.sleep(0.2)


def test_internal_topics_are_created_then_tasks_assigned(broker):
    app, src = unique("sg-app"), unique("sg-in")
    create_topic(broker, src, 3)
    topo = topology(app, src)
    with coordinator(broker, app) as k:
        hb = join(k, app, "m1", topo)
        assert hb.error_code == 0, hb.error_message
        assert hb.member_epoch >= 1
        assert [s for s, _ in hb.status or []] == [MISSING_INTERNAL_TOPICS], hb.status
        assert "Internal topics are missing" in hb.status[0][1]
        assert tasks(hb) == set(), "no tasks before the internal topics exist"
        hb, owned = beat_until(k, app, "m1", hb.member_epoch, {}, lambda h: len(tasks(h)) == 6)
        assert not hb.status, hb.status
        assert tasks(hb) == {(s, p) for s in "01" for p in range(3)}
        (d,) = kwire.streams_group_describe(k, [app], version=1)
        assert (d.error_code, d.state, d.subtopologies) == (0, "Stable", ["0", "1"]), d
        assert d.members["m1"][0] == hb.member_epoch and d.members["m1"][1] == "p1"
    # The internal topics: sized from the source topic, with the topology's configs.
    admin = admin_for(broker)
    meta = admin.list_topics(timeout=10).topics
    for name in (f"{app}-count-repartition", f"{app}-count-changelog"):
        assert len(meta[name].partitions) == 3, name
    res = ConfigResource(ResourceType.TOPIC, f"{app}-count-changelog")
    configs = admin.describe_configs([res])[res].result(10)
    assert configs["cleanup.policy"].value == "compact"


def test_an_internal_topic_that_cannot_be_created_is_reported(broker):
    """As Kafka appends it: the MISSING_INTERNAL_TOPICS detail says which
    creation failed and why; the group gets no tasks."""
    app, src = unique("sg-bad"), unique("sg-in")
    create_topic(broker, src, 1)
    topo = topology(app, src)
    topo[1].changelogs = [(f"{app}-count-changelog", 0, {"cleanup.policy": "sideways"})]
    with coordinator(broker, app) as k:
        hb = join(k, app, "m1", topo)
        assert hb.error_code == 0, hb.error_message
        (status,) = [d for s, d in hb.status if s == MISSING_INTERNAL_TOPICS]
        assert f"; Creation failed: {app}-count-changelog (" in status, status
        assert tasks(hb) == set()


def test_a_new_group_waits_for_its_initial_rebalance_delay(broker):
    from test_share_groups import set_group_configs
    app, src = unique("sg-delay"), unique("sg-in")
    create_topic(broker, src, 2)
    set_group_configs(broker, app, streams_initial_rebalance_delay_ms="1500")
    with coordinator(broker, app) as k:
        t0 = time.monotonic()
        hb = join(k, app, "m1", topology(app, src))
        assert ASSIGNMENT_DELAYED in [s for s, _ in hb.status], hb.status
        assert hb.member_epoch >= 1 and tasks(hb) == set()
        hb, _ = beat_until(k, app, "m1", hb.member_epoch, {}, lambda h: len(tasks(h)) == 4)
        assert time.monotonic() - t0 >= 1.4, "tasks came before the delay was over"
        assert ASSIGNMENT_DELAYED not in [s for s, _ in hb.status]


def test_topology_descriptions_are_refused_as_kafka_without_a_plugin(broker):
    """Kafka 4.4 advertises StreamsGroupTopologyDescriptionUpdate; with no
    description plugin (its default) it answers every push so."""
    app = unique("sg-desc")
    with coordinator(broker, app) as k:
        assert kwire.streams_group_topology_description_update(k, app, "m1", 0) == (
            35, "The broker has no streams group topology description plugin configured.")


def test_a_missing_source_topic_is_a_status_not_an_error(broker):
    app = unique("sg-miss")
    with coordinator(broker, app) as k:
        hb = join(k, app, "m1", topology(app, unique("nowhere")))
        assert hb.error_code == 0
        assert [s for s, _ in hb.status] == [MISSING_SOURCE_TOPICS], hb.status
        assert tasks(hb) == set()
        (d,) = kwire.streams_group_describe(k, [app])
        assert d.state == "NotReady", d


def test_a_task_moves_only_after_its_owner_revokes_it(broker):
    app, src = unique("sg-move"), unique("sg-in")
    create_topic(broker, src, 2)
    topo = topology(app, src)
    with coordinator(broker, app) as k:
        a = join(k, app, "a", topo)
        a, a_owned = beat_until(k, app, "a", a.member_epoch, {}, lambda h: len(tasks(h)) == 4)
        a_epoch = a.member_epoch
        b = join(k, app, "b", topo, process="p2")
        assert tasks(b) == set(), "b gets nothing a still owns"
        # a is told to give up two tasks, at its old epoch.
        a = kwire.streams_group_heartbeat(k, app, "a", a_epoch, owned=a_owned)
        assert a.member_epoch == a_epoch and len(tasks(a)) == 2, a
        kept = a.active
        # b waits while a has not said it let go.
        b2 = kwire.streams_group_heartbeat(k, app, "b", b.member_epoch, owned={})
        assert tasks(b2) == set() and b2.active is None, b2
        # An offset commit by a at its epoch is still fine; one from the
        # future is stale, as is one from the past for a partition a never
        # had at that epoch (as Kafka 4.4's StreamsGroup checks them).
        def commit(member: str, epoch: int) -> int:
            return kwire.offset_commit(k, 9, app, src, 0, 5, None, generation=epoch, member=member)
        assert commit("a", a_epoch) == 0
        assert commit("a", a_epoch + 7) == STALE_MEMBER_EPOCH
        assert commit("a", a_epoch - 1) == STALE_MEMBER_EPOCH
        assert commit("nobody", a_epoch) == UNKNOWN_MEMBER_ID
        # a reports that it let go: it moves on, and b takes the two.
        a = kwire.streams_group_heartbeat(k, app, "a", a_epoch, owned=kept)
        assert a.member_epoch > a_epoch
        b3, _ = beat_until(k, app, "b", b2.member_epoch, {}, lambda h: len(tasks(h)) == 2)
        assert not tasks(b3) & {(s, p) for s, ps in kept.items() for p in ps}
        (d,) = kwire.streams_group_describe(k, [app])
        assert d.state == "Stable", d
        # A member that stops heartbeating would be fenced after the session
        # timeout (45 s by default, unit-tested); leaving is at once.
        assert kwire.streams_group_heartbeat(k, app, "b", -1).error_code == 0
        (d,) = kwire.streams_group_describe(k, [app])
        assert list(d.members) == ["a"], d


def test_a_shutdown_request_reaches_the_other_members(broker):
    app, src = unique("sg-down"), unique("sg-in")
    create_topic(broker, src, 1)
    with coordinator(broker, app) as k:
        a = join(k, app, "a", topology(app, src))
        b = join(k, app, "b", topology(app, src), process="p2")
        down = kwire.streams_group_heartbeat(k, app, "a", a.member_epoch, shutdown=True)
        assert SHUTDOWN_APPLICATION in [s for s, _ in down.status], down.status
        told = kwire.streams_group_heartbeat(k, app, "b", b.member_epoch)
        assert SHUTDOWN_APPLICATION in [s for s, _ in told.status], told.status


def test_group_types_do_not_mix_and_a_busy_group_is_not_deleted(broker):
    app, src = unique("sg-mix"), unique("sg-in")
    create_topic(broker, src, 2)
    with coordinator(broker, app) as k:
        hb = join(k, app, "m1", topology(app, src))
        assert hb.error_code == 0
        # DescribeGroups (classic) does not describe it; ListGroups types it.
        (g,) = kwire.describe_groups(k, 6, [app])
        assert g[0] == GROUP_ID_NOT_FOUND, g
        streams_groups = kwire.list_groups_v5(k, ["streams"])
        # Not ready: its internal topics did not exist at its last heartbeat.
        assert (app, "streams", "NotReady", "streams") in streams_groups, streams_groups
        assert app not in [g[0] for g in kwire.list_groups_v5(k, ["consumer", "classic"])]
    admin = admin_for(broker)
    deleted = admin.delete_consumer_groups([app])[app]
    with pytest.raises(Exception, match="NON_EMPTY_GROUP"):
        deleted.result(10)
    # A classic member is refused, as Kafka refuses it.
    classic = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                        "group.id": app, "group.protocol": "classic"})
    try:
        classic.subscribe([src])
        error = None
        deadline = time.monotonic() + 15
        while error is None and time.monotonic() < deadline:
            m = classic.poll(0.2)
            if m is not None and m.error():
                error = m.error()
        assert error is not None and error.code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL, error
    finally:
        classic.close()
    nobody = unique("nobody")
    with coordinator(broker, nobody) as k:
        (d,) = kwire.streams_group_describe(k, [nobody])
        assert (d.error_code, d.error_message) == (GROUP_ID_NOT_FOUND, f"Group {nobody} not found."), d
    # Once empty it is deleted, its offsets with it.
    with coordinator(broker, app) as k:
        assert kwire.streams_group_heartbeat(k, app, "m1", -1).error_code == 0
    admin.delete_consumer_groups([app])[app].result(10)
    with coordinator(broker, app) as k:
        (d,) = kwire.streams_group_describe(k, [app])
        assert d.error_code == GROUP_ID_NOT_FOUND, d


@pytest.mark.parametrize("fresh_broker", [{"shards": 1}], indirect=True)
def test_the_group_and_its_offsets_survive_kill_9(fresh_broker):
    broker = fresh_broker
    app, src = unique("sg-crash"), unique("sg-in")
    create_topic(broker, src, 2)
    topo = topology(app, src)
    with coordinator(broker, app) as k:
        hb = join(k, app, "m1", topo)
        hb, _ = beat_until(k, app, "m1", hb.member_epoch, {}, lambda h: len(tasks(h)) == 4)
        assert kwire.offset_commit(k, 9, app, src, 1, 42, None, generation=hb.member_epoch,
                                   member="m1") == 0
        epoch = hb.member_epoch
    broker.kill9()
    broker.restart()
    deadline = time.monotonic() + 30
    while True:
        try:
            with coordinator(broker, app) as k:
                (d,) = kwire.streams_group_describe(k, [app])
                if d.error_code == 0:
                    break
        except (AssertionError, OSError, kwire.Closed):
            pass
        assert time.monotonic() < deadline, "the group did not come back"
        time.sleep(0.5)
    # Its type and epoch came back; members rejoin.
    assert d.epoch >= epoch and d.members == {}, d
    with coordinator(broker, app) as k:
        stale = kwire.streams_group_heartbeat(k, app, "m1", epoch)
        assert stale.error_code == UNKNOWN_MEMBER_ID, stale
        again = join(k, app, "m1", topo)
        assert again.error_code == 0 and again.member_epoch > epoch, again
        got = kwire.offset_fetch(k, 8, app, src, 1)
        assert got.offset == 42, got
