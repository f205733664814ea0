"""Object storage on a real S3-compatible server (moto over HTTP), with the
fault proxy in front of it injecting errors, SlowDowns, latency, cut-off
bodies and applied-but-unanswered PUTs for the whole run, and an outage in
the middle of it. Producers only slow down (retriable errors, retries
allowed); nothing acknowledged is lost or duplicated, also across kill -9;
the store's stats prove the faults happened.

CI runs a small load and a short outage; `scripts/objects-check` runs the
same test with OBJECTS_S3_TOTAL_MIB=4096 and a 60 s outage.
"""
from __future__ import annotations

import os
import re
import threading
import time
import urllib.request
import uuid

import pytest

from objects_load import MIB, check_read_back, create_topic, produce, read_back
from s3_servers import CREDENTIALS, create_bucket, list_keys, start_moto, start_proxy

TOTAL = int(os.environ.get("OBJECTS_S3_TOTAL_MIB", "64")) * MIB
WAL = int(os.environ.get("OBJECTS_S3_WAL_MIB", "8")) * MIB
PARTITIONS = int(os.environ.get("OBJECTS_S3_PARTITIONS", "2"))
SHARDS = int(os.environ.get("OBJECTS_S3_SHARDS", "1"))
OUTAGE_S = float(os.environ.get("OBJECTS_S3_OUTAGE_S", "8"))
LOG_CACHE = int(os.environ.get("OBJECTS_S3_LOG_CACHE_MIB", "32")) * MIB or 1024 * MIB  # 0: the default on S3
UPLOAD = int(os.environ.get("OBJECTS_S3_UPLOAD_MIB", "1")) * MIB
VALUE = 64 << 10
FAULTS = {"error500": 0.1, "slowdown503": 0.1, "latency_prob": 0.2, "latency_ms": 20,
          "reset_body": 0.1, "drop_response": 0.1}
BUCKET = f"objects-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def s3_proxy():
    try:
        moto = start_moto()
    except RuntimeError as e:
        pytest.fail(f"cannot start moto (scripts/test installs it): {e}", pytrace=False)
    proxy = None
    try:
        create_bucket(moto.fields["url"], BUCKET)
        proxy = start_proxy(moto.fields["url"], **FAULTS)
        yield moto, proxy
    finally:
        if proxy:
            proxy.close()
        moto.close()


@pytest.fixture(scope="module")
def s3_broker_args(s3_proxy):
    _, proxy = s3_proxy
    for k, v in CREDENTIALS.items():
        os.environ.setdefault(k, v)
    return ["--objects-url", f"s3://{BUCKET}/c1", "--s3-endpoint", proxy.url,
            # Short retries keep the test quick; the defaults are 1 s and 30 s.
            "--s3-retry-base-ms", "50", "--s3-request-timeout-ms", "10000",
            "--wal-size-bytes", str(WAL), "--log-cache-bytes", str(LOG_CACHE),
            # Small objects: more requests, so random faults meet them all.
            "--upload-bytes", str(UPLOAD), "--upload-interval-ms", "500"]


BROKER_PARAMS = {"shards": SHARDS, "args_fixture": "s3_broker_args"}


def object_store_errors(broker) -> dict[str, int]:
    """`broker_object_store_errors` from /metrics, summed over shards, by
    cause."""
    out: dict[str, int] = {}
    with urllib.request.urlopen(f"{broker.admin_url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            m = re.match(r'broker_object_store_errors(?:_total)?\{.*cause="(\w+)".*\} (\S+)', line)
            if m:
                out[m[1]] = out.get(m[1], 0) + int(float(m[2]))
    return out


def test_s3_with_faults_and_an_outage_loses_nothing(s3_proxy, broker, figures):
    moto, proxy = s3_proxy
    topic = "objects-s3"
    create_topic(broker.bootstrap, topic, PARTITIONS)

    # The outage starts a third of the way in and lasts OUTAGE_S.
    outage = {"started": None, "ended": None}

    def start_outage():
        proxy.set_faults(outage="refuse")
        outage["started"] = time.monotonic()
        time.sleep(OUTAGE_S)
        proxy.set_faults(outage=None)
        outage["ended"] = time.monotonic()

    thread = threading.Thread(target=start_outage)
    try:
        produced = produce(broker.bootstrap, topic, PARTITIONS, TOTAL, VALUE,
                           at_third=thread.start)
    finally:
        thread.join()
    assert outage["ended"], "the outage did not run"
    assert not produced.failed, f"deliveries failed for good: {produced.failed[:5]}"
    assert produced.count == TOTAL // VALUE
    assert produced.seconds > OUTAGE_S * 0.5, "the outage did not slow producers down"

    # Every kind of fault for sure, not only by chance: each in turn hits
    # every request until it has been injected (a fixed window could pass
    # with no upload in it), while a little more data goes up, paced so
    # that uploads go on for longer than the forcing does.
    def force(kind: str, timeout_s: float = 10.0) -> None:
        before = proxy.stats().get(kind, 0)
        proxy.set_faults(**{kind: 1.0})
        deadline = time.monotonic() + timeout_s
        while proxy.stats().get(kind, 0) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        proxy.set_faults(**{kind: FAULTS[kind]})

    extra_topic = "objects-s3-extra"
    create_topic(broker.bootstrap, extra_topic, 1)
    forcing = threading.Thread(target=lambda: [force(k) for k in
                                               ("error500", "slowdown503", "drop_response")])
    forcing.start()
    extra = produce(broker.bootstrap, extra_topic, 1, 8 * MIB, VALUE,
                    extra={"linger.ms": 200}, pace_s=0.15)
    forcing.join()
    assert not extra.failed, extra.failed[:5]

    # Everything reaches the bucket once the store is back.
    deadline = time.monotonic() + 60
    stored = 0
    while time.monotonic() < deadline:
        stored = sum(size for key, size in list_keys(moto.fields["url"], BUCKET)
                     if key.startswith("c1/"))
        if stored >= TOTAL + extra.bytes:
            break
        time.sleep(0.5)
    assert stored >= TOTAL + extra.bytes, f"only {stored} bytes in the bucket"

    # The broker's own count of failed attempts names each fault's cause
    # (its counters restart with the process, so they are read now).
    errors = object_store_errors(broker)
    assert errors.get("throttled", 0) > 0 and errors.get("server", 0) > 0, errors
    assert errors.get("io", 0) > 0, errors
    assert errors.get("client", 0) == 0, errors

    broker.kill9()
    broker.restart()
    # Cold reads meet bodies cut off in the middle.
    forcing = threading.Thread(target=force, args=("reset_body",))
    forcing.start()
    seconds, got = read_back(broker.bootstrap, topic, produced, VALUE)
    forcing.join()
    check_read_back(produced, got)
    _, got_extra = read_back(broker.bootstrap, extra_topic, extra, VALUE)
    check_read_back(extra, got_extra)
    stats = proxy.stats()
    for fault in ("error500", "slowdown503", "reset_body", "drop_response"):
        assert stats.get(fault, 0) > 0, f"no {fault} was injected: {stats}"
    assert "no room for appends" in broker.log_text(), "the broker did not say why produce waited"
    figures.record(
        f"objects (S3 via fault proxy, {OUTAGE_S:.0f} s outage): {TOTAL >> 20} MiB through a "
        f"{WAL >> 20} MiB WAL in {produced.seconds:.0f} s, read back after kill -9 "
        f"{TOTAL / seconds / 1e6:.0f} MB/s; proxy injected {stats}")
