"""Object storage is the store: a broker whose WAL is far smaller than the
data it takes uploads to its objects directory (the embedded default),
trims the WAL behind each commit, keeps memory within its cache budgets,
and after kill -9 reads everything back from objects, in order, once.
"""
from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

MIB = 1 << 20
WAL = 8 * MIB
LOG_CACHE = 16 * MIB
BLOCK_CACHE = 16 * MIB
BROKER_PARAMS = {"shards": 1, "args": [
    "--wal-size-bytes", str(WAL),
    "--log-cache-bytes", str(LOG_CACHE),
    "--block-cache-bytes", str(BLOCK_CACHE),
    "--upload-bytes", str(2 * MIB),
    "--upload-interval-ms", "500",
]}

VALUE = 64 << 10
TOTAL = 96 * MIB // VALUE  # twelve times the WAL
PARTITIONS = 2


def value_of(seq: int) -> bytes:
    return seq.to_bytes(4, "big") * (VALUE // 4)


def object_files(broker) -> list[Path]:
    return [p for p in (broker.data_dir / "objects").rglob("*.sso") if p.is_file()]


def test_more_data_than_the_wal_holds_survives_kill9_from_objects(broker):
    topic = "objects-main"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS,
                                           replication_factor=1)]).values():
        f.result(30)

    acked: dict[int, list[tuple[int, int]]] = {p: [] for p in range(PARTITIONS)}
    failed = []

    def on_delivery(err, msg):
        if err is not None:
            failed.append(err)
        else:
            acked[msg.partition()].append((msg.offset(), int(msg.key())))

    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                  "linger.ms": 5, "on_delivery": on_delivery,
                  "message.timeout.ms": 120000})
    for seq in range(TOTAL):
        while True:
            try:
                p.produce(topic, key=str(seq).encode(), value=value_of(seq),
                          partition=seq % PARTITIONS)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0
    assert not failed, f"deliveries failed: {failed[:5]}"
    assert sum(len(a) for a in acked.values()) == TOTAL

    # The WAL only buffered: the data is in objects.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stored = sum(f.stat().st_size for f in object_files(broker))
        if stored >= TOTAL * VALUE:
            break
        time.sleep(0.2)
    assert stored >= TOTAL * VALUE, f"only {stored} bytes in objects"
    assert (broker.data_dir / "wal").stat().st_size <= WAL
    peak = broker.peak_rss_kib() * 1024
    bound = 2 * (LOG_CACHE + BLOCK_CACHE) + 200 * MIB
    assert peak < bound, f"peak RSS {peak >> 20} MiB over the bound {bound >> 20} MiB"

    broker.kill9()
    broker.restart()

    # Every acknowledged record, from offset 0, in order, once, from objects.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "objects-check",
                  "enable.auto.commit": False, "fetch.max.bytes": 8 * MIB})
    c.assign([TopicPartition(topic, part, 0) for part in range(PARTITIONS)])
    got: dict[int, list[tuple[int, int]]] = {part: [] for part in range(PARTITIONS)}
    deadline = time.monotonic() + 90
    while sum(len(g) for g in got.values()) < TOTAL and time.monotonic() < deadline:
        m = c.poll(1)
        if m is None or m.error():
            continue
        seq = int(m.key())
        assert m.value() == value_of(seq), f"wrong contents at offset {m.offset()}"
        got[m.partition()].append((m.offset(), seq))
    c.close()
    for part in range(PARTITIONS):
        assert got[part] == sorted(acked[part]), f"partition {part} differs"
        assert [o for o, _ in got[part]] == list(range(len(got[part])))

    # The inspection tools see the same objects, all committed.
    listing = broker.tool("objects", "ls")
    lines = [ln for ln in listing.splitlines() if ln.endswith("partition ranges")
             or " bytes  " in ln]
    assert lines and all("committed" in ln for ln in lines), listing
    first_key = lines[0].split()[0]
    shown = broker.tool("objects", "show", first_key)
    assert f"{topic}-" in shown and "block at 0" in shown, shown
    shell = broker.tool("metadata-shell")
    assert "objects:" in shell and "in objects: offsets 0.." in shell, shell[-2000:]
