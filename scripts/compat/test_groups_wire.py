"""Group APIs on raw sockets (kwire.py): bad input gets the Kafka error
clients expect, never a panic or a hang; FindCoordinator agrees with Kafka's
`abs(groupId.hashCode) % partitions`, single and batched (v4); DescribeGroups
v0..v2 carry no authorized_operations and v3 sends INT32_MIN unless asked.
"""

from __future__ import annotations

import uuid

import kwire
from kwire import Conn, Writer

OFFSETS_PARTITIONS = 7
BROKER_PARAMS = {"shards": 2, "broker_id": 0,
                 "args": ["--offsets-topic-partitions", str(OFFSETS_PARTITIONS),
                          "--group-initial-rebalance-delay-ms", "0"]}

NONE = 0
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
INVALID_REQUEST = 42
MEMBER_ID_REQUIRED = 79


def java_hash(s: str) -> int:
    h = 0
    for unit in _utf16_units(s):
        h = (31 * h + unit) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _utf16_units(s: str):
    b = s.encode("utf-16-be")
    return [int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2)]


def expected_node(broker, group: str, leaders: dict[int, int]) -> int:
    p = (java_hash(group) & 0x7FFFFFFF) % OFFSETS_PARTITIONS
    return leaders[p]


def find_coordinator_v1(conn: Conn, key: str, key_type: int = 0) -> tuple[int, int, int]:
    r = conn.request(kwire.FIND_COORDINATOR, 1, Writer().string(key).int8(key_type).getvalue())
    r.int32()  # throttle
    err = r.int16()
    r.string()  # message
    node, _host, port = r.int32(), r.string(), r.int32()
    r.expect_end("FindCoordinator v1")
    return err, node, port


def find_coordinator_v4(conn: Conn, keys: list[str]) -> dict[str, tuple[int, int]]:
    w = Writer().int8(0).array_len(len(keys), compact=True)
    for k in keys:
        w.string(k, compact=True)
    w.tags(True)
    r = conn.request(kwire.FIND_COORDINATOR, 4, w.getvalue())
    r.int32()
    out = {}
    for _ in range(r.array_len(compact=True)):
        key = r.string(compact=True)
        node = r.int32()
        r.string(compact=True)
        r.int32()
        err = r.int16()
        r.string(compact=True)
        r.skip_tags(True)
        out[key] = (err, node)
    r.skip_tags(True)
    r.expect_end("FindCoordinator v4")
    return out


def join_v1(conn: Conn, group: str, member: str = "", session_ms: int = 5000,
            protocol_type: str = "consumer", protocols=(("range", b"\x00\x00"),)) -> tuple[int, str]:
    w = Writer().string(group).int32(session_ms).int32(10000).string(member).string(protocol_type)
    w.array_len(len(protocols))
    for name, meta in protocols:
        w.string(name).bytes_(meta)
    r = conn.request(kwire.JOIN_GROUP, 1, w.getvalue())
    err, _gen = r.int16(), r.int32()
    r.string()
    r.string()
    member_id = r.string()
    for _ in range(r.array_len()):
        r.string()
        r.bytes_()
    r.expect_end("JoinGroup v1")
    return err, member_id


def heartbeat_v0(conn: Conn, group: str, member: str, generation: int) -> int:
    r = conn.request(kwire.HEARTBEAT, 0, Writer().string(group).int32(generation).string(member).getvalue())
    err = r.int16()
    r.expect_end("Heartbeat v0")
    return err


def offsets_leaders(broker) -> dict[int, int]:
    with Conn(broker.host, broker.ports[0]) as c:
        md = kwire.metadata(c, 1, ["__consumer_offsets"])
    t = md.topics["__consumer_offsets"]
    assert t.error_code == 0
    return {p: meta.leader for p, meta in t.partitions.items()}


def conn_to_node(broker, node: int) -> Conn:
    return Conn(broker.host, broker.port_of_node(node))


