"""Crash test (WAL issue): kill -9 the broker while several confluent-kafka
producers write with acks=all, restart it on the same data directory, and read
everything back.

Every acknowledged message must be at the offset it was acknowledged with, in
acknowledgement order per partition; nothing may appear that was never sent.
Idempotence is off, so a message whose delivery was not acknowledged may be
there (once or more: a retried attempt), or not.
"""
from __future__ import annotations

import random
import shutil
import threading
import time
from collections import defaultdict

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker

ROUNDS = 5
PARTITIONS = 4
PRODUCERS = 3


def _produce(bootstrap: str, topic: str, tid: int, stop: threading.Event, acked: list, sent: set, lock):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "max.in.flight.requests.per.connection": 1,
        "linger.ms": random.choice([0, 1, 5]),
        "message.timeout.ms": 4000,
        "retry.backoff.ms": 50,
        "socket.timeout.ms": 2000,
    })

    def on_delivery(err, msg):
        if err is None:
            with lock:
                acked.append((msg.partition(), msg.offset(), msg.value(), tid))

    seq = 0
    while not stop.is_set():
        value = f"p{tid}-{seq}".encode()
        partition = seq % PARTITIONS
        with lock:
            sent.add(value)
        try:
            p.produce(topic, value=value, partition=partition, on_delivery=on_delivery)
        except BufferError:
            p.poll(0.05)
            continue
        seq += 1
        p.poll(0)
        if seq % 200 == 0:
            time.sleep(0.001)
    p.flush(6)


def _consume_all(bootstrap: str, topic: str) -> dict[int, list[tuple[int, bytes]]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "crash-check",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    ends = {}
    for p in range(PARTITIONS):
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        assert lo == 0, f"partition {p} starts at {lo}"
        ends[p] = hi
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    remaining = sum(ends.values())
    deadline = time.monotonic() + 60
    while remaining > 0 and time.monotonic() < deadline:
        for m in c.consume(5000, timeout=1.0):
            assert m.error() is None, m.error()
            out[m.partition()].append((m.offset(), m.value()))
            remaining -= 1
    c.close()
    for p in range(PARTITIONS):
        offsets = [o for o, _ in out[p]]
        assert offsets == list(range(ends[p])), f"partition {p}: offsets not contiguous 0..{ends[p]}"
    return out


def test_acknowledged_writes_survive_kill_9(tmp_path_factory):
    rng = random.Random()
    for rnd in range(ROUNDS):
        b = Broker(tmp_path_factory.mktemp(f"crash{rnd}"), shards=2)
        b.start(rng)
        try:
            topic = f"crash-{rnd}"
            admin = AdminClient({"bootstrap.servers": b.bootstrap})  # keep it alive until result()
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(10)
            acked: list = []
            sent: set = set()
            lock = threading.Lock()
            stop = threading.Event()
            threads = [threading.Thread(target=_produce, args=(b.bootstrap, topic, t, stop, acked, sent, lock))
                       for t in range(PRODUCERS)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.5, 2.0))
            b.kill9()  # SIGKILL: no shutdown path runs
            stop.set()
            for t in threads:
                t.join(30)
            with lock:
                acked_now = list(acked)
            assert acked_now, "nothing was acknowledged before the kill"

            b.restart()
            log = _consume_all(b.bootstrap, topic)
            at = {(p, o): v for p, msgs in log.items() for o, v in msgs}
            for p, o, v, _ in acked_now:
                assert at.get((p, o)) == v, f"acknowledged {v!r} at {p}/{o} is missing (found {at.get((p, o))!r})"
            # Each producer's acknowledgements for a partition arrive in the
            # order it sent them; their offsets must follow that order.
            per_producer_partition = defaultdict(list)
            for p, o, _, tid in acked_now:
                per_producer_partition[(tid, p)].append(o)
            for (tid, p), offs in per_producer_partition.items():
                assert offs == sorted(offs), f"producer {tid}, partition {p}: acknowledgements out of offset order"
            never_sent = [v for v in at.values() if v not in sent]
            assert not never_sent, f"{len(never_sent)} messages that were never sent, e.g. {never_sent[:3]}"
            acked_values = {v for _, _, v, _ in acked_now}
            dup = defaultdict(int)
            for v in at.values():
                dup[v] += 1
            acked_dups = [v for v, n in dup.items() if n > 1 and v in acked_values]
            print(f"round {rnd}: acked {len(acked_now)}, in log {len(at)}, "
                  f"unacked present {len(set(at.values()) - acked_values)}, duplicates {sum(n - 1 for n in dup.values())} "
                  f"({len(acked_dups)} of acked values, each from a retried attempt)")
            passed = True
        except BaseException:
            passed = False
            raise
        finally:
            b.stop()
            if passed:  # a failed round keeps its data for reading
                shutil.rmtree(b.data_dir, ignore_errors=True)
