"""Client quotas: AlterClientQuotas and DescribeClientQuotas v1 (raw,
flexible: neither confluent-kafka nor kafka-python has these calls; the
Java ConfigCommand runs them in scripts/conformance), kept across a
kill -9 and restart, and producer_byte_rate / consumer_byte_rate enforced on a real
confluent-kafka producer and consumer: a client over its quota is held to
it (throttle_time_ms and a muted connection), others are not. A throttled
Fetch is answered without records, as Kafka answers it.
"""
from __future__ import annotations

import json
import time
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer

import kwire
from kwire import ALTER_CLIENT_QUOTAS, DESCRIBE_CLIENT_QUOTAS, Conn, Writer
from test_idempotence import create_topic

BROKER_PARAMS = {"shards": 1, "broker_id": 0}

INVALID_REQUEST = 42


def _conn(broker) -> Conn:
    host, port = broker.bootstrap.split(",")[0].split(":")
    return Conn(host, int(port))


def alter(broker, entity: list[tuple[str, str | None]], ops: list[tuple[str, float | None]],
          validate_only: bool = False, conn: Conn | None = None) -> tuple[int, str | None]:
    """One entry; op value None removes the key. Returns (error, message).
    `conn`: a connection to use (an authenticated one), else a new one."""
    w = Writer().array_len(1, compact=True).array_len(len(entity), compact=True)
    for t, n in entity:
        w.string(t, compact=True).string(n, compact=True).tags(True)
    w.array_len(len(ops), compact=True)
    for key, value in ops:
        w.string(key, compact=True).float64(value or 0.0).bool(value is None).tags(True)
    body = w.tags(True).bool(validate_only).tags(True).getvalue()
    if conn is not None:
        r = conn.request(ALTER_CLIENT_QUOTAS, 1, body)
    else:
        with _conn(broker) as c:
            r = c.request(ALTER_CLIENT_QUOTAS, 1, body)
    r.int32()  # throttle
    assert r.array_len(compact=True) == 1
    code = r.int16()
    message = r.string(compact=True)
    return code, message


def describe(broker, components: list[tuple[str, int, str | None]], strict: bool = False):
    """Returns {((type, name), ...): {key: value}}."""
    w = Writer().array_len(len(components), compact=True)
    for t, match_type, match in components:
        w.string(t, compact=True).int8(match_type).string(match, compact=True).tags(True)
    body = w.bool(strict).tags(True).getvalue()
    with _conn(broker) as c:
        r = c.request(DESCRIBE_CLIENT_QUOTAS, 1, body)
    r.int32()
    code = r.int16()
    message = r.string(compact=True)
    assert code == 0, (code, message)
    out = {}
    for _ in range(r.array_len(compact=True)):
        entity = []
        for _ in range(r.array_len(compact=True)):
            entity.append((r.string(compact=True), r.string(compact=True)))
            r.skip_tags(True)
        values = {}
        for _ in range(r.array_len(compact=True)):
            k = r.string(compact=True)
            values[k] = r.float64()
            r.skip_tags(True)
        r.skip_tags(True)
        out[tuple(sorted(entity))] = values
    return out


def test_alter_describe_and_restart(broker):
    assert alter(broker, [("client-id", "app-a")], [("producer_byte_rate", 1024.0)]) == (0, None)
    assert alter(broker, [("user", None), ("client-id", None)],
                 [("consumer_byte_rate", 2048.0), ("request_percentage", 12.5)]) == (0, None)
    # Checked as Kafka checks them; a validate_only alteration stores nothing.
    code, msg = alter(broker, [("client-id", "app-a")], [("producer_byte_rate", 1.5)])
    assert (code, msg) == (INVALID_REQUEST, "Configuration producer_byte_rate must be a Long value")
    code, msg = alter(broker, [("group", "g")], [("producer_byte_rate", 1.0)])
    assert (code, msg) == (INVALID_REQUEST, "Unhandled client quota entity type: group")
    code, msg = alter(broker, [("ip", "10.0.0.1")], [("producer_byte_rate", 1.0)])
    assert (code, msg) == (INVALID_REQUEST, "Invalid configuration key producer_byte_rate")
    assert alter(broker, [("client-id", "dry")], [("producer_byte_rate", 5.0)],
                 validate_only=True) == (0, None)

    want = {
        (("client-id", "app-a"),): {"producer_byte_rate": 1024.0},
        (("client-id", None), ("user", None)): {"consumer_byte_rate": 2048.0,
                                                "request_percentage": 12.5},
    }
    assert describe(broker, []) == want
    assert describe(broker, [("client-id", 0, "app-a")]) == {
        (("client-id", "app-a"),): {"producer_byte_rate": 1024.0}}
    assert describe(broker, [("user", 1, None)], strict=True) == {}
    assert describe(broker, [("user", 1, None)]) == {
        (("client-id", None), ("user", None)): want[(("client-id", None), ("user", None))]}

    broker.kill9()
    broker.restart()
    assert describe(broker, []) == want
    # Removing every key removes the entity.
    assert alter(broker, [("client-id", "app-a")], [("producer_byte_rate", None)]) == (0, None)
    assert alter(broker, [("user", None), ("client-id", None)],
                 [("consumer_byte_rate", None), ("request_percentage", None)]) == (0, None)
    assert describe(broker, []) == {}


