"""brokerctl (ctl/): every command against the running broker, each checked
in its human (table) output and its --json output, and the facts it shows
or changes cross-checked with confluent-kafka:

* cluster info: cluster id, controller and nodes as DescribeCluster has them;
* cluster health: liveness, readiness and the quorum from the admin API;
* topic create/list/describe/alter-config/delete: partitions, leaders,
  offsets and configs as the admin client and consumers see them; errors
  (topic exists, unknown topic) by name with exit code 1;
* produce and consume: records brokerctl writes are read by confluent-kafka
  and records confluent-kafka writes are read by brokerctl; keyed records
  land where Kafka's murmur2 partitioner puts them;
* group list/describe (classic and KIP-848 groups, members, lag) and group
  seek (earliest, latest, timestamp, offset), seen by confluent-kafka's
  committed(); a seek on a group with members fails with exit code 1;
* partition move --wait: progress on stderr, the new leader in
  confluent-kafka's metadata.

The binary comes from $BROKERCTL_BIN (default target/release/brokerctl).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from conftest import REPO_ROOT
from test_idempotence import create_topic

BROKER_PARAMS = {"shards": 2, "broker_id": 0}


def ctl_bin() -> Path:
    p = Path(os.environ.get("BROKERCTL_BIN", REPO_ROOT / "target" / "release" / "brokerctl"))
    return p if p.is_absolute() else REPO_ROOT / p


@pytest.fixture(scope="module", autouse=True)
def _binary_present():
    if not os.access(ctl_bin(), os.X_OK):
        pytest.fail(f"brokerctl binary {ctl_bin()} not found (build it with "
                    "`cargo build --release --bin brokerctl` or set BROKERCTL_BIN)", pytrace=False)


def run(broker, *args: str, stdin: str | None = None, ok: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = [str(ctl_bin()), "-b", broker.bootstrap, *args]
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert r.returncode == 0, f"{' '.join(args)} exited {r.returncode}: {r.stderr}"
    return r


def human(broker, *args: str, **kw) -> str:
    return run(broker, *args, **kw).stdout


def as_json(broker, *args: str, **kw):
    return json.loads(run(broker, *args, "--json", **kw).stdout)


def json_lines(broker, *args: str, **kw) -> list:
    out = run(broker, *args, "--json", **kw).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def table(text: str, header_first: str) -> list[dict[str, str]]:
    """The rows of the table whose header starts with `header_first`."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if cells(ln)[0] == header_first)
    headers = cells(lines[start])
    rows = []
    for ln in lines[start + 1:]:
        if not ln.strip():
            break
        rows.append(dict(zip(headers, cells(ln))))
    return rows


def key_values(text: str) -> dict[str, str]:
    """`KEY  value` lines up to the first blank line."""
    out = {}
    for ln in text.splitlines():
        if not ln.strip():
            break
        k, v = cells(ln)
        out[k] = v
    return out


def admin(broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})


def committed(broker, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def read_all(broker, topic: str, partition: int, n: int) -> list:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": f"ctl-read-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, partition, 0)])
    out = []
    deadline = time.monotonic() + 20
    try:
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                out.append(m)
    finally:
        c.close()
    return out


def leaders(broker, topic: str) -> dict[int, int]:
    md = admin(broker).list_topics(topic, timeout=10).topics[topic]
    return {p.id: p.leader for p in md.partitions.values()}


def test_cluster_info(broker):
    text = human(broker, "cluster", "info")
    kv = key_values(text)
    nodes = table(text, "ID")
    assert {int(n["ID"]): (n["HOST"], int(n["PORT"])) for n in nodes} == broker.expected_nodes
    assert all(n["RACK"] == "-" for n in nodes)
    j = as_json(broker, "cluster", "info")
    assert j["source"] == "DescribeCluster"
    assert {n["id"]: (n["host"], n["port"]) for n in j["nodes"]} == broker.expected_nodes
    assert kv == {"CLUSTER": j["cluster_id"], "CONTROLLER": str(j["controller_id"])}
    a = admin(broker)  # kept alive until its future completes
    d = a.describe_cluster().result(timeout=10)
    assert d.cluster_id == j["cluster_id"]
    assert d.controller.id == j["controller_id"]
    assert sorted(n.id for n in d.nodes) == sorted(broker.expected_nodes)


