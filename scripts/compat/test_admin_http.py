"""The admin HTTP endpoint: /metrics, /health, /ready and the JSON API.

* /metrics is scraped while a confluent-kafka producer and consumer run; it
  parses with the `prometheus-client` package's OpenMetrics parser, its
  counters move by what the clients did (records in, exactly), and its
  histograms have samples.
* Error codes are counted by API and Kafka error name.
* The JSON API agrees with what Kafka clients see (watermarks, committed
  offsets, lag, leaders), and a partition moved through it is led by the
  new node in a client's metadata.
* Every operation of docs/admin-api.yaml (but the drain, which stops the
  broker) is called by schemathesis, and every answer matches the schema
  (`--checks all`).
* Every metric the Grafana dashboard (docs/grafana/broker-dashboard.json)
  names is exposed by /metrics.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.openmetrics.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "grafana" / "broker-dashboard.json"
OPENAPI = REPO / "docs" / "admin-api.yaml"


def http(broker, method: str, path: str, body: dict | bytes | None = None):
    """(status, headers, body bytes) of one request to the admin API."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(broker.admin_url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get_json(broker, path: str, expect: int = 200):
    status, _, body = http(broker, "GET", path)
    assert status == expect, f"GET {path}: {status} {body[:300]!r}"
    return json.loads(body)