def _produce(broker, topic: str, client_id: str, total: int,
             conf: dict | None = None) -> tuple[float, int]:
    """Sends `total` bytes in 10 KB records; returns (seconds, max throttle
    ms). `conf`: more client settings (SASL ones, say)."""
    throttles = []
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "client.id": client_id, "linger.ms": 5, "batch.size": 64 * 1024,
                  "statistics.interval.ms": 500,
                  "stats_cb": lambda s: throttles.append(s), **(conf or {})})
    value = b"q" * 10_000
    started = time.monotonic()
    for _ in range(total // len(value)):
        while True:
            try:
                p.produce(topic, value=value, partition=0)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0
    took = time.monotonic() - started
    p.poll(1)
    worst = 0
    for s in throttles:
        for b in json.loads(s).get("brokers", {}).values():
            worst = max(worst, b.get("throttle", {}).get("max", 0))
    return took, worst


def test_producer_byte_rate_is_enforced(broker, figures):
    topic = f"quota-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, 1)
    bound = 300_000
    assert alter(broker, [("client-id", "slow-producer")],
                 [("producer_byte_rate", float(bound))]) == (0, None)
    total = 6_000_000
    fast, fast_throttle = _produce(broker, topic, "fast-producer", total)
    slow, slow_throttle = _produce(broker, topic, "slow-producer", total)
    # Kafka's rate is bytes over at least 10 of its 11 one-second windows,
    # so the first ~10 s worth of quota goes through at once: 6 MB at
    # 300 KB/s needs at least ~ (6 MB - 3 MB) / 300 KB/s = 10 s.
    assert fast < 5, f"unthrottled client took {fast:.1f} s"
    assert slow >= 8, f"throttled client took only {slow:.1f} s"
    assert slow_throttle > 0 and fast_throttle == 0, (slow_throttle, fast_throttle)
    assert _throttled(broker, "Produce") > 0
    figures.record(f"quota producer_byte_rate={bound}: 6 MB took {slow:.1f} s "
                   f"(unthrottled client {fast:.2f} s), worst throttle {slow_throttle} ms")


def test_consumer_byte_rate_is_enforced(broker, figures):
    topic = f"quota-c-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, 1)
    total = 6_000_000
    _produce(broker, topic, "loader", total)
    bound = 300_000
    assert alter(broker, [("client-id", "slow-consumer")],
                 [("consumer_byte_rate", float(bound))]) == (0, None)

    def consume(client_id: str) -> float:
        c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                      "client.id": client_id, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "fetch.max.bytes": 1 << 20, "max.partition.fetch.bytes": 1 << 20})
        c.subscribe([topic])
        got, started = 0, time.monotonic()
        while got < total and time.monotonic() - started < 120:
            m = c.poll(1)
            if m is not None and not m.error():
                got += len(m.value())
        took = time.monotonic() - started
        c.close()
        assert got >= total, f"{client_id} read {got} of {total} bytes"
        return took

    # Raw Fetch v11 as "raw-consumer", over a quota of its own: until the
    # quota is used up, records come; then the response carries a throttle
    # time and, as in Kafka, no records (its bytes do not count), and the
    # partition's high watermark is still there.
    assert alter(broker, [("client-id", "raw-consumer")],
                 [("consumer_byte_rate", float(bound))]) == (0, None)
    host, port = broker.bootstrap.split(",")[0].split(":")
    throttled = None
    with Conn(host, int(port)) as c:
        for corr in range(1, 40):
            c.send(kwire.encode_request(kwire.FETCH, 11, corr, kwire.fetch_body(11, topic, 0, 0, 0),
                                        client_id="raw-consumer"))
            r = c.recv_response(kwire.FETCH, 11, corr)
            throttle = kwire.Reader(r.data, r.pos).int32()
            part = kwire.parse_fetch(r, 11)[(topic, 0)]
            assert part.error_code == 0 and part.high_watermark > 0
            if throttle > 0:
                throttled = (corr, throttle, part.records)
                break
            assert part.records, f"fetch {corr}: no records and no throttle"
    assert throttled is not None, "raw-consumer was never throttled"
    assert throttled[2] in (b"", None), f"a throttled fetch carried {len(throttled[2])} bytes"

    fast = consume("fast-consumer")
    slow = consume("slow-consumer")
    assert fast < 8, f"unthrottled consumer took {fast:.1f} s"
    assert slow >= 8, f"throttled consumer took only {slow:.1f} s"
    assert _throttled(broker, "Fetch") > 0
    figures.record(f"quota consumer_byte_rate={bound}: 6 MB took {slow:.1f} s "
                   f"(unthrottled client {fast:.2f} s)")


def _throttled(broker, api: str) -> int:
    """broker_quota_throttled_responses_total for `api`, summed over shards."""
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("broker_quota_throttled_responses") and f'api="{api}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total