def test_cluster_health_reads_the_admin_api(broker):
    admin_addr = f"{broker.host}:{broker.admin_port}"
    text = human(broker, "cluster", "health", "--admin", admin_addr)
    kv = key_values(text)
    assert kv["HEALTH"] == "ok" and kv["READY"] == "yes"
    assert kv["CONTROLLER LEADER"] == "0" and int(kv["METADATA INDEX"]) >= 1
    j = as_json(broker, "cluster", "health", "--admin", admin_addr)
    assert j["health"] == {"status": "ok"}
    assert j["ready"] == {"ready": True, "waiting": []}
    assert j["cluster"]["cluster_id"] == kv["CLUSTER"]
    assert kv["TOPICS"] == str(j["cluster"]["topics"])
    assert {n["node_id"] for n in j["cluster"]["nodes"]} == set(broker.expected_nodes)
    # Nothing listens there: exit 1 with the address in the message.
    r = run(broker, "cluster", "health", "--admin", "127.0.0.1:1", ok=False)
    assert r.returncode == 1 and "127.0.0.1:1" in r.stderr


def test_topic_lifecycle(broker):
    a, b = f"ctl-a-{uuid.uuid4().hex[:6]}", f"ctl-b-{uuid.uuid4().hex[:6]}"
    created = table(human(broker, "topic", "create", a, "-p", "3", "-c", "retention.ms=123456"),
                    "TOPIC")
    assert created == [{"TOPIC": a, "PARTITIONS": "3", "REPLICAS": "1", "STATUS": "OK"}]
    j = as_json(broker, "topic", "create", b, "--partitions", "2", "--replicas", "1")
    assert (j["topic"], j["partitions"], j["replicas"], j["status"]) == (b, 2, 1, "OK")
    again = run(broker, "topic", "create", a, ok=False)
    assert again.returncode == 1 and "TOPIC_ALREADY_EXISTS (36)" in again.stderr

    md = admin(broker).list_topics(timeout=10).topics
    assert len(md[a].partitions) == 3 and len(md[b].partitions) == 2
    listed = {r["NAME"]: r for r in table(human(broker, "topic", "list"), "NAME")}
    assert listed[a]["PARTITIONS"] == "3" and listed[b]["PARTITIONS"] == "2"
    assert "__consumer_offsets" not in listed
    jl = {t["name"]: t for t in as_json(broker, "topic", "list", "--internal")}
    assert (jl[a]["partitions"], jl[a]["replicas"], jl[a]["internal"]) == (3, 1, False)
    assert set(md) <= set(jl), "every topic the admin client sees is listed"

    # Some records, so describe has offsets to show.
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    for i in range(7):
        p.produce(a, value=b"r%d" % i, partition=1)
    assert p.flush(10) == 0
    text = human(broker, "topic", "describe", a)
    kv = key_values(text)
    assert (kv["NAME"], kv["PARTITIONS"], kv["REPLICAS"], kv["INTERNAL"]) == (a, "3", "1", "false")
    configs = {r["KEY"]: r for r in table(text, "KEY")}
    assert configs["retention.ms"]["VALUE"] == "123456"
    assert configs["retention.ms"]["SOURCE"] == "DYNAMIC_TOPIC_CONFIG"
    parts = {int(r["PARTITION"]): r for r in table(text, "PARTITION")}
    assert {p: int(r["LEADER"]) for p, r in parts.items()} == leaders(broker, a)
    assert [(r["EARLIEST"], r["LATEST"]) for _, r in sorted(parts.items())] == \
        [("0", "0"), ("0", "7"), ("0", "0")]
    jd = as_json(broker, "topic", "describe", a)
    assert jd["topic_id"] == kv["TOPIC ID"]
    assert jd["configs"]["retention.ms"] == {"value": "123456", "source": "DYNAMIC_TOPIC_CONFIG"}
    assert [(x["partition"], x["earliest_offset"], x["latest_offset"]) for x in jd["partitions"]] \
        == [(0, 0, 0), (1, 0, 7), (2, 0, 0)]
    assert {x["partition"]: x["leader"] for x in jd["partitions"]} == leaders(broker, a)
    assert all(x["replicas"] == [x["leader"]] and x["leader_epoch"] >= 0
               for x in jd["partitions"])

    changed = table(human(broker, "topic", "alter-config", a, "--set", "retention.ms=999",
                          "--set", "cleanup.policy=compact"), "KEY")
    assert changed == [{"KEY": "retention.ms", "OPERATION": "SET", "VALUE": "999"},
                       {"KEY": "cleanup.policy", "OPERATION": "SET", "VALUE": "compact"}]
    res = ConfigResource(ResourceType.TOPIC, a)
    ac = admin(broker)  # kept alive until its futures complete
    cfg = ac.describe_configs([res])[res].result(timeout=10)
    assert cfg["retention.ms"].value == "999" and cfg["cleanup.policy"].value == "compact"
    ja = as_json(broker, "topic", "alter-config", a, "--delete", "cleanup.policy")
    assert ja == {"topic": a, "set": {}, "deleted": ["cleanup.policy"], "status": "OK"}
    cfg = ac.describe_configs([res])[res].result(timeout=10)
    assert cfg["cleanup.policy"].value == "delete" and cfg["cleanup.policy"].is_default
    assert "cleanup.policy" not in as_json(broker, "topic", "describe", a)["configs"]

    missing = f"ctl-missing-{uuid.uuid4().hex[:6]}"
    gone = run(broker, "topic", "describe", missing, ok=False)
    assert gone.returncode == 1 and "UNKNOWN_TOPIC_OR_PARTITION (3)" in gone.stderr
    deleted = run(broker, "topic", "delete", a, missing, ok=False)
    assert deleted.returncode == 1
    rows = {r["TOPIC"]: r["STATUS"] for r in table(deleted.stdout, "TOPIC")}
    assert rows[a] == "OK" and rows[missing].startswith("UNKNOWN_TOPIC_OR_PARTITION (3)")
    assert as_json(broker, "topic", "delete", b)[0] | {"message": None} == \
        {"topic": b, "status": "OK", "error": None, "message": None}
    deadline = time.monotonic() + 10
    while {a, b} & set(admin(broker).list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, "deleted topics still in metadata"
        time.sleep(0.2)


def test_produce_and_consume_cross_check(broker):
    topic = f"ctl-pc-{uuid.uuid4().hex[:6]}"
    create_topic(broker, topic, 4)
    # A keyed record goes where Kafka's (murmur2) partitioner puts it.
    key = "user-42"
    j = json_lines(broker, "produce", topic, "-k", key, "--value", "hello")
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "partitioner": "murmur2_random"})
    where = []
    p.produce(topic, key=key.encode(), value=b"same-key",
              on_delivery=lambda err, m: where.append((err, m.partition(), m.offset())))
    assert p.flush(10) == 0 and where[0][0] is None
    keyed = where[0][1]
    assert j == [{"topic": topic, "partition": keyed, "offset": 0}]
    assert where[0][2] == 1
    lines_p, theirs_p = [x for x in range(4) if x != keyed][:2]

    # brokerctl writes (stdin, batches of 10), confluent-kafka reads.
    lines = [f"line-{i}" for i in range(25)]
    out = human(broker, "produce", topic, "-p", str(lines_p), "--batch", "10",
                stdin="\n".join(lines) + "\n")
    rows = table(out, "PARTITION")
    assert [(r["PARTITION"], r["OFFSET"]) for r in rows] == [(str(lines_p), str(i)) for i in range(25)]
    got = read_all(broker, topic, lines_p, 25)
    assert [m.value().decode() for m in got] == lines
    assert [m.offset() for m in got] == list(range(25))
    assert [m.value() for m in read_all(broker, topic, keyed, 2)] == [b"hello", b"same-key"]

    # confluent-kafka writes, brokerctl reads (table and JSON lines).
    for i in range(5):
        p.produce(topic, key=b"k%d" % i, value=b"v%d" % i, partition=theirs_p,
                  headers=[("h", b"x%d" % i)])
    assert p.flush(10) == 0
    rows = table(human(broker, "consume", topic, "-p", str(theirs_p), "--timeout-ms", "1000"),
                 "PARTITION")
    assert [(r["PARTITION"], r["OFFSET"], r["KEY"], r["VALUE"]) for r in rows] == \
        [(str(theirs_p), str(i), f"k{i}", f"v{i}") for i in range(5)]
    recs = json_lines(broker, "consume", topic, "-p", str(theirs_p), "-o", "2", "-n", "2")
    assert [(r["partition"], r["offset"], r["key"], r["value"], r["headers"]) for r in recs] == \
        [(theirs_p, 2, "k2", "v2", {"h": "x2"}), (theirs_p, 3, "k3", "v3", {"h": "x3"})]
    assert all(r["topic"] == topic and r["timestamp"] > 0 for r in recs)

    # Every partition, stopping after the count; and nothing from latest.
    everything = json_lines(broker, "consume", topic, "-n", "32")
    assert sorted((r["partition"], r["offset"]) for r in everything) == sorted(
        [(lines_p, i) for i in range(25)] + [(keyed, 0), (keyed, 1)] +
        [(theirs_p, i) for i in range(5)])
    t0 = time.monotonic()
    assert json_lines(broker, "consume", topic, "-o", "latest", "--timeout-ms", "600") == []
    assert time.monotonic() - t0 < 10
    bad = run(broker, "consume", topic, "-p", "9", ok=False)
    assert bad.returncode == 1 and "no partition 9" in bad.stderr


