#!/usr/bin/env python3
"""Measures how long a 3-member consumer group takes to rebalance when one
member leaves (close() sends LeaveGroup): from the start of close() until
the two remaining members together own every partition again.

    python3 scripts/bench_rebalance.py [--bootstrap HOST:PORT,...] [--runs 5]
        [--heartbeat-ms 100] [--strategy range|roundrobin|cooperative-sticky]

Without --bootstrap it starts $BROKER_BIN (default target/release/broker)
with 2 shards on free ports, like the compat tests. The remaining members
learn about the rebalance from their next heartbeat, so the figure is about
one heartbeat interval plus the JoinGroup/SyncGroup round; it prints the
heartbeat interval it used. A benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 6


def consumer(bootstrap: str, group: str, topic: str, hb_ms: int, strategy: str) -> Consumer:
    c = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                  "group.id": group, "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": hb_ms, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "partition.assignment.strategy": strategy})
    c.subscribe([topic])
    return c


def owned(c: Consumer) -> set[int]:
    return {tp.partition for tp in c.assignment()}


def covers_all(members: list[Consumer]) -> bool:
    sets = [owned(c) for c in members]
    union = set().union(*sets)
    return union == set(range(PARTITIONS)) and sum(map(len, sets)) == PARTITIONS \
        and all(sets)


def poll_until(members: list[Consumer], cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in members:
            c.poll(0.005)
        if cond():
            return
    raise SystemExit(f"timed out; assignments {[sorted(owned(c)) for c in members]}")


def one_run(bootstrap: str, topic: str, hb_ms: int, strategy: str) -> float:
    group = f"bench-rebalance-{uuid.uuid4().hex[:8]}"
    members = [consumer(bootstrap, group, topic, hb_ms, strategy) for _ in range(3)]
    poll_until(members, lambda: covers_all(members))
    leaving, rest = members[2], members[:2]
    start = time.monotonic()
    leaving.close()
    poll_until(rest, lambda: covers_all(rest) and all(len(owned(c)) == 3 for c in rest))
    took = time.monotonic() - start
    for c in rest:
        c.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bootstrap")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--heartbeat-ms", type=int, default=100)
    ap.add_argument("--strategy", default="range")
    args = ap.parse_args()

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent / "compat"))
        from conftest import Broker  # noqa: E402 (the compat tests' broker runner)
        workdir = Path(tempfile.mkdtemp(prefix="bench-rebalance-"))
        broker = Broker(workdir, shards=2, args=["--group-initial-rebalance-delay-ms", "100"])
        broker.start(random.Random())
        bootstrap = broker.bootstrap
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})
        topic = f"bench-rebalance-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
            topic].result(timeout=30)
        time.sleep(0.5)
        p = Producer({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})
        for i in range(60):
            p.produce(topic, value=b"x", partition=i % PARTITIONS)
        p.flush(30)
        times = [one_run(bootstrap, topic, args.heartbeat_ms, args.strategy)
                 for _ in range(args.runs)]
        ms = sorted(t * 1000 for t in times)
        print(f"rebalance after 1 of 3 members leaves ({args.strategy}, "
              f"heartbeat.interval.ms={args.heartbeat_ms}, {args.runs} runs): "
              f"median {statistics.median(ms):.0f} ms, min {ms[0]:.0f} ms, max {ms[-1]:.0f} ms")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
