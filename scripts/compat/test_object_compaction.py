"""Object compaction: small stream-set objects (one per upload, shared by
all partitions of a shard) are merged into per-partition stream objects,
full ones stay until mostly deleted;
the merged objects leave the store after the delete delay; reads see the
same records; and kill -9 at any moment of compaction loses or duplicates
nothing and leaves no object behind once orphans are collected.
"""
from __future__ import annotations

import random
import re
import time

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from objects_load import MIB, wait_for, Produced, check_read_back, create_topic, produce, read_back

PARTITIONS = 3
VALUE = 16 << 10
BROKER_PARAMS = {"shards": 1, "args": [
    "--upload-interval-ms", "200",
    "--upload-bytes", str(1 * MIB),
    "--object-compaction-interval-ms", "300",
    "--log-cleaner-backoff-ms", "300",
    "--object-compaction-min-age-ms", "0",
    "--stream-object-bytes", str(4 * MIB),
    "--object-gc-interval-ms", "300",
    "--object-delete-delay-ms", "300",
    "--object-orphan-grace-ms", "1000",
    # Keep the whole metadata log readable by metadata-shell.
    "--metadata-snapshot-entries", "1000000",
]}


def objects(broker) -> dict[int, int]:
    """Committed object id -> number of partition ranges it holds."""
    shell = broker.tool("metadata-shell")
    return {int(i): int(n) for i, n in re.findall(r"^  object (\d+) node -?\d+ size \d+ ranges (\d+)",
                                                  shell, re.M)}


def on_disk(broker) -> set[int]:
    return {int(p.stem, 16) for p in (broker.data_dir / "objects").rglob("*.sso")}



def test_stream_set_objects_become_stream_objects(broker, figures):
    topic = "compact-objects"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    produced = Produced()
    for i in range(8):  # several uploads, each shared by the three partitions
        produced.add(produce(broker.bootstrap, topic, PARTITIONS, 2 * MIB, VALUE,
                             first_seq=i * 1000))
        time.sleep(0.3)
    assert not produced.failed
    # The metadata log tells what happens: uploads shared by partitions,
    # then stream objects that replace them, then the shared ones destroyed.
    def history():
        shell = broker.tool("metadata-shell")
        shared = {int(i) for i, _ in re.findall(
            r"^  ObjectCommitted id=(\d+) node=\d+ size=\d+((?: \S+){2,})$", shell, re.M)}
        streams = len(re.findall(r"StreamObjectCommitted id=", shell))
        destroyed = {int(i) for ids in re.findall(r"ObjectsDestroyed at \d+ ms: \[([\d, ]+)\]", shell)
                     for i in ids.split(", ")}
        return shared, streams, destroyed

    wait_for("every shared upload to be destroyed",
             lambda: (h := history())[0] and h[0] <= h[2])
    wait_for("every object to hold one partition",
             lambda: all(n == 1 for n in objects(broker).values()))
    after = objects(broker)
    shared, streams, destroyed = history()
    assert shared and streams, "no shared upload, or no stream object: nothing was compacted"
    wait_for("the merged objects to leave the store", lambda: not (shared & on_disk(broker)))
    # Proportional to data, not to the number of uploads: per partition at
    # most its bytes over the stream-object target, plus a tail of fewer
    # than MERGE_FANIN (8) small objects still waiting to be merged.
    per_partition = -(-produced.bytes // PARTITIONS)
    bound = PARTITIONS * (-(-per_partition // (4 * MIB)) + 7)
    assert len(after) <= bound, f"{len(after)} objects left (bound {bound}): {after}"
    # Without merging, each partition's share of each upload would stay a
    # stream object of its own.
    assert len(after) < PARTITIONS * len(shared), \
        f"small stream objects were not merged: {len(shared)} uploads became {after}"
    # And it settles: with no new data, passes change nothing.
    time.sleep(2.0)
    assert objects(broker) == after, "compaction keeps rewriting settled objects"
    seconds, got = read_back(broker.bootstrap, topic, produced, VALUE)
    check_read_back(produced, got)
    figures.record(f"object compaction: {len(shared)} shared uploads and {streams} stream objects "
                   f"written became {len(after)} objects for {PARTITIONS} partitions")


def test_kill9_during_compaction_loses_nothing_and_leaks_nothing(fresh_broker):
    broker = fresh_broker
    topic = "compact-crash"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    produced = Produced()
    rng = random.Random(7)
    for round_ in range(4):
        p = produce(broker.bootstrap, topic, PARTITIONS, 3 * MIB, VALUE, first_seq=round_ * 1000)
        assert not p.failed
        produced.add(p)
        # Somewhere in the middle of uploads and compaction passes.
        time.sleep(rng.uniform(0.1, 0.9))
        broker.kill9()
        broker.restart()
    seconds, got = read_back(broker.bootstrap, topic, produced, VALUE)
    check_read_back(produced, got)
    # Once compaction settles and orphans age out, the store holds exactly
    # the committed objects.
    wait_for("compaction to settle", lambda: all(n == 1 for n in objects(broker).values()))
    wait_for("the store to hold exactly the committed objects",
             lambda: on_disk(broker) == set(objects(broker)), timeout=60)


KEEP = 512 << 10


@pytest.mark.parametrize("fresh_broker", [{"shards": 1, "args": [
    *BROKER_PARAMS["args"], "--stream-set-keep-bytes", str(KEEP)]}], indirect=True)
def test_full_uploads_stay_until_mostly_deleted(fresh_broker, figures):
    """A stream-set object of at least stream_set_keep_bytes is not
    rewritten (that would cost a PUT per partition); once DeleteRecords has
    taken more than half of it, its live ranges move out and it goes."""
    broker = fresh_broker
    topic = "keep-uploads"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    produced = Produced()
    for i in range(4):
        produced.add(produce(broker.bootstrap, topic, PARTITIONS, 3 * MIB, VALUE,
                             first_seq=i * 1000))
    assert not produced.failed

    def big_shared():
        shell = broker.tool("metadata-shell")
        return {int(i): int(n) for i, size, n in re.findall(
            r"^  object (\d+) node -?\d+ size (\d+) ranges (\d+)", shell, re.M)
            if int(size) >= KEEP and int(n) > 1}

    wait_for("full uploads to be committed", lambda: len(big_shared()) >= 2)
    kept = big_shared()
    time.sleep(3.0)  # ten compaction passes
    still = big_shared()
    assert all(still.get(i) == n for i, n in kept.items()), \
        f"full uploads were rewritten: {kept} then {still}"
    # Partitions 1 and 2 deleted: two thirds of every upload are dead.
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.delete_records([TopicPartition(topic, p, len(produced.acked[p]))
                                   for p in (1, 2)]).values():
        f.result(30)
    wait_for("the mostly deleted uploads to be replaced",
             lambda: not (set(still) & set(objects(broker))))
    wait_for("the replaced uploads to leave the store", lambda: not (set(still) & on_disk(broker)))
    left = Produced(acked={0: produced.acked[0]})
    _, got = read_back(broker.bootstrap, topic, left, VALUE)
    check_read_back(left, got)
    figures.record(f"stream-set objects kept: {len(still)} full uploads left alone for 3 s of "
                   f"compaction passes, moved out once two thirds deleted")