def _group_consumer(broker, group: str, protocol: str) -> Consumer:
    conf = {"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
            "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "group.protocol": protocol}
    if protocol == "classic":
        conf["session.timeout.ms"] = 10000
    return Consumer(conf)


def _consume_and_commit(c: Consumer, n: int) -> None:
    got = 0
    deadline = time.monotonic() + 30
    while got < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            got += 1
    assert got == n, f"consumed {got} of {n}"
    c.commit(asynchronous=False)


def test_groups_describe_lag_and_seek(broker):
    topic = f"ctl-g-{uuid.uuid4().hex[:6]}"
    create_topic(broker, topic, 2)
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    t_mid = None
    for i in range(20):
        if i == 10:
            time.sleep(0.05)
            t_mid = int(time.time() * 1000)
            time.sleep(0.05)
        p.produce(topic, value=b"%d" % i, partition=0)
        p.produce(topic, value=b"%d" % i, partition=1)
        p.flush(10)
    classic, modern = f"ctl-classic-{uuid.uuid4().hex[:6]}", f"ctl-848-{uuid.uuid4().hex[:6]}"
    c1 = _group_consumer(broker, classic, "classic")
    c2 = _group_consumer(broker, modern, "consumer")
    try:
        c1.subscribe([topic])
        c2.subscribe([topic])
        # More than one partition holds: both get a committed offset.
        _consume_and_commit(c1, 25)
        _consume_and_commit(c2, 40)
        seen = committed(broker, classic, topic, [0, 1])
        lag = 40 - sum(seen.values())
        assert lag == 15 and min(seen.values()) >= 5

        listed = {r["GROUP"]: r for r in table(human(broker, "group", "list"), "GROUP")}
        assert (listed[classic]["STATE"], listed[classic]["TYPE"]) == ("Stable", "classic")
        assert (listed[modern]["STATE"], listed[modern]["TYPE"]) == ("Stable", "consumer")
        assert listed[classic]["PROTOCOL-TYPE"] == "consumer"
        jl = {g["group"]: g for g in as_json(broker, "group", "list")}
        assert jl[modern]["type"] == "consumer" and jl[classic]["type"] == "classic"
        assert jl[classic]["coordinator"] in broker.expected_nodes

        text = human(broker, "group", "describe", classic)
        kv = key_values(text)
        assert (kv["STATE"], kv["TYPE"], kv["MEMBERS"], kv["TOTAL-LAG"]) == \
            ("Stable", "classic", "1", str(lag))
        assert int(kv["COORDINATOR"]) == jl[classic]["coordinator"]
        rows = {int(r["PARTITION"]): r for r in table(text, "TOPIC")}
        member = c1.memberid()
        for part in (0, 1):
            r = rows[part]
            assert (r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"]) == \
                (str(seen[part]), "20", str(20 - seen[part]))
            assert r["MEMBER-ID"] == member and r["CLIENT-ID"] == "rdkafka"
        jd = as_json(broker, "group", "describe", classic)
        assert jd["total_lag"] == lag and jd["state"] == "Stable" and jd["protocol"]
        assert [m["member_id"] for m in jd["members"]] == [member]
        assert jd["members"][0]["assignment"] == [{"topic": topic, "partitions": [0, 1]}]
        assert {x["partition"]: x["committed_offset"] for x in jd["partitions"]} == seen

        jm = as_json(broker, "group", "describe", modern)
        assert (jm["type"], jm["state"], jm["total_lag"]) == ("consumer", "Stable", 0)
        assert len(jm["members"]) == 1 and jm["members"][0]["member_id"] == c2.memberid()
        assert {x["partition"]: (x["committed_offset"], x["lag"]) for x in jm["partitions"]} == \
            {0: (20, 0), 1: (20, 0)}
        km = key_values(human(broker, "group", "describe", modern))
        assert (km["TYPE"], km["MEMBERS"], km["TOTAL-LAG"]) == ("consumer", "1", "0")

        # Members are in the group: Kafka refuses an admin's commit.
        for g in (classic, modern):
            refused = run(broker, "group", "seek", g, "--topic", topic, "--to", "earliest",
                          ok=False)
            assert refused.returncode == 1, refused.stdout
            assert "not empty" in refused.stderr and "refused" in refused.stderr
        assert committed(broker, classic, topic, [0, 1]) == seen
    finally:
        c1.close()
        c2.close()

    rows = table(human(broker, "group", "seek", classic, "--topic", topic, "--to", "earliest"),
                 "TOPIC")
    assert [(r["PARTITION"], r["PREVIOUS-OFFSET"], r["NEW-OFFSET"]) for r in rows] == \
        [("0", str(seen[0]), "0"), ("1", str(seen[1]), "0")]
    assert committed(broker, classic, topic, [0, 1]) == {0: 0, 1: 0}
    js = as_json(broker, "group", "seek", classic, "--topic", topic, "--partitions", "1",
                 "--to", "offset:7")
    assert js == [{"group": classic, "topic": topic, "partition": 1, "previous_offset": 0,
                   "new_offset": 7}]
    assert committed(broker, classic, topic, [0, 1]) == {0: 0, 1: 7}
    as_json(broker, "group", "seek", classic, "--topic", topic, "--to", f"timestamp:{t_mid}")
    assert committed(broker, classic, topic, [0, 1]) == {0: 10, 1: 10}
    as_json(broker, "group", "seek", modern, "--topic", topic, "--partitions", "0",
            "--to", "timestamp:0")
    assert committed(broker, modern, topic, [0, 1]) == {0: 0, 1: 20}
    as_json(broker, "group", "seek", classic, "--topic", topic, "--to", "latest")
    assert committed(broker, classic, topic, [0, 1]) == {0: 20, 1: 20}
    kv = key_values(human(broker, "group", "describe", classic))
    assert (kv["STATE"], kv["MEMBERS"], kv["TOTAL-LAG"]) == ("Empty", "0", "0")
    bad = run(broker, "group", "seek", classic, "--topic", topic, "--to", "yesterday", ok=False)
    assert bad.returncode != 0 and "timestamp:MS" in bad.stderr


def test_partition_move(broker):
    topic = f"ctl-mv-{uuid.uuid4().hex[:6]}"
    create_topic(broker, topic, 1)
    home = leaders(broker, topic)[0]
    other = next(n for n in broker.expected_nodes if n != home)
    run(broker, "produce", topic, "--value", "before")

    r = run(broker, "partition", "move", topic, "0", "--to", str(other), "--wait")
    row = table(r.stdout, "TOPIC")[0]
    assert (row["PARTITION"], row["FROM"], row["TO"], row["STATUS"]) == \
        ("0", str(home), str(other), "moved")
    assert f"node {other} leads, move done" in r.stderr
    assert leaders(broker, topic) == {0: other}

    j = as_json(broker, "partition", "move", topic, "0", "--to", str(home), "--wait",
                "--timeout-ms", "20000")
    assert (j["from"], j["to"], j["status"]) == (other, home, "moved")
    assert leaders(broker, topic) == {0: home}
    # The data moved with it.
    run(broker, "produce", topic, "--value", "after")
    assert [m.value() for m in read_all(broker, topic, 0, 2)] == [b"before", b"after"]

    bad = run(broker, "partition", "move", topic, "0", "--to", "999", ok=False)
    assert bad.returncode == 1 and "INVALID_REPLICA_ASSIGNMENT (39)" in bad.stderr


def test_unreachable_broker_is_exit_1():
    r = subprocess.run([str(ctl_bin()), "-b", "127.0.0.1:1", "cluster", "info"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "127.0.0.1:1" in r.stderr