def test_find_coordinator_matches_kafkas_hash_single_and_batched(broker):
    groups = [f"grp-{i}" for i in range(12)] + ["polygenelubricants", "é-ü-群"]
    with Conn(broker.host, broker.ports[0]) as c:
        err, node, port = find_coordinator_v1(c, groups[0])
        assert err == NONE
        leaders = offsets_leaders(broker)  # created on first use
        assert len(leaders) == OFFSETS_PARTITIONS
        for g in groups:
            err, node, port = find_coordinator_v1(c, g)
            assert err == NONE
            want = leaders[(java_hash(g) & 0x7FFFFFFF) % OFFSETS_PARTITIONS]
            assert node == want, g
            assert port == broker.port_of_node(node)
        batched = find_coordinator_v4(c, groups)
        assert batched == {g: (NONE, leaders[(java_hash(g) & 0x7FFFFFFF) % OFFSETS_PARTITIONS])
                           for g in groups}
        # Transactional ids: the same hash over __transaction_state (created
        # on first use); an empty id has no coordinator.
        for tid in ["txn-1", "polygenelubricants"]:
            err, node, _ = find_coordinator_v1(c, tid, key_type=1)
            assert err == NONE
            md = kwire.metadata(c, 1, ["__transaction_state"]).topics["__transaction_state"]
            n = len(md.partitions)
            assert n == 50, "transaction_state_partitions defaults to Kafka's 50"
            assert node == md.partitions[(java_hash(tid) & 0x7FFFFFFF) % n].leader, tid
        err, _, _ = find_coordinator_v1(c, "", key_type=1)
        assert err == INVALID_REQUEST
        err, _, _ = find_coordinator_v1(c, "x", key_type=7)
        assert err == INVALID_REQUEST


def test_bad_joins_get_kafka_errors_not_panics(broker):
    group = f"wire-{uuid.uuid4().hex[:8]}"
    with Conn(broker.host, broker.ports[0]) as c:
        find_coordinator_v1(c, group)
    leaders = offsets_leaders(broker)
    coord = expected_node(broker, group, leaders)
    other = next(n for n in (broker.node_id(s) for s in range(broker.shards)) if n != coord)
    with conn_to_node(broker, other) as c:
        assert join_v1(c, group)[0] == NOT_COORDINATOR
        assert heartbeat_v0(c, group, "m", 1) == NOT_COORDINATOR
    with conn_to_node(broker, coord) as c:
        assert join_v1(c, "")[0] == INVALID_GROUP_ID
        assert join_v1(c, group, session_ms=1)[0] == INVALID_SESSION_TIMEOUT
        assert join_v1(c, group, protocols=())[0] == INCONSISTENT_GROUP_PROTOCOL
        assert join_v1(c, group, protocol_type="")[0] == INCONSISTENT_GROUP_PROTOCOL
        assert join_v1(c, group, member="who")[0] == UNKNOWN_MEMBER_ID
        assert heartbeat_v0(c, group, "who", 0) == UNKNOWN_MEMBER_ID
        # v1 has no member-id-required round: the join completes at once
        # (initial delay 0 here) and makes this member the leader.
        err, member = join_v1(c, group)
        assert err == NONE and member
        # Another protocol type, or no protocol in common, is refused.
        assert join_v1(c, group, protocol_type="connect")[0] == INCONSISTENT_GROUP_PROTOCOL
        assert join_v1(c, group, protocols=(("other", b""),))[0] == INCONSISTENT_GROUP_PROTOCOL
        assert heartbeat_v0(c, group, member, 99) == 22  # ILLEGAL_GENERATION


def describe_v3(conn: Conn, group: str, include_ops: bool) -> tuple[int, str, int, int]:
    w = Writer().array_len(1).string(group).bool(include_ops)
    r = conn.request(kwire.DESCRIBE_GROUPS, 3, w.getvalue())
    r.int32()
    assert r.array_len() == 1
    err, gid, state = r.int16(), r.string(), r.string()
    assert gid == group
    r.string()
    r.string()
    n_members = r.array_len()
    for _ in range(n_members):
        r.string(), r.string(), r.string(), r.bytes_(), r.bytes_()
    ops = r.int32()
    r.expect_end("DescribeGroups v3")
    return err, state, n_members, ops


def test_describe_groups_authorized_operations_sentinel(broker):
    group = f"wire-desc-{uuid.uuid4().hex[:8]}"
    with Conn(broker.host, broker.ports[0]) as c:
        find_coordinator_v1(c, group)
    coord = expected_node(broker, group, offsets_leaders(broker))
    with conn_to_node(broker, coord) as c:
        # An unknown group is reported Dead with no error, as Kafka does.
        assert describe_v3(c, group, False) == (NONE, "Dead", 0, -(2 ** 31))
        err, state, _, ops = describe_v3(c, group, True)
        assert (err, state) == (NONE, "Dead") and ops != -(2 ** 31) and ops > 0
        err, member = join_v1(c, group)
        assert err == NONE
        err, state, n, ops = describe_v3(c, group, False)
        assert (err, state, n, ops) == (NONE, "CompletingRebalance", 1, -(2 ** 31))
