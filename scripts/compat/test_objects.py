"""Object storage is the store: a broker whose WAL is far smaller than the
data it takes uploads to its objects directory (the embedded default),
trims the WAL behind each commit, keeps memory within its cache budgets,
and after kill -9 reads everything back from objects, in order, once.

CI runs a small load; `scripts/objects-check` runs the same test with
OBJECTS_TOTAL_MIB=4096 and the default caches.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from objects_load import MIB, check_read_back, create_topic, produce, read_back

TOTAL = int(os.environ.get("OBJECTS_TOTAL_MIB", "96")) * MIB
WAL = int(os.environ.get("OBJECTS_WAL_MIB", "8")) * MIB
PARTITIONS = int(os.environ.get("OBJECTS_PARTITIONS", "2"))
SHARDS = int(os.environ.get("OBJECTS_SHARDS", "1"))
# 0: the broker's defaults (256 MiB log cache, 128 MiB block cache).
LOG_CACHE = int(os.environ.get("OBJECTS_LOG_CACHE_MIB", "16")) * MIB or 256 * MIB
BLOCK_CACHE = int(os.environ.get("OBJECTS_BLOCK_CACHE_MIB", "16")) * MIB or 128 * MIB
VALUE = 64 << 10

BROKER_PARAMS = {"shards": SHARDS, "args": [
    "--wal-size-bytes", str(WAL),
    "--log-cache-bytes", str(LOG_CACHE),
    "--block-cache-bytes", str(BLOCK_CACHE),
    "--upload-interval-ms", "500",
    # Collect orphans quickly, also while the load runs: committed objects
    # and uploads in flight must survive it.
    "--object-orphan-grace-ms", "2000",
    "--object-gc-interval-ms", "500",
]}


def object_files(broker) -> list[Path]:
    return [p for p in (broker.data_dir / "objects").rglob("*.sso") if p.is_file()]


def test_more_data_than_the_wal_holds_survives_kill9_from_objects(broker, figures):
    topic = "objects-main"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    produced = produce(broker.bootstrap, topic, PARTITIONS, TOTAL, VALUE)
    assert not produced.failed, f"deliveries failed: {produced.failed[:5]}"
    assert produced.count == TOTAL // VALUE

    # The WAL only buffered: the data is in objects.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stored = sum(f.stat().st_size for f in object_files(broker))
        if stored >= TOTAL:
            break
        time.sleep(0.2)
    assert stored >= TOTAL, f"only {stored} bytes in objects"
    wal_bytes = (broker.data_dir / "wal").stat().st_size
    assert wal_bytes <= WAL
    peak = broker.peak_rss_kib() * 1024
    bound = 2 * (LOG_CACHE + BLOCK_CACHE) + 200 * MIB
    assert peak < bound, f"peak RSS {peak >> 20} MiB over the bound {bound >> 20} MiB"

    broker.kill9()
    broker.restart()
    seconds, got = read_back(broker.bootstrap, topic, produced, VALUE)
    check_read_back(produced, got)
    figures.record(
        f"objects (local dir): {TOTAL >> 20} MiB through a {WAL >> 20} MiB WAL: produce "
        f"{TOTAL / produced.seconds / 1e6:.0f} MB/s, read back after kill -9 "
        f"{TOTAL / seconds / 1e6:.0f} MB/s, {len(object_files(broker))} objects, "
        f"peak RSS {peak >> 20} MiB (bound {bound >> 20} MiB)")

    # The inspection tools see the same objects. An upload cut short by the
    # kill -9 left an orphan (stored, never committed); it goes once the
    # orphan grace has passed, and then every object listed is committed.
    deadline = time.monotonic() + 20
    while True:
        listing = broker.tool("objects", "ls")
        lines = [ln for ln in listing.splitlines() if " bytes  " in ln]
        if (lines and all("committed" in ln for ln in lines)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lines and all("committed" in ln for ln in lines), listing
    first_key = lines[0].split()[0]
    shown = broker.tool("objects", "show", first_key)
    assert f"{topic}-" in shown and "block at 0" in shown, shown
    shell = broker.tool("metadata-shell")
    assert "objects:" in shell and "in objects: offsets 0.." in shell, shell[-2000:]


def _key_of(object_id: int) -> str:
    """The key scheme of storage/src/object/keys.rs (SplitMix64 finaliser)."""
    mask = (1 << 64) - 1
    z = (object_id + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return f"{z & 0xff:02x}/{object_id:016x}.sso"


def test_orphans_are_collected_and_nothing_else(broker):
    """A crash between an object's upload and its commit leaves an object
    whose id was reserved but never committed: it goes after the grace
    period. Committed objects and objects that are not ours stay."""
    import re
    # After a restart the shard reserves a new block of ids on its first
    # upload: what the old block did not use is reserved, never committed.
    # If the old block happened to be used up, one more restart leaves the
    # new block (a couple of uploads into it) with unused ids.
    candidates: list[int] = []
    for attempt in range(3):
        broker.kill9()
        broker.restart()
        ranges_before = broker.tool("metadata-shell").count("objects-orphans-0 offsets")
        produce(broker.bootstrap, "objects-orphans", 1, 4 * MIB, VALUE, first_seq=attempt * 1000)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            shell = broker.tool("metadata-shell")
            if shell.count("objects-orphans-0 offsets") > ranges_before:
                break
            time.sleep(0.2)
        committed = {int(m) for m in re.findall(r"^  object (\d+) node", shell, re.M)}
        blocks = [(int(a), int(b)) for a, b in re.findall(r"reserved ids (\d+)\.\.(\d+)", shell)]
        next_id = int(re.search(r"next id (\d+)", shell).group(1))
        live = {i for a, b in blocks for i in range(a, b)}
        candidates = [i for i in range(next_id) if i not in committed and i not in live]
        if candidates:
            break
    assert candidates, f"no reserved-but-unused id to play the orphan ({shell[-800:]})"
    objects = broker.data_dir / "objects"
    orphan = objects / _key_of(candidates[0])
    foreign = objects / _key_of(next_id + 1000)  # never reserved: not ours
    for f in (orphan, foreign):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"half an upload")
        old = time.time() - 60
        os.utime(f, (old, old))
    before = sorted(p.name for p in object_files(broker) if p not in (orphan, foreign))
    deadline = time.monotonic() + 20
    while orphan.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not orphan.exists(), "the orphan was not collected"
    assert foreign.exists(), "an object that is not ours was deleted"
    after = sorted(p.name for p in object_files(broker) if p not in (orphan, foreign))
    assert set(before) <= set(after), "a committed object was deleted"
    assert "deleted orphaned objects" in broker.log_text()
    foreign.unlink()
