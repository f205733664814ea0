"""Offset expiry racing commits: a standalone group re-commits each of its
partitions at about the moment the previous commit expires, while expiry
runs every few milliseconds. Every commit the broker acknowledges must be
what an OffsetFetch right after it returns.

Before the fix, expiry decided which offsets to delete, then appended the
tombstones: a commit in flight at that moment landed before them in the
log, was acknowledged, and was then dropped from memory (and, on replay,
by its tombstone). Which commits race depends on timing, so the test runs
for a while.
"""
from __future__ import annotations

import random
import time

from confluent_kafka.admin import AdminClient, NewTopic

import kwire
from kwire import Conn

RETENTION_MS = 200
BROKER_PARAMS = {"shards": 1, "args": [
    "--offsets-retention-ms", str(RETENTION_MS),
    "--offsets-retention-check-interval-ms", "3",
]}
TOPIC = "expiry-race"
PARTITIONS = 8
DURATION_S = 20.0
GROUP = "racer"


def test_a_commit_racing_expiry_is_kept(broker):
    a = AdminClient({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    a.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(timeout=30)
    rng = random.Random(7)
    offset = 0
    commits = 0
    lost: list[tuple[int, int, int]] = []
    with Conn(broker.host, broker.ports[0], 10.0) as conn:
        # The offsets topic is created by the first FindCoordinator and
        # loads after that: wait until commits go in.
        wait = time.monotonic() + 30
        while (kwire.find_coordinator(conn, GROUP)[0] != kwire.NONE
               or kwire.offset_commit(conn, 8, GROUP, TOPIC, 0, 0, None) != kwire.NONE):
            assert time.monotonic() < wait, "the group coordinator never became available"
            time.sleep(0.2)
        deadline = time.monotonic() + DURATION_S
        while time.monotonic() < deadline:
            for p in range(PARTITIONS):
                offset += 1
                err = kwire.offset_commit(conn, 8, GROUP, TOPIC, p, offset, None)
                assert err == kwire.NONE, f"commit answered error {err}"
                got = kwire.offset_fetch(conn, 8, GROUP, TOPIC, p)
                commits += 1
                if got.offset != offset:
                    lost.append((p, offset, got.offset))
            # Each partition is committed again about when its last commit
            # expires: some re-commits meet the expiry that deletes the last.
            time.sleep(rng.uniform(RETENTION_MS - 8, RETENTION_MS + 6) / 1000)
    print(f"{commits} commits, {len(lost)} not read back right after")
    assert not lost, f"acknowledged commits missing right after (partition, committed, fetched): {lost[:5]}"