def scrape(broker) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, parsed with the OpenMetrics parser."""
    status, headers, body = http(broker, "GET", "/metrics")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("application/openmetrics-text")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def names(samples) -> set[str]:
    return {n for n, _ in samples}


def make_topic(broker, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def run_clients(broker, topic: str, group: str, records: int, size: int = 200):
    """Produces `records` records while a group consumer reads and commits
    them; returns what the consumer read and a scrape taken mid-run."""
    consumed = []
    mid_scrape = {}
    done = threading.Event()

    def consume():
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(consumed) < records and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                consumed.append((m.partition(), m.offset()))
                if len(consumed) % 500 == 0:
                    c.commit(asynchronous=False)
        if len(consumed) % 500:
            c.commit(asynchronous=False)  # the rest (none stored otherwise)
        c.close()
        done.set()

    t = threading.Thread(target=consume)
    t.start()
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(records):
        p.produce(topic, value=b"v" * size, key=str(i).encode())
        if i == records // 2:
            p.flush(30)
            mid_scrape.update(scrape(broker))
        p.poll(0)
    assert p.flush(30) == 0
    t.join(90)
    assert done.is_set()
    return consumed, mid_scrape


def test_health_and_ready(broker):
    assert get_json(broker, "/health") == {"status": "ok"}
    assert get_json(broker, "/ready") == {"ready": True, "waiting": []}
    status, headers, _ = http(broker, "POST", "/health", b"")
    assert status == 405 and headers.get("Allow") == "GET"
    status, _, body = http(broker, "GET", "/nope")
    assert status == 404 and json.loads(body)["error"] == "NOT_FOUND"


def test_metrics_move_while_clients_run(broker):
    topic, group = f"metrics-{uuid.uuid4().hex[:6]}", f"metrics-g-{uuid.uuid4().hex[:6]}"
    make_topic(broker, topic, 2)
    before = scrape(broker)
    records, size = 3000, 200
    consumed, mid = run_clients(broker, topic, group, records, size)
    assert len(consumed) == records
    after = scrape(broker)

    # Mid-run the clients were connected and the topic had data.
    assert total(mid, "broker_connections") >= 2
    assert total(mid, "broker_partition_records_in_total", topic=topic) >= records // 2

    # Counters moved by exactly what the producer had acknowledged.
    assert total(after, "broker_partition_records_in_total", topic=topic) == records
    assert total(after, "broker_partition_records_out_total", topic=topic) >= records
    assert total(after, "broker_partition_bytes_in_total", topic=topic) >= records * size
    assert (total(after, "broker_records_in_total") - total(before, "broker_records_in_total")
            >= records)
    assert (total(after, "broker_bytes_out_total") - total(before, "broker_bytes_out_total")
            >= records * size)
    for api in ("Produce", "Fetch", "JoinGroup", "SyncGroup", "OffsetCommit"):
        grew = (total(after, "broker_kafka_requests_total", api=api)
                - total(before, "broker_kafka_requests_total", api=api))
        assert grew > 0, f"no {api} request counted"
    assert total(after, "broker_connections_accepted_total") > total(before, "broker_connections_accepted_total")

    # Histograms have samples, and their buckets add up to their count.
    for name, labels in [("broker_kafka_request_duration_seconds", {"api": "Produce"}),
                         ("broker_kafka_request_duration_seconds", {"api": "Fetch"}),
                         # (no flush histogram: wal_dsync, the default,
                         # acknowledges O_DSYNC writes without fdatasync)
                         ("broker_wal_append_duration_seconds", {})]:
        count = total(after, name + "_count", **labels)
        assert count > total(before, name + "_count", **labels), f"{name} {labels} has no new samples"
        assert total(after, name + "_bucket", le="+Inf", **labels) == count
        assert total(after, name + "_sum", **labels) > 0
    assert total(after, "broker_wal_flushes_total") > total(before, "broker_wal_flushes_total")

    # Lag: the group committed everything it read, which is everything.
    hw = total(after, "broker_partition_high_watermark", topic=topic)
    assert hw == records
    assert total(after, "broker_consumer_lag", group=group, topic=topic) == 0
    assert total(after, "broker_groups", type="classic") >= 1
    assert total(after, "broker_group_rebalances_total", group=group) >= 1

    # Metadata: one controller that leads, and every shard's image is current.
    assert total(after, "broker_controller_leader") == 0
    assert total(after, "broker_controller_term") >= 1
    applied = total(after, "broker_controller_last_applied_index")
    versions = [v for (n, _), v in after.items() if n == "broker_metadata_version"]
    assert len(versions) == broker.shards and all(0 < v <= applied for v in versions)


def test_lag_is_what_the_group_has_not_read(broker):
    topic, group = f"lag-{uuid.uuid4().hex[:6]}", f"lag-g-{uuid.uuid4().hex[:6]}"
    make_topic(broker, topic, 1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(100):
        p.produce(topic, value=b"x", partition=0)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 37)], asynchronous=False)
    c.close()
    samples = scrape(broker)
    assert total(samples, "broker_consumer_lag", group=group, topic=topic, partition="0") == 63
    g = get_json(broker, f"/v1/groups/{group}")
    assert g["offsets"] == [{"topic": topic, "partition": 0, "committed_offset": 37,
                             "high_watermark": 100, "lag": 63}]
    assert g["total_lag"] == 63 and g["state"] == "Empty" and g["members"] == 0
    assert any(x["group_id"] == group for x in get_json(broker, "/v1/groups"))


def test_errors_are_counted_by_api_and_error_name(broker):
    topic = f"err-{uuid.uuid4().hex[:6]}"
    make_topic(broker, topic, 1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    p.produce(topic, value=b"x")
    assert p.flush(30) == 0
    before = scrape(broker)
    # A fetch far past the end: OFFSET_OUT_OF_RANGE, then the client resets.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "err-g",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 1_000_000)])
    got = None
    deadline = time.monotonic() + 20
    while got is None and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got = m.offset()
    c.close()
    assert got == 0
    after = scrape(broker)
    label = dict(api="Fetch", error="OFFSET_OUT_OF_RANGE")
    assert total(after, "broker_kafka_errors_total", **label) > total(before, "broker_kafka_errors_total", **label)


def test_json_api_agrees_with_kafka_clients(broker):
    topic = f"api-{uuid.uuid4().hex[:6]}"
    make_topic(broker, topic, 3)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(90):
        p.produce(topic, value=b"y" * 10, partition=i % 3)
    assert p.flush(30) == 0
    cluster = get_json(broker, "/v1/cluster")
    assert cluster["shards"] == broker.shards
    assert {n["node_id"]: (n["host"], n["port"]) for n in cluster["nodes"]} == broker.expected_nodes
    assert all(n["serving"] for n in cluster["nodes"])
    assert cluster["controller"]["leader"] == 0
    assert get_json(broker, "/v1/nodes") == cluster["nodes"]
    listed = {t["name"]: t for t in get_json(broker, "/v1/topics")}
    assert listed[topic]["partitions"] == 3 and not listed[topic]["internal"]
    assert listed["__consumer_offsets"]["internal"]

    t = get_json(broker, f"/v1/topics/{topic}")
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(topic, timeout=10)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "api-check"})
    for part in t["partitions"]:
        i = part["partition"]
        low, high = c.get_watermark_offsets(TopicPartition(topic, i), timeout=10)
        assert (part["log_start_offset"], part["high_watermark"]) == (low, high) == (0, 30)
        assert part["leader"] == md.topics[topic].partitions[i].leader
        assert part["records_in"] == 30 and part["state"] == "leading"
        assert part["cached_bytes"] + part["object_bytes"] > 0
    c.close()
    status, _, body = http(broker, "GET", "/v1/topics/no-such-topic")
    assert status == 404 and json.loads(body)["error"] == "UNKNOWN_TOPIC_OR_PARTITION"
    status, _, body = http(broker, "GET", "/v1/groups/no-such-group")
    assert status == 404 and json.loads(body)["error"] == "GROUP_ID_NOT_FOUND"


def test_partition_moves_through_the_admin_api(broker):
    topic = f"move-{uuid.uuid4().hex[:6]}"
    make_topic(broker, topic, 1)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    target = next(n for n in broker.expected_nodes if n != leader)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for _ in range(10):
        p.produce(topic, value=b"before", partition=0)
    assert p.flush(30) == 0

    status, _, body = http(broker, "POST", "/v1/reassignments",
                           {"topic": topic, "partition": 0, "node_id": target})
    assert status == 200, body
    moved = json.loads(body)
    assert moved["leader"] == target and moved["topic"] == topic
    assert admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader == target
    assert get_json(broker, f"/v1/topics/{topic}")["partitions"][0]["leader"] == target
    assert get_json(broker, "/v1/reassignments") == []
    for _ in range(10):
        p.produce(topic, value=b"after", partition=0)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "move-check"})
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 20)
    c.close()

    status, _, body = http(broker, "DELETE", f"/v1/reassignments/{topic}/0")
    assert status == 404 and json.loads(body)["error"] == "NO_REASSIGNMENT_IN_PROGRESS"
    status, _, body = http(broker, "POST", "/v1/reassignments",
                           {"topic": topic, "partition": 0, "node_id": 4242})
    assert status == 400 and json.loads(body)["error"] == "INVALID_REPLICA_ASSIGNMENT"
    status, _, body = http(broker, "POST", "/v1/reassignments", b"{not json")
    assert status == 400 and json.loads(body)["error"] == "INVALID_REQUEST"
    status, _, body = http(broker, "POST", "/v1/reassignments", b"x" * (1 << 20))
    assert status in (400, 413)


def test_every_documented_operation_matches_the_openapi_schema(broker, tmp_path):
    # All but POST /v1/drain, which stops the broker (test_cluster.py calls it).
    ops = sum(1 for line in OPENAPI.read_text().splitlines()
              if re.match(r"^    (get|post|put|delete|patch):", line)) - 1
    out = subprocess.run(
        ["schemathesis", "run", f"{broker.admin_url}/openapi.yaml", "--checks", "all",
         "--max-examples", "20", "--seed", "1", "--request-timeout", "30",
         "--exclude-operation-id", "drain"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its cache dir goes there
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    m = re.search(r"Tested:\s+(\d+)", text)
    assert m and int(m.group(1)) == ops, text[-2000:]
    # The spec served is the one in the repository.
    status, _, body = http(broker, "GET", "/openapi.yaml")
    assert status == 200 and body.decode() == OPENAPI.read_text()


def test_dashboard_names_only_exposed_metrics(broker):
    # Enough activity that every family has samples (a group with a lag).
    topic, group = f"dash-{uuid.uuid4().hex[:6]}", f"dash-g-{uuid.uuid4().hex[:6]}"
    make_topic(broker, topic, 1)
    run_clients(broker, topic, group, 200)
    exposed = names(scrape(broker))
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dash["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 30
    missing = set()
    for e in exprs:
        for name in re.findall(r"\bbroker_[a-z0-9_]+", e):
            if name not in exposed:
                missing.add(name)
    assert not missing, f"dashboard names metrics /metrics does not expose: {sorted(missing)}"
