"""Kafka's own Java tools and clients (4.x, from Maven Central) against the
broker, for scripts/conformance.d/30-java.sh.

Each check runs real commands with `java -cp` and checks their output:

  topic-command          TopicCommand: create, list, describe, alter, delete
  config-command         ConfigCommand: alter, describe, delete a topic config
  consumer-group-command ConsumerGroupCommand: list, describe, reset-offsets,
                         delete-offsets, delete
  get-offsets            GetOffsetShell: earliest, latest, max-timestamp,
                         earliest-local, latest-tiered
  reassign-partitions    ReassignPartitionsCommand: list, generate, execute
                         (both partitions to the other node), verify
  leader-epochs          the Java consumer on a partition moved to another
                         node: each record's leader epoch, and its
                         truncation check (LogTruncationException at the
                         offset where epoch 0 ended; reset there)
  cluster-reassign       the same on scripts/cluster (three processes): every
                         partition to another broker, verified, records kept
  api-versions           Apache Kafka itself from these jars (single node, its
                         defaults) beside us: every API version we advertise,
                         it advertises too; prints what it has beyond us
  admin-commands         AclCommand (no authorizer: SECURITY_DISABLED, as
                         Kafka), LeaderElectionCommand, LogDirsCommand,
                         MetadataQuorumCommand, FeatureCommand (describe,
                         a refused upgrade), DelegationTokenCommand (not
                         allowed on PLAINTEXT), ConfigCommand on users
                         (SCRAM credentials set, shown, deleted),
                         ClusterTool (cluster-id, list-endpoints,
                         unregister: unknown, live)
  transactions-command   TransactionsCommand: list, describe,
                         describe-producers, find-hanging, abort
  verifiable-clients     VerifiableProducer (acks=all; the Java client's
                         default idempotence) and VerifiableConsumer: every
                         acknowledged record consumed, none twice
  consumer-protocol      KIP-848: two VerifiableConsumers with
                         --group-protocol consumer split the partitions and
                         consume every record once; ConsumerGroupCommand
                         lists the group as a consumer group and describes
                         its offsets and members
  share-groups           KIP-932: ConfigCommand sets and deletes a group
                         config; two VerifiableShareConsumers of one share
                         group (ack pattern accept x3, release, reject):
                         every accepted record once, rejected ones once,
                         released ones until the delivery limit (5);
                         ShareGroupCommand --list, --describe (offsets and
                         lag, state), --reset-offsets (then all records
                         again), --delete-offsets, --delete
  transactional-copier   TransactionalMessageCopier with random aborts, read
                         back read_committed: output equals input
  streams-eos            Kafka Streams word count, exactly_once_v2: the
                         final counts are exact
  streams-protocol       the same with group.protocol=streams (KIP-1071):
                         two instances, the second joining mid-stream;
                         exact counts, each once; StreamsGroupCommand
                         --describe --members/--state, --list,
                         --reset-offsets, --delete
  sasl                   our broker with SASL_PLAINTEXT listeners:
                         ConfigCommand (PLAIN) sets a user's SCRAM
                         credentials, VerifiableProducer (SCRAM-SHA-512)
                         and VerifiableConsumer (SCRAM-SHA-256) move every
                         record, a wrong password is refused

Usage: run.py BOOTSTRAP LIBDIR CLASSES WORKDIR [--quick] [CHECK...]
Prints `PASS name`, `FAIL name: why` or `SKIP name: why` per check, then
`java: P passed, F failed, S skipped`. Exit code 1 if any failed.
"""
from __future__ import annotations

import collections
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

QUIET = ["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]


class CheckFailed(Exception):
    pass


class Env:
    def __init__(self, bootstrap: str, lib: str, classes: str, work: Path, quick: bool):
        self.bootstrap = bootstrap
        self.cp = f"{classes}:{lib}/*"
        self.work = work
        self.quick = quick

    def java(self, main: str, *args: str, timeout: float = 120, check: bool = True) -> str:
        cmd = ["java", *QUIET, "-cp", self.cp, main, *args]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"{main.rsplit('.', 1)[-1]} {' '.join(args[:4])}: timed out after {timeout}s")
        text = out.stdout + out.stderr
        if check and out.returncode != 0:
            tail = "\n".join(text.splitlines()[-8:])
            raise CheckFailed(f"{main.rsplit('.', 1)[-1]} {' '.join(args)} exited {out.returncode}:\n{tail}")
        # An expected failure is read from both streams.
        return out.stdout if check else text

    def tool(self, main: str, *args: str, **kw) -> str:
        return self.java(main, "--bootstrap-server", self.bootstrap, *args, **kw)


def expect(cond: bool, why: str) -> None:
    if not cond:
        raise CheckFailed(why)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


TOPIC = "org.apache.kafka.tools.TopicCommand"


def create(env: Env, topic: str, partitions: int) -> None:
    env.tool(TOPIC, "--create", "--topic", topic, "--partitions", str(partitions))


def produce_lines(env: Env, topic: str, values: list[str], partitions: int | None = None) -> None:
    p = Producer({"bootstrap.servers": env.bootstrap, "broker.address.family": "v4"})
    for i, v in enumerate(values):
        if partitions:
            p.produce(topic, value=v.encode(), key=str(i).encode(), partition=i % partitions)
        else:
            p.produce(topic, value=v.encode(), key=str(i).encode())
    expect(p.flush(60) == 0, "plain producer did not deliver everything")


