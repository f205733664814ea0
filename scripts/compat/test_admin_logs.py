"""Logs an operator can ship and search: `--log-format json` writes one JSON
object per line, and a request slower than `--slow-request-ms` gets a warn
line with its API, client and duration as fields, and is counted in
`broker_slow_requests_total`.
"""
from __future__ import annotations

import json
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from test_admin_http import scrape, total

# 1 ms: a produce of a few MB (CRC checks, a WAL write and its flush) takes
# longer than that here; the test produces until one does.
BROKER_PARAMS = {"shards": 2, "args": ["--log-format", "json", "--slow-request-ms", "1"]}


def test_json_logs_and_slow_request_lines(broker):
    topic = f"slow-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    p = Producer({"bootstrap.servers": broker.bootstrap, "client.id": "slow-probe",
                  "linger.ms": 20, "message.max.bytes": 2_000_000})

    def slow_produce_logged() -> bool:
        return any('"slow request"' in line and '"Produce"' in line and "slow-probe" in line
                   for line in broker.log_text().splitlines())

    deadline = time.monotonic() + 30
    while not slow_produce_logged():
        assert time.monotonic() < deadline, "no produce was ever slower than 1 ms"
        for i in range(8):
            p.produce(topic, value=bytes(900_000), partition=i % 2)
        assert p.flush(30) == 0

    # Lines starting with ### are the test harness's own notes.
    lines = [line for line in broker.log_text().splitlines()
             if line.strip() and not line.startswith("###")]
    assert len(lines) > 5
    parsed = []
    for line in lines:
        obj = json.loads(line)  # every line is one JSON object
        assert {"timestamp", "level", "fields"} <= obj.keys(), line
        parsed.append(obj)
    assert any(o["fields"].get("message", "").startswith("WAL slice recovered")
               and "shard" in o["fields"] for o in parsed)
    slow = [o for o in parsed if o["fields"].get("message") == "slow request"]
    assert slow, "no slow-request line"
    assert all(o["level"] == "WARN" for o in slow)
    assert any(o["fields"]["api"] == "Produce" and o["fields"]["client_id"] == "slow-probe"
               for o in slow), slow
    for o in slow:
        f = o["fields"]
        assert f["took_ms"] >= 1 and "correlation_id" in f and "shard" in f and "client_id" in f
    assert total(scrape(broker), "broker_slow_requests_total") >= len(slow)
