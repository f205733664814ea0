"""Shared by the object-storage tests and `scripts/objects-check`: produce a
known sequence with confluent-kafka (acks=all, retries allowed), then read
it back from offset 0 and check it: every acknowledged record once, in
order per partition, with its contents. Values are derived from the
sequence number, so gigabytes can be checked without keeping them.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

MIB = 1 << 20


def wait_for(what: str, cond, timeout: float = 60.0, every: float = 0.3) -> None:
    """Polls `cond` until it holds; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def value_of(seq: int, size: int) -> bytes:
    head = hashlib.blake2b(seq.to_bytes(8, "big"), digest_size=16).digest()
    return (head * (size // 16 + 1))[:size]


@dataclass
class Produced:
    """What one or more produce runs had acknowledged."""
    acked: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # partition -> (offset, seq)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0

    @property
    def count(self) -> int:
        return sum(len(a) for a in self.acked.values())

    def add(self, other: "Produced") -> None:
        for part, acked in other.acked.items():
            self.acked.setdefault(part, []).extend(acked)
        self.failed.extend(other.failed)
        self.bytes += other.bytes
        self.seconds += other.seconds


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                           replication_factor=1)]).values():
        f.result(30)


def produce(bootstrap: str, topic: str, partitions: int, total_bytes: int, value_size: int,
            on_progress=None, extra: dict | None = None, at_third=None,
            first_seq: int = 0, pace_s: float = 0.0) -> Produced:
    """Sends `total_bytes` of `value_size` records round-robin over the
    partitions; returns what was acknowledged. `at_third` is called once,
    a third of the way through; `pace_s` is a pause after each record."""
    out = Produced(acked={p: [] for p in range(partitions)})

    def on_delivery(err, msg):
        if err is not None:
            out.failed.append(str(err))
        else:
            out.acked[msg.partition()].append((msg.offset(), int(msg.key())))

    conf = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
            "batch.size": 1 << 20, "on_delivery": on_delivery,
            "message.timeout.ms": 300000, "queue.buffering.max.kbytes": 256 << 10}
    conf.update(extra or {})
    p = Producer(conf)
    n = total_bytes // value_size
    start = time.monotonic()
    last_report = start
    for i in range(n):
        seq = first_seq + i
        if at_third is not None and i == n // 3:
            at_third()
        while True:
            try:
                p.produce(topic, key=str(seq).encode(), value=value_of(seq, value_size),
                          partition=seq % partitions)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        if pace_s:
            time.sleep(pace_s)
        if on_progress and time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            on_progress(i, n)
    remaining = p.flush(600)
    out.seconds = time.monotonic() - start
    out.bytes = n * value_size
    if remaining:
        out.failed.append(f"{remaining} records still queued after flush")
    return out


def read_back(bootstrap: str, topic: str, produced: Produced, value_size: int,
              timeout_s: float = 600) -> tuple[float, dict[int, list[tuple[int, int]]]]:
    """Reads every partition from offset 0 until all acknowledged records
    came back; checks contents as it goes. Returns (seconds, what was read)."""
    want = produced.count
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}",
                  "enable.auto.commit": False, "fetch.max.bytes": 32 * MIB,
                  "max.partition.fetch.bytes": 8 * MIB})
    parts = sorted(produced.acked)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    got: dict[int, list[tuple[int, int]]] = {p: [] for p in parts}
    count = 0
    start = time.monotonic()
    deadline = start + timeout_s
    while count < want and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error():
                continue
            seq = int(m.key())
            if m.value() != value_of(seq, value_size):
                raise AssertionError(f"wrong contents at {m.partition()}/{m.offset()} (seq {seq})")
            got[m.partition()].append((m.offset(), seq))
            count += 1
    seconds = time.monotonic() - start
    c.close()
    return seconds, got


def check_read_back(produced: Produced, got: dict[int, list[tuple[int, int]]]) -> None:
    for p, acked in produced.acked.items():
        mine = got.get(p, [])
        offsets = [o for o, _ in mine]
        assert offsets == list(range(len(offsets))), f"partition {p}: offsets not contiguous from 0"
        assert len(set(s for _, s in mine)) == len(mine), f"partition {p}: a record came back twice"
        assert mine == sorted(acked), (
            f"partition {p}: read {len(mine)} records, {len(acked)} acknowledged; "
            f"first difference at {next((i for i, (a, b) in enumerate(zip(mine, sorted(acked))) if a != b), min(len(mine), len(acked)))}")