def read_topic(env: Env, topic: str, partitions: int, isolation: str = "read_committed",
               timeout: float = 60) -> list[tuple[bytes | None, bytes | None]]:
    c = Consumer({"bootstrap.servers": env.bootstrap, "broker.address.family": "v4",
                  "group.id": unique("conformance-reader"), "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "isolation.level": isolation,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, eof = [], set()
    deadline = time.monotonic() + timeout
    try:
        while len(eof) < partitions and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error():
                    if m.error().code() == -191:
                        eof.add(m.partition())
                        continue
                    raise CheckFailed(f"consumer error {m.error()}")
                eof.discard(m.partition())
                out.append((m.key(), m.value()))
    finally:
        c.close()
    expect(len(eof) == partitions, f"{topic}: did not reach the end of every partition")
    return out


# ---- the checks ----

def check_topic_command(env: Env) -> None:
    t = unique("tc")
    create(env, t, 3)
    expect(t in env.tool(TOPIC, "--list").split(), "--list does not show the new topic")
    desc = env.tool(TOPIC, "--describe", "--topic", t)
    expect(re.search(rf"Topic: {t}\s.*PartitionCount: 3", desc) is not None, f"--describe:\n{desc}")
    expect(len(re.findall(r"Partition: \d+\s+Leader: \d+", desc)) == 3, f"--describe partitions:\n{desc}")
    env.tool(TOPIC, "--alter", "--topic", t, "--partitions", "5")
    desc = env.tool(TOPIC, "--describe", "--topic", t)
    expect("PartitionCount: 5" in desc, f"--alter --partitions 5 not seen:\n{desc}")
    env.tool(TOPIC, "--delete", "--topic", t)
    deadline = time.monotonic() + 15
    while t in env.tool(TOPIC, "--list").split():
        expect(time.monotonic() < deadline, "deleted topic still listed")
        time.sleep(0.5)


CONFIG = "org.apache.kafka.tools.ConfigCommand"


def check_config_command(env: Env) -> None:
    t = unique("cc")
    create(env, t, 1)
    base = ["--entity-type", "topics", "--entity-name", t]
    env.tool(CONFIG, *base, "--alter", "--add-config", "retention.ms=123456,cleanup.policy=compact")
    desc = env.tool(CONFIG, *base, "--describe")
    expect("retention.ms=123456" in desc and "cleanup.policy=compact" in desc, f"--describe:\n{desc}")
    env.tool(CONFIG, *base, "--alter", "--delete-config", "retention.ms")
    desc = env.tool(CONFIG, *base, "--describe")
    expect("retention.ms=123456" not in desc and "cleanup.policy=compact" in desc,
           f"--delete-config not seen:\n{desc}")
    desc = env.tool(CONFIG, *base, "--describe", "--all")
    expect("max.message.bytes=" in desc, f"--describe --all lacks defaults:\n{desc}")


GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def check_consumer_group_command(env: Env) -> None:
    t, g = unique("cg"), unique("cg-group")
    create(env, t, 2)
    produce_lines(env, t, [f"v{i}" for i in range(100)], partitions=2)
    c = Consumer({"bootstrap.servers": env.bootstrap, "group.id": g, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([t])
    got = 0
    deadline = time.monotonic() + 30
    while got < 100 and time.monotonic() < deadline:
        got += len([m for m in c.consume(100, timeout=0.5) if not m.error()])
    c.commit(asynchronous=False)
    c.close()
    expect(got == 100, f"consumed {got} of 100")
    expect(g in env.tool(GROUPS, "--list").split(), "--list does not show the group")
    desc = env.tool(GROUPS, "--describe", "--group", g)
    rows = [ln.split() for ln in desc.splitlines() if ln.startswith(g)]
    expect(len(rows) == 2 and all(r[3] == "50" and r[4] == "50" and r[5] == "0" for r in rows),
           f"--describe (offsets 50, end 50, lag 0 per partition):\n{desc}")
    out = env.tool(GROUPS, "--reset-offsets", "--group", g, "--topic", t, "--to-earliest", "--execute")
    expect(len(re.findall(rf"{t}\s+\d+\s+0\b", out)) == 2, f"--reset-offsets:\n{out}")
    desc = env.tool(GROUPS, "--describe", "--group", g)
    rows = [ln.split() for ln in desc.splitlines() if ln.startswith(g)]
    expect(all(r[3] == "0" and r[5] == "50" for r in rows), f"after reset:\n{desc}")
    out = env.tool(GROUPS, "--delete-offsets", "--group", g, "--topic", f"{t}:0")
    expect(re.search(rf"{t}\s+0\s+Successful", out) is not None, f"--delete-offsets:\n{out}")
    out = env.tool(GROUPS, "--delete", "--group", g)
    expect("successful" in out.lower(), f"--delete:\n{out}")
    expect(g not in env.tool(GROUPS, "--list").split(), "deleted group still listed")


def check_get_offsets(env: Env) -> None:
    t = unique("go")
    create(env, t, 2)
    produce_lines(env, t, [f"v{i}" for i in range(10)], partitions=2)

    def offsets(spec: str) -> dict[int, int]:
        out = env.tool("org.apache.kafka.tools.GetOffsetShell", "--topic", t, "--time", spec)
        return {int(p): int(o) for _, p, o in (ln.rsplit(":", 2) for ln in out.split())}

    expect(offsets("earliest") == {0: 0, 1: 0}, "earliest")
    expect(offsets("latest") == {0: 5, 1: 5}, "latest")
    expect(offsets("max-timestamp").keys() == {0, 1}, "max-timestamp")
    expect(offsets("earliest-local") == {0: 0, 1: 0}, "earliest-local (KIP-1005)")
    # Not tiered: Kafka without remote storage answers no offset.
    expect(offsets("latest-tiered") == {}, "latest-tiered (KIP-1005)")


REASSIGN = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"


def execute_and_verify(env: Env, t: str, target: dict[int, int]) -> None:
    """ReassignPartitionsCommand --execute, then --verify, of a plan that
    moves each partition p of `t` to node target[p]; the leaders after it."""
    plan = {"version": 1, "partitions": [
        {"topic": t, "partition": p, "replicas": [n]} for p, n in target.items()]}
    path = env.work / f"reassign-{t}.json"
    path.write_text(json.dumps(plan))
    out = env.tool(REASSIGN, "--execute", "--reassignment-json-file", str(path))
    expect("Successfully started partition reassignment" in out, f"--execute:\n{out}")
    out = env.tool(REASSIGN, "--verify", "--reassignment-json-file", str(path))
    expect(out.count("is completed") == len(target), f"--verify:\n{out}")
    desc = env.tool(TOPIC, "--describe", "--topic", t)
    moved = {int(p): int(ld) for p, ld in re.findall(r"Partition: (\d+)\s+Leader: (\d+)", desc)}
    expect(moved == target, f"after the move (wanted {target}):\n{desc}")


def check_reassign_partitions(env: Env) -> None:
    t = unique("rp")
    create(env, t, 2)
    out = env.tool(REASSIGN, "--list")
    expect("No partition reassignments found" in out, f"--list:\n{out}")
    topics = env.work / "reassign-topics.json"
    topics.write_text(json.dumps({"version": 1, "topics": [{"topic": t}]}))
    out = env.tool(REASSIGN, "--generate", "--topics-to-move-json-file", str(topics),
                   "--broker-list", "0,1")
    expect("Proposed partition reassignment configuration" in out, f"--generate:\n{out}")
    # Move both partitions to the other node: a hand-over, no data copied.
    produce_lines(env, t, [f"v{i}" for i in range(100)], partitions=2)
    desc = env.tool(TOPIC, "--describe", "--topic", t)
    leaders = {int(p): int(l) for p, l in re.findall(r"Partition: (\d+)\s+Leader: (\d+)", desc)}
    execute_and_verify(env, t, {p: 1 - leader for p, leader in leaders.items()})
    values = sorted(v.decode() for _, v in read_topic(env, t, 2))
    expect(values == sorted(f"v{i}" for i in range(100)), "records after the move")


def check_leader_epochs(env: Env) -> None:
    """A partition moved to the other node is at leader epoch 1: the Java
    consumer sees each record's epoch, and its truncation check (KIP-320,
    OffsetsForLeaderEpoch) finds where epoch 0 ended."""
    t = unique("ep")
    create(env, t, 1)
    produce_lines(env, t, [f"a{i}" for i in range(30)], partitions=1)
    desc = env.tool(TOPIC, "--describe", "--topic", t)
    leader = int(re.findall(r"Partition: 0\s+Leader: (\d+)", desc)[0])
    execute_and_verify(env, t, {0: 1 - leader})
    produce_lines(env, t, [f"b{i}" for i in range(20)], partitions=1)
    out = env.java("EpochCheck", env.bootstrap, t, "35")
    want = ["epochs 0:30 1:20", "truncation 30 0", "reset-to 30", "first 35"]
    expect(out.split("\n")[:4] == want, f"EpochCheck printed:\n{out}\nwanted:\n" + "\n".join(want))


def check_cluster_reassign(env: Env) -> None:
    """ReassignPartitionsCommand on a cluster of three processes
    (scripts/cluster): every partition moves to another broker, --verify
    sees it done, and every record is there after the move."""
    cluster = Path(__file__).resolve().parents[2] / "cluster"
    d = env.work / "cluster"

    def run(*args: str) -> str:
        r = subprocess.run([sys.executable, str(cluster), *args, "--dir", str(d)],
                           capture_output=True, text=True, timeout=180)
        expect(r.returncode == 0, f"scripts/cluster {' '.join(args)}: {r.stdout}{r.stderr}")
        return r.stdout

    import shutil
    shutil.rmtree(d, ignore_errors=True)  # a fresh cluster: no metadata of another run
    out = run("up", "--base-port", "0", "--store", "local")
    bootstrap = out.strip().rsplit("bootstrap=", 1)[-1]
    try:
        c = Env(bootstrap, "", "", env.work, env.quick)
        c.cp = env.cp
        t = unique("crp")
        c.tool(TOPIC, "--create", "--topic", t, "--partitions", "3")
        desc = ""
        leaders: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(leaders) < 3 and time.monotonic() < deadline:
            desc = c.tool(TOPIC, "--describe", "--topic", t)
            leaders = {int(p): int(ld) for p, ld in
                       re.findall(r"Partition: (\d+)\s+Leader: (\d+)", desc) if int(ld) >= 0}
        expect(len(leaders) == 3, f"leaders of {t}:\n{desc}")
        produce_lines(c, t, [f"v{i}" for i in range(300)], partitions=3)
        topics = env.work / "cluster-topics.json"
        topics.write_text(json.dumps({"version": 1, "topics": [{"topic": t}]}))
        out = c.tool(REASSIGN, "--generate", "--topics-to-move-json-file", str(topics),
                     "--broker-list", "0,1000,2000")
        expect("Proposed partition reassignment configuration" in out, f"--generate:\n{out}")
        # Each partition to the first shard of the next broker.
        target = {p: ((ld // 1000 + 1) % 3) * 1000 for p, ld in leaders.items()}
        execute_and_verify(c, t, target)
        out = c.tool(REASSIGN, "--list")
        expect("No partition reassignments found" in out, f"--list:\n{out}")
        values = sorted(v.decode() for _, v in read_topic(c, t, 3))
        expect(values == sorted(f"v{i}" for i in range(300)), "records after the move")
    finally:
        run("down", "--purge")


def stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace_s`."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def free_port_pair() -> int:
    import socket
    for _ in range(200):
        port = random.randrange(40000, 49000, 2)
        ok = True
        for q in (port, port + 1):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", q))
                except OSError:
                    ok = False
        if ok:
            return port
    raise CheckFailed("no free ports for Kafka")


def check_api_versions_vs_kafka(env: Env) -> None:
    """Apache Kafka itself (these jars, single node, KRaft, its defaults)
    beside us: every API version we advertise, Kafka advertises too. Prints
    what Kafka advertises that we do not (explained in the README)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "compat"))
    import kwire
    port = free_port_pair()
    d = env.work / "kafka-apiversions"
    import shutil
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    props = d / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller", "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{port + 1}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={d / 'logs'}", "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1", ""]))
    env.java("kafka.tools.StorageTool", "format", "--standalone", "-t",
             "q1Sh-9_ISia_zwGINzRvyQ", "-c", str(props), timeout=120)
    log = open(d / "kafka.log", "wb")
    kafka = subprocess.Popen(["java", "-Xmx512m", *QUIET, "-cp", env.cp, "kafka.Kafka", str(props)],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        theirs = None
        deadline = time.monotonic() + 90
        while theirs is None and time.monotonic() < deadline:
            expect(kafka.poll() is None, f"Kafka exited; see {d / 'kafka.log'}")
            try:
                with kwire.Conn("127.0.0.1", port) as c:
                    theirs = kwire.negotiate(c)
            except OSError:
                time.sleep(0.5)
        expect(theirs is not None, "Kafka did not answer ApiVersions within 90 s")
        host, p = env.bootstrap.split(",")[0].rsplit(":", 1)
        with kwire.Conn(host, int(p)) as c:
            ours = kwire.negotiate(c)
    finally:
        stop(kafka, 30)
    beyond = [f"{k}: ours {v}, Kafka {theirs.get(k)}" for k, v in sorted(ours.items())
              if k not in theirs or v[1] > theirs[k][1] or v[0] < theirs[k][0]]
    expect(not beyond, "we advertise what Kafka does not: " + "; ".join(beyond))
    lacking = [f"{k} (Kafka {lo}-{hi}{', ours ' + str(ours[k][0]) + '-' + str(ours[k][1]) if k in ours else ''})"
               for k, (lo, hi) in sorted(theirs.items()) if ours.get(k, (0, -1))[1] < hi]
    print(f"  api-versions: Kafka advertises beyond us: {', '.join(lacking) or 'nothing'}", flush=True)


def check_admin_commands(env: Env) -> None:
    t = unique("adm")
    create(env, t, 2)
    produce_lines(env, t, [f"v{i}" for i in range(20)], partitions=2)
    out = env.java("org.apache.kafka.tools.AclCommand", "--bootstrap-server", env.bootstrap,
                   "--list", check=False)
    expect("SecurityDisabledException: No Authorizer is configured." in out
           or "No Authorizer is configured" in out, f"AclCommand --list:\n{out[-800:]}")
    out = env.tool("org.apache.kafka.tools.LeaderElectionCommand", "--election-type", "preferred",
                   "--topic", t, "--partition", "0")
    expect(f"Valid replica already elected for partitions {t}-0" in out, f"leader election:\n{out}")
    out = env.tool("org.apache.kafka.tools.LogDirsCommand", "--describe", "--topic-list", t)
    doc = json.loads(next(ln for ln in out.splitlines() if ln.startswith("{")))
    sizes = {p["partition"]: p["size"] for b in doc["brokers"] for d in b["logDirs"]
             for p in d["partitions"]}
    expect(set(sizes) == {f"{t}-0", f"{t}-1"} and all(v > 0 for v in sizes.values()),
           f"log dirs: {sizes}")
    out = env.tool("org.apache.kafka.tools.MetadataQuorumCommand", "describe", "--status")
    expect(re.search(r"LeaderId:\s+\d+", out) is not None and "CurrentVoters:" in out,
           f"metadata quorum:\n{out}")
    features = "org.apache.kafka.tools.FeatureCommand"
    out = env.tool(features, "describe")
    expect(re.search(r"Feature: group.version\s+SupportedMinVersion: 0\s+SupportedMaxVersion: 1"
                     r"\s+FinalizedVersionLevel: 1", out) is not None, f"FeatureCommand describe:\n{out}")
    expect(re.search(r"Feature: transaction.version\s+SupportedMinVersion: 0\s+SupportedMaxVersion: 2"
                     r"\s+FinalizedVersionLevel: 2", out) is not None, f"FeatureCommand describe:\n{out}")
    out = env.tool(features, "upgrade", "--feature", "group.version=2", check=False)
    expect("Could not upgrade group.version to 2" in out, f"FeatureCommand upgrade:\n{out}")
    # ClusterTool (kafka-cluster): the cluster id, the endpoints, and
    # unregister (UnregisterBroker): an unknown broker, then this one,
    # which is live.
    cluster_tool = "org.apache.kafka.tools.ClusterTool"
    out = env.java(cluster_tool, "cluster-id", "--bootstrap-server", env.bootstrap)
    expect(re.search(r"Cluster ID: \S+", out) is not None, f"ClusterTool cluster-id:\n{out}")
    out = env.java(cluster_tool, "list-endpoints", "--bootstrap-server", env.bootstrap)
    expect(re.search(r"^0\s+127\.0\.0\.1\s+\d+", out, re.M) is not None,
           f"ClusterTool list-endpoints:\n{out}")
    out = env.java(cluster_tool, "unregister", "--bootstrap-server", env.bootstrap, "--id", "77",
                   check=False)
    expect("BrokerIdNotRegisteredException" in out, f"ClusterTool unregister --id 77:\n{out[-800:]}")
    out = env.java(cluster_tool, "unregister", "--bootstrap-server", env.bootstrap, "--id", "0",
                   check=False)
    expect("is live" in out, f"ClusterTool unregister --id 0:\n{out[-800:]}")
    # Admin.unregisterController (UnregisterController): the quorum's voter
    # (node 0, as DescribeQuorum names it) stays registered; an unknown id
    # is CONTROLLER_ID_NOT_REGISTERED.
    out = env.java("UnregisterController", env.bootstrap, "4242")
    expect("ControllerIdNotRegisteredException: Controller ID 4242 is not currently registered."
           in out, f"unregisterController(4242):\n{out[-800:]}")
    out = env.java("UnregisterController", env.bootstrap, "0")
    expect("unregistered 0" in out, f"unregisterController(0):\n{out[-800:]}")
    props = env.work / "empty.properties"
    props.write_text("")
    out = env.java("org.apache.kafka.tools.DelegationTokenCommand", "--bootstrap-server", env.bootstrap,
                   "--command-config", str(props), "--describe", check=False)
    expect("UnsupportedByAuthenticationException" in out, f"DelegationTokenCommand:\n{out[-800:]}")
    # No SCRAM users and no quota for alice: nothing to show, and no error.
    out = env.tool(CONFIG, "--describe", "--entity-type", "users", "--entity-name", "alice")
    expect("Exception" not in out, f"ConfigCommand --entity-type users:\n{out}")
    def set_shown_deleted(what: str, entity: list[str], add: str, shown: list[str],
                          delete: str, kept: str) -> None:
        """ConfigCommand --alter --add-config, --describe shows `shown`;
        --delete-config `delete`: gone from --describe, `kept` still there."""
        out = env.tool(CONFIG, "--alter", *entity, "--add-config", add)
        expect(f"Completed updating config for {entity[1][:-1]} {entity[3]}" in out,
               f"{what} --alter:\n{out}")
        out = env.tool(CONFIG, "--describe", *entity)
        expect(all(x in out for x in shown), f"{what} --describe:\n{out}")
        env.tool(CONFIG, "--alter", *entity, "--delete-config", delete)
        out = env.tool(CONFIG, "--describe", *entity)
        expect(delete not in out and kept in out, f"{what} after --delete-config:\n{out}")

    # SCRAM credentials (AlterUserScramCredentials, DescribeUserScramCredentials).
    set_shown_deleted("SCRAM", ["--entity-type", "users", "--entity-name", unique("scram-user")],
                      "SCRAM-SHA-256=[iterations=8192,password=pw],SCRAM-SHA-512=[password=pw]",
                      ["SCRAM-SHA-256=iterations=8192", "SCRAM-SHA-512=iterations=4096"],
                      "SCRAM-SHA-512", "SCRAM-SHA-256=iterations=8192")
    # Client quotas (AlterClientQuotas, DescribeClientQuotas), for a client
    # id and for the default user.
    client = unique("quota-client")
    set_shown_deleted("quota", ["--entity-type", "clients", "--entity-name", client],
                      "producer_byte_rate=1048576,consumer_byte_rate=2097152",
                      ["producer_byte_rate=1048576.0", "consumer_byte_rate=2097152.0"],
                      "producer_byte_rate", "consumer_byte_rate=2097152.0")
    out = env.tool(CONFIG, "--alter", "--entity-type", "users", "--entity-default",
                   "--add-config", "request_percentage=12.5")
    out = env.tool(CONFIG, "--describe", "--entity-type", "users", "--entity-default")
    expect("request_percentage=12.5" in out, f"default user quota:\n{out}")
    out = env.tool(CONFIG, "--alter", "--entity-type", "clients", "--entity-name", client,
                   "--add-config", "producer_byte_rate=1.5", check=False)
    expect("must be a Long value" in out, f"a fractional byte rate:\n{out[-800:]}")
    for args in (["--entity-type", "clients", "--entity-name", client,
                  "--delete-config", "consumer_byte_rate"],
                 ["--entity-type", "users", "--entity-default",
                  "--delete-config", "request_percentage"]):
        env.tool(CONFIG, "--alter", *args)


TXNS = "org.apache.kafka.tools.TransactionsCommand"


def check_transactions_command(env: Env) -> None:
    t = unique("txc")
    create(env, t, 2)
    tid = unique("txc-id")
    p = Producer({"bootstrap.servers": env.bootstrap, "transactional.id": tid})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(t, value=b"x", partition=0)
    p.flush(10)
    p.commit_transaction(30)
    listed = env.tool(TXNS, "list")
    expect(re.search(rf"^{re.escape(tid)}\s+\d+\s+\d+\s+CompleteCommit", listed, re.M) is not None,
           f"list:\n{listed}")
    desc = env.tool(TXNS, "describe", "--transactional-id", tid)
    expect(re.search(rf"{re.escape(tid)}\s+\d+\s+0\s+CompleteCommit\s+60000", desc) is not None,
           f"describe:\n{desc}")
    # A hanging transaction: a producer that dies inside one. The
    # coordinator still has it open, so find-hanging must not report it;
    # abort ends it in the partition (WriteTxnMarkers to the leader).
    hang = unique("txc-hang")
    script = (
        "import os\nfrom confluent_kafka import Producer\n"
        f"p = Producer({{'bootstrap.servers': '{env.bootstrap}', 'transactional.id': '{hang}',"
        " 'transaction.timeout.ms': 600000})\n"
        "p.init_transactions(30); p.begin_transaction()\n"
        f"p.produce('{t}', value=b'hang', partition=1); p.flush(10)\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    prods = env.tool(TXNS, "describe-producers", "--topic", t, "--partition", "1")
    open_rows = [ln.split() for ln in prods.splitlines()[1:] if ln.strip() and ln.split()[-1] != "None"]
    expect(len(open_rows) == 1, f"describe-producers (one open transaction):\n{prods}")
    start = open_rows[0][-1]
    for node in (0, 1):
        out = env.tool(TXNS, "find-hanging", "--broker-id", str(node), "--max-transaction-timeout", "0")
        expect(t not in out, f"find-hanging reports a transaction its coordinator has open:\n{out}")
    env.tool(TXNS, "abort", "--topic", t, "--partition", "1", "--start-offset", start)
    prods = env.tool(TXNS, "describe-producers", "--topic", t, "--partition", "1")
    expect(all(ln.split()[-1] == "None" for ln in prods.splitlines()[1:] if ln.strip()),
           f"abort left the transaction open:\n{prods}")
    # The aborted record is invisible to read_committed; the partition is
    # not held back by it.
    vals = [v for _, v in read_topic(env, t, 2)]
    expect(vals == [b"x"], f"read_committed after abort: {vals}")


def check_verifiable_clients(env: Env) -> None:
    t, g = unique("vc"), unique("vc-group")
    create(env, t, 4)
    n = 5000 if env.quick else 50000
    out = env.tool("org.apache.kafka.tools.VerifiableProducer", "--topic", t, "--max-messages", str(n),
                   "--acks", "-1", timeout=300)
    acked = set()
    for ln in out.splitlines():
        if not ln.startswith("{"):
            continue
        ev = json.loads(ln)
        if ev.get("name") == "producer_send_success":
            acked.add(ev["value"])
    expect(len(acked) == n, f"{len(acked)} of {n} acknowledged")
    proc = subprocess.Popen(["java", *QUIET, "-cp", env.cp, "org.apache.kafka.tools.VerifiableConsumer",
                             "--bootstrap-server", env.bootstrap, "--topic", t, "--group-id", g,
                             "--reset-policy", "earliest", "--max-messages", str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        stdout, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
    # VerifiableConsumer reports counts and offsets, not values: read the
    # values back to check them.
    values = collections.Counter(v.decode() for _, v in read_topic(env, t, 4))
    dups = [v for v, c in values.items() if c > 1]
    missing = acked - set(values)
    expect(not dups, f"{len(dups)} values stored twice, e.g. {dups[:5]}")
    expect(not missing, f"{len(missing)} acknowledged values missing, e.g. {sorted(missing)[:5]}")
    total = sum(json.loads(ln).get("count", 0) for ln in stdout.splitlines()
                if ln.startswith("{") and json.loads(ln).get("name") == "records_consumed")
    expect(total >= n, f"VerifiableConsumer consumed {total} of {n}")


def check_sasl(env: Env) -> None:
    """Our broker started with SASL_PLAINTEXT listeners (PLAIN from a users
    file, SCRAM from the metadata): ConfigCommand, authenticated with PLAIN,
    gives a user SCRAM-SHA-256 and SCRAM-SHA-512 credentials (the Java
    client salts and hashes them); VerifiableProducer writes as that user
    with SCRAM-SHA-512, VerifiableConsumer reads with SCRAM-SHA-256, every
    acknowledged record once; a wrong password fails with Kafka's
    SaslAuthenticationException."""
    exe = os.environ.get("BROKER_BIN") or str(Path(__file__).resolve().parents[3]
                                               / "target/release/broker")
    d = env.work / "sasl"
    import shutil
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "users").write_text("admin:admin-pw\nbroker:broker-pw\n")
    port = free_port_pair()
    log = open(d / "broker.log", "w")
    proc = subprocess.Popen([exe, "--data-dir", str(d / "data"), "--base-port", str(port),
                             "--shards", "2", "--listen-host", "127.0.0.1",
                             "--wal-size-bytes", str(256 << 20),
                             "--sasl-enabled-mechanisms", "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
                             "--sasl-plain-users-file", str(d / "users"),
                             "--sasl-inter-broker-user", "broker"],
                            stdout=log, stderr=subprocess.STDOUT)

    def props(name: str, mechanism: str, user: str, password: str) -> str:
        module = ("plain.PlainLoginModule" if mechanism == "PLAIN"
                  else "scram.ScramLoginModule")
        f = d / f"{name}.properties"
        f.write_text("security.protocol=SASL_PLAINTEXT\n"
                     f"sasl.mechanism={mechanism}\n"
                     f"sasl.jaas.config=org.apache.kafka.common.security.{module} required "
                     f'username="{user}" password="{password}";\n')
        return str(f)

    try:
        import socket
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port + 1), timeout=0.5).close()
                break
            except OSError:
                expect(time.monotonic() < deadline and proc.poll() is None,
                       f"SASL broker did not start: {(d / 'broker.log').read_text()[-2000:]}")
                time.sleep(0.2)
        c = Env(f"127.0.0.1:{port},127.0.0.1:{port + 1}", "", "", env.work, env.quick)
        c.cp = env.cp
        admin = props("admin", "PLAIN", "admin", "admin-pw")
        c.tool(CONFIG, "--command-config", admin, "--alter", "--entity-type", "users",
               "--entity-name", "jane", "--add-config",
               "SCRAM-SHA-256=[iterations=8192,password=jane-pw],SCRAM-SHA-512=[password=jane-pw]")
        t, g = unique("sasl"), unique("sasl-group")
        c.tool(TOPIC, "--command-config", admin, "--create", "--topic", t, "--partitions", "2")
        n = 2000
        out = c.tool("org.apache.kafka.tools.VerifiableProducer", "--topic", t,
                     "--max-messages", str(n), "--acks", "-1", "--producer.config",
                     props("p", "SCRAM-SHA-512", "jane", "jane-pw"), timeout=180)
        acked = {json.loads(ln)["value"] for ln in out.splitlines() if ln.startswith("{")
                 and json.loads(ln).get("name") == "producer_send_success"}
        expect(len(acked) == n, f"{len(acked)} of {n} acknowledged with SCRAM-SHA-512")
        out = c.tool("org.apache.kafka.tools.VerifiableConsumer", "--topic", t, "--group-id", g,
                     "--reset-policy", "earliest", "--max-messages", str(n),
                     "--consumer.config", props("c", "SCRAM-SHA-256", "jane", "jane-pw"),
                     timeout=180)
        total = sum(json.loads(ln).get("count", 0) for ln in out.splitlines()
                    if ln.startswith("{") and json.loads(ln).get("name") == "records_consumed")
        expect(total == n, f"VerifiableConsumer with SCRAM-SHA-256 consumed {total} of {n}")
        out = c.tool(TOPIC, "--command-config", props("bad", "SCRAM-SHA-256", "jane", "wrong"),
                     "--list", check=False, timeout=60)
        expect("SaslAuthenticationException" in out and "invalid credentials" in out,
               f"a wrong password:\n{out[-1500:]}")
    finally:
        stop(proc, 60)
        log.close()


def check_consumer_protocol(env: Env) -> None:
    t, g = unique("kip848"), unique("kip848-group")
    create(env, t, 4)
    n = 4000
    produce_lines(env, t, [f"v{i}" for i in range(n)], partitions=4)

    procs = [subprocess.Popen(
        ["java", *QUIET, "-cp", env.cp, "org.apache.kafka.tools.VerifiableConsumer",
         "--bootstrap-server", env.bootstrap, "--topic", t, "--group-id", g,
         "--group-protocol", "consumer", "--group-remote-assignor", "uniform",
         "--reset-policy", "earliest"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    # Per member: partitions it was assigned; per partition: the highest
    # committed offset (VerifiableConsumer commits after each batch).
    assigned: list[set] = [set(), set()]
    committed: dict = {}
    lock = threading.Lock()

    def read(i: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for ln in proc.stdout:
            if not ln.startswith("{"):
                continue
            ev = json.loads(ln)
            with lock:
                if ev.get("name") == "partitions_assigned":
                    assigned[i] |= {p["partition"] for p in ev.get("partitions", [])}
                if ev.get("name") == "offsets_committed" and ev.get("success"):
                    for o in ev.get("offsets", []):
                        committed[o["partition"]] = max(committed.get(o["partition"], 0), o["offset"])

    readers = [threading.Thread(target=read, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for r in readers:
        r.start()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            with lock:
                if sum(committed.values()) >= n and all(assigned):
                    break
            time.sleep(0.2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    expect(all(assigned), f"a member was never assigned a partition: {assigned}")
    expect(sum(committed.values()) == n,
           f"committed offsets {committed} add up to {sum(committed.values())}, not {n}")
    listed = env.tool(GROUPS, "--list", "--type")
    row = [ln.split() for ln in listed.splitlines() if ln.startswith(g)]
    expect(row and row[0][-1].lower() == "consumer", f"--list --type:\n{listed}")
    desc = env.tool(GROUPS, "--describe", "--group", g)
    rows = [ln.split() for ln in desc.splitlines() if ln.startswith(g)]
    expect(len(rows) == 4 and all(r[3] == str(n // 4) and r[5] == "0" for r in rows),
           f"--describe (each of 4 partitions at offset {n // 4}, lag 0):\n{desc}")


SHARE_GROUPS = "org.apache.kafka.tools.consumer.group.ShareGroupCommand"


def share_consumers(env: Env, t: str, g: str, n: int, pattern: str, want_acks: int,
                    timeout_s: float = 120) -> dict:
    """Runs `n` VerifiableShareConsumers until their acknowledgements add up
    to `want_acks`; returns how often each (partition, offset) was
    acknowledged."""
    procs = [subprocess.Popen(
        ["java", *QUIET, "-cp", env.cp, "org.apache.kafka.tools.VerifiableShareConsumer",
         "--bootstrap-server", env.bootstrap, "--topic", t, "--group-id", g,
         "--offset-reset-strategy", "earliest", "--acknowledgement-mode", "sync",
         "--ack-pattern", pattern],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(n)]
    acked: collections.Counter = collections.Counter()
    failures: list = []
    lock = threading.Lock()

    def read(proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for ln in proc.stdout:
            if not ln.startswith("{"):
                continue
            ev = json.loads(ln)
            if ev.get("name") != "offsets_acknowledged":
                continue
            with lock:
                if not ev.get("success"):
                    failures.append(ev)
                for p in ev.get("partitions", []):
                    for o in p["offsets"]:
                        acked[(p["partition"], o)] += 1

    readers = [threading.Thread(target=read, args=(p,), daemon=True) for p in procs]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with lock:
                if sum(acked.values()) >= want_acks:
                    break
            time.sleep(0.2)
        time.sleep(1)  # anything beyond the expected count shows up too
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    expect(not failures, f"failed acknowledgements: {failures[:2]}")
    return dict(acked)


def check_share_groups(env: Env) -> None:
    t, g = unique("share"), unique("share-group")
    per_partition = 200 if env.quick else 1000
    create(env, t, 2)
    produce_lines(env, t, [f"v{i}" for i in range(2 * per_partition)], partitions=2)
    # By offset % 5: 0-2 accepted, 3 released (back until the delivery
    # limit of 5, then archived), 4 rejected.
    kinds = {(p, o): "accept" if o % 5 < 3 else "release" if o % 5 == 3 else "reject"
             for p in range(2) for o in range(per_partition)}
    times = {"accept": 1, "release": 5, "reject": 1}
    want = sum(times[k] for k in kinds.values())
    # A group config, set with ConfigCommand before the group exists.
    base = ["--entity-type", "groups", "--entity-name", g]
    env.tool(CONFIG, *base, "--alter", "--add-config", "share.record.lock.duration.ms=20000")
    desc = env.tool(CONFIG, *base, "--describe")
    expect("share.record.lock.duration.ms=20000" in desc, f"ConfigCommand groups --describe:\n{desc}")
    acked = share_consumers(env, t, g, 2, "accept,accept,accept,release,reject", want)
    wrong = {k: (kind, acked.get(k, 0)) for k, kind in kinds.items() if acked.get(k, 0) != times[kind]}
    expect(not wrong, f"{len(wrong)} records acknowledged a wrong number of times, e.g. "
           f"{sorted(wrong.items())[:5]} (of {sum(acked.values())} acknowledgements, want {want})")
    expect(g in env.tool(SHARE_GROUPS, "--list").split(), "--list does not show the share group")
    deadline = time.monotonic() + 30
    while True:
        state = env.tool(SHARE_GROUPS, "--describe", "--group", g, "--state")
        if re.search(rf"^{g}\s+\S+\s+\(\d+\)\s+Empty\s+0\b", state, re.M) or time.monotonic() > deadline:
            break
        time.sleep(1)
    expect(re.search(rf"^{g}\s+\S+\s+\(\d+\)\s+Empty\s+0\b", state, re.M) is not None,
           f"--describe --state (Empty, 0 members, once the consumers left):\n{state}")
    offsets = env.tool(SHARE_GROUPS, "--describe", "--group", g, "--offsets")
    rows = sorted(ln.split()[2:5] for ln in offsets.splitlines() if ln.startswith(g))
    expect(rows == [["0", str(per_partition), "0"], ["1", str(per_partition), "0"]],
           f"--describe --offsets (every partition done: start offset {per_partition}, "
           f"lag 0):\n{offsets}")
    out = env.tool(SHARE_GROUPS, "--reset-offsets", "--group", g, "--topic", t, "--to-earliest", "--execute")
    expect(len(re.findall(rf"{t}\s+\d\s+0\b", out)) == 2, f"--reset-offsets --to-earliest:\n{out}")
    offsets = env.tool(SHARE_GROUPS, "--describe", "--group", g, "--offsets")
    rows = sorted(ln.split()[2:5] for ln in offsets.splitlines() if ln.startswith(g))
    expect(rows == [["0", "0", str(per_partition)], ["1", "0", str(per_partition)]],
           f"--describe --offsets after the reset (start 0, lag {per_partition}):\n{offsets}")
    # From the start again: every record, once.
    again = share_consumers(env, t, g, 1, "accept", 2 * per_partition)
    expect(sorted(again) == sorted(kinds) and set(again.values()) == {1},
           f"after the reset: {len(again)} of {len(kinds)} records, counts {set(again.values())}")
    out = env.tool(SHARE_GROUPS, "--delete-offsets", "--group", g, "--topic", t)
    expect(re.search(rf"{t}\s+Successful", out) is not None, f"--delete-offsets:\n{out}")
    out = env.tool(SHARE_GROUPS, "--delete", "--group", g)
    expect("successful" in out.lower(), f"--delete:\n{out}")
    env.tool(CONFIG, *base, "--alter", "--delete-config", "share.record.lock.duration.ms")
    desc = env.tool(CONFIG, *base, "--describe")
    expect("share.record.lock.duration.ms" not in desc, f"--delete-config not seen:\n{desc}")
    expect(g not in env.tool(SHARE_GROUPS, "--list").split(), "deleted share group still listed")


def check_transactional_copier(env: Env) -> None:
    src, dst = unique("tmc-in"), unique("tmc-out")
    parts = 2 if env.quick else 4
    create(env, src, parts)
    create(env, dst, parts)
    n = 2000 if env.quick else 20000
    values = [str(i) for i in range(n)]
    produce_lines(env, src, values, partitions=parts)
    procs = []
    for p in range(parts):
        procs.append(subprocess.Popen(
            ["java", *QUIET, "-cp", env.cp, "org.apache.kafka.tools.TransactionalMessageCopier",
             "--broker-list", env.bootstrap, "--input-topic", src, "--input-partition", str(p),
             "--output-topic", dst, "--transactional-id", f"{dst}-{p}", "--consumer-group", f"{dst}-g",
             "--transaction-size", "100", "--enable-random-aborts", "--use-group-metadata"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise CheckFailed("TransactionalMessageCopier timed out")
        expect(proc.returncode == 0, f"copier exited {proc.returncode}:\n{out[-1500:]}")
    # The broker finalizes transaction.version 2, so the Java client uses
    # transactions v2: every end bumps the producer epoch, and each copier's
    # epoch counts at least its committed transactions (under v1 it would
    # stay at 0).
    per_copier = n // parts // 100
    for p in range(parts):
        tid = f"{dst}-{p}"
        desc = env.tool(TXNS, "describe", "--transactional-id", tid)
        m = re.search(rf"{re.escape(tid)}\s+\d+\s+(\d+)\s+Complete", desc)
        expect(m is not None and int(m.group(1)) >= per_copier,
               f"describe (v2 bumps the epoch at every end, {per_copier}+ ends):\n{desc}")
    committed = collections.Counter(v.decode() for _, v in read_topic(env, dst, parts))
    dups = [v for v, c in committed.items() if c > 1]
    expect(not dups, f"{len(dups)} records copied twice, e.g. {dups[:5]}")
    expect(set(committed) == set(values), f"output has {len(committed)} of {n} input records")
    everything = read_topic(env, dst, parts, isolation="read_uncommitted")
    expect(len(everything) >= n, "read_uncommitted sees fewer records than read_committed")


def check_streams_eos(env: Env) -> None:
    src, dst, app = unique("wc-in"), unique("wc-out"), unique("wc-app")
    create(env, src, 4)
    create(env, dst, 4)
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    n = 1000 if env.quick else 10000
    lines = [" ".join(rng.choice(words) for _ in range(6)) for _ in range(n)]
    want = collections.Counter(w for ln in lines for w in ln.split())
    produce_lines(env, src, lines)
    state = env.work / f"streams-{app}"
    out = env.java("WordCount", env.bootstrap, app, src, dst, "15", str(state), timeout=600,
                   check=False)
    expect("final state RUNNING" in out, f"streams app did not run cleanly:\n{out[-2000:]}")
    latest = {}
    records = read_topic(env, dst, 4)
    for k, v in records:
        latest[k.decode()] = int.from_bytes(v, "big", signed=True)
    expect(latest == dict(want), f"counts {latest} != {dict(want)}")
    # Exactly once: per word the counts in the output rise by one per record.
    per_word = collections.defaultdict(list)
    for k, v in records:
        per_word[k.decode()].append(int.from_bytes(v, "big", signed=True))
    for w, counts in per_word.items():
        expect(counts == list(range(1, want[w] + 1)), f"{w}: counts not 1..{want[w]} once each")


STREAMS_GROUPS = "org.apache.kafka.tools.streams.StreamsGroupCommand"


def check_streams_protocol(env: Env) -> None:
    """Kafka Streams with group.protocol=streams (KIP-1071): the broker
    keeps the topology, creates the internal topics and assigns the tasks.
    Two instances (two threads and one) share the exactly-once word count;
    the second joins while the first runs, so tasks are revoked and handed
    over mid-stream. Then StreamsGroupCommand lists, describes, resets and
    deletes the group."""
    src, dst, app = unique("sp-in"), unique("sp-out"), unique("sp-app")
    create(env, src, 4)
    create(env, dst, 4)
    rng = random.Random(11)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]
    n = 2000 if env.quick else 20000
    lines = [" ".join(rng.choice(words) for _ in range(5)) for _ in range(n)]
    want = collections.Counter(w for ln in lines for w in ln.split())
    produce_lines(env, src, lines[: n // 2])
    logs = {name: env.work / f"{app}-{name}.log" for name in ("a", "b")}

    def start(name: str, threads: int) -> subprocess.Popen:
        with open(logs[name], "w") as log:
            return subprocess.Popen(
                ["java", *QUIET, "-cp", env.cp, "WordCount", env.bootstrap, app, src, dst, "15",
                 str(env.work / f"streams-{app}-{name}"), "streams", str(threads)],
                stdout=log, stderr=subprocess.STDOUT)

    def running(name: str) -> bool:
        return "REBALANCING -> RUNNING" in logs[name].read_text()

    def members() -> list[list[str]]:
        out = env.tool(STREAMS_GROUPS, "--describe", "--group", app, "--members", check=False)
        return [ln.split() for ln in out.splitlines() if ln.startswith(app)]

    def has_tasks(row: list[str]) -> bool:
        return re.search(r"ACTIVE: \d+:\[", " ".join(row)) is not None

    procs = [start("a", 2)]
    try:
        deadline = time.monotonic() + 120
        while not running("a"):
            expect(time.monotonic() < deadline and procs[0].poll() is None,
                   f"instance a never ran:\n{logs['a'].read_text()[-2000:]}")
            time.sleep(0.5)
        procs.append(start("b", 1))
        # Both processes, three members (stream threads), each with tasks.
        deadline = time.monotonic() + 120
        rows: list[list[str]] = []
        while time.monotonic() < deadline:
            rows = members()
            if len(rows) == 3 and running("b") and all(has_tasks(r) for r in rows):
                break
            time.sleep(1)
        # Instance a held all 8 tasks before b joined: b's now came from a.
        expect(len(rows) == 3 and all(has_tasks(r) for r in rows) and len({r[2] for r in rows}) == 2,
               f"--describe --members while both run (3 members of 2 processes, each with "
               f"active tasks): {rows}")
        state = env.tool(STREAMS_GROUPS, "--describe", "--group", app, "--state")
        expect(re.search(rf"^{re.escape(app)}\s.*\b(Stable|Reconciling)\b", state, re.M) is not None,
               f"--describe --state while both run:\n{state}")
        produce_lines(env, src, lines[n // 2:])
        for p in procs:
            p.wait(300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for name in ("a", "b"):
        out = logs[name].read_text()
        expect("final state RUNNING" in out, f"instance {name} did not run cleanly:\n{out[-2000:]}")
    records = read_topic(env, dst, 4)
    per_word = collections.defaultdict(list)
    for k, v in records:
        per_word[k.decode()].append(int.from_bytes(v, "big", signed=True))
    latest = {w: c[-1] for w, c in per_word.items()}
    expect(latest == dict(want), f"counts {latest} != {dict(want)}")
    for w, counts in per_word.items():
        expect(counts == list(range(1, want[w] + 1)), f"{w}: counts not 1..{want[w]} once each")
    # The group, now empty, as Kafka's tool sees it.
    expect(app in env.tool(STREAMS_GROUPS, "--list").split(), "--list lacks the group")
    state = env.tool(STREAMS_GROUPS, "--describe", "--group", app, "--state")
    expect(re.search(rf"^{re.escape(app)}\s.*\bsticky\s+Empty\b", state, re.M) is not None,
           f"--describe --state after both left:\n{state}")
    reset = env.tool(STREAMS_GROUPS, "--reset-offsets", "--group", app, "--all-input-topics",
                     "--to-earliest", "--execute")
    rows = [ln.split() for ln in reset.splitlines() if ln.startswith(app)]
    expect(sorted((r[1], r[2], r[3]) for r in rows) == [(src, str(p), "0") for p in range(4)],
           f"--reset-offsets --to-earliest:\n{reset}")
    env.tool(STREAMS_GROUPS, "--delete", "--group", app)
    expect(app not in env.tool(STREAMS_GROUPS, "--list").split(), "--delete left the group listed")

CHECKS = {
    "topic-command": check_topic_command,
    "config-command": check_config_command,
    "consumer-group-command": check_consumer_group_command,
    "get-offsets": check_get_offsets,
    "reassign-partitions": check_reassign_partitions,
    "leader-epochs": check_leader_epochs,
    "cluster-reassign": check_cluster_reassign,
    "api-versions": check_api_versions_vs_kafka,
    "admin-commands": check_admin_commands,
    "transactions-command": check_transactions_command,
    "verifiable-clients": check_verifiable_clients,
    "consumer-protocol": check_consumer_protocol,
    "share-groups": check_share_groups,
    "transactional-copier": check_transactional_copier,
    "streams-eos": check_streams_eos,
    "streams-protocol": check_streams_protocol,
    "sasl": check_sasl,
}
QUICK = ["topic-command", "admin-commands", "transactions-command", "transactional-copier",
         "streams-eos", "cluster-reassign", "api-versions", "leader-epochs", "sasl",
         "share-groups", "streams-protocol"]


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    bootstrap, lib, classes, work = args[:4]
    only = args[4:]
    env = Env(bootstrap, lib, classes, Path(work), quick)
    names = only or (QUICK if quick else list(CHECKS))
    passed, failed = [], []
    for name in names:
        t0 = time.monotonic()
        try:
            CHECKS[name](env)
            passed.append(name)
            print(f"PASS {name} ({time.monotonic() - t0:.0f}s)", flush=True)
        except CheckFailed as e:
            failed.append(name)
            print(f"FAIL {name} ({time.monotonic() - t0:.0f}s): {e}", flush=True)
    skipped = len(CHECKS) - len(names)
    print(f"java: {len(passed)} passed, {len(failed)} failed, {skipped} skipped")
    if failed:
        print(f"  failing: {' '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
