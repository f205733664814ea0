"""A full WAL: nothing trims the WAL before object storage lands, so a slice
that fills up cannot take more. Produce must then answer KAFKA_STORAGE_ERROR
at once (not leave the request waiting until the client times out), the
broker must say why in its log, and everything acknowledged before must
still be there, in order, once.
"""
from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# One shard with an 8 MiB WAL: filled by a few hundred 32 KiB messages.
BROKER_PARAMS = {"shards": 1, "args": ["--wal-size-bytes", str(8 << 20)]}

VALUE = 32 << 10


def test_full_wal_answers_storage_error_and_keeps_acknowledged_data(broker):
    topic = "wal-full"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        f.result(30)

    acked: list[tuple[int, int]] = []  # (offset, sequence number)
    errors: list[tuple[int, float]] = []  # (error code, seconds after produce())
    sent_at: dict[int, float] = {}

    def on_delivery(err, msg):
        seq = int(msg.key())
        if err is None:
            acked.append((msg.offset(), seq))
        else:
            errors.append((err.code(), time.monotonic() - sent_at[seq]))

    p = Producer({
        "bootstrap.servers": broker.bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "retries": 0,  # report the broker's error as it is
        "max.in.flight.requests.per.connection": 1,
        "linger.ms": 0,
        "message.timeout.ms": 30000,
        "request.timeout.ms": 30000,
        "on_delivery": on_delivery,
    })
    total = (8 << 20) // VALUE + 40  # more than the WAL holds
    for seq in range(total):
        sent_at[seq] = time.monotonic()
        p.produce(topic, key=str(seq).encode(), value=bytes([seq % 251]) * VALUE, partition=0)
        p.poll(0)
    assert p.flush(60) == 0

    assert len(acked) + len(errors) == total
    assert acked, "nothing was acknowledged before the WAL filled"
    assert errors, "the WAL never filled"
    codes = {code for code, _ in errors}
    assert codes == {KafkaError.KAFKA_STORAGE_ERROR}, codes
    slowest = max(s for _, s in errors)
    assert slowest < 10, f"a refused produce took {slowest:.1f} s: it waited for space"
    # Refused only when the slice is nearly full: at least 80% of it was taken.
    assert len(acked) * VALUE > 0.8 * (8 << 20) * 0.9
    assert "WAL slice full" in broker.log_text()

    # Acknowledged offsets are contiguous and in send order.
    acked.sort()
    assert [o for o, _ in acked] == list(range(len(acked)))
    seqs = [s for _, s in acked]
    assert seqs == sorted(seqs)

    # And readable, once each, with the right contents.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "wal-full-check",
                  "enable.auto.commit": False, "fetch.max.bytes": 4 << 20})
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < len(acked) and time.monotonic() < deadline:
        m = c.poll(1)
        if m is None or m.error():
            continue
        seq = int(m.key())
        assert m.value() == bytes([seq % 251]) * VALUE
        got.append((m.offset(), seq))
    c.close()
    assert got == acked

    # The broker still answers everything but produce.
    md = admin.list_topics(timeout=10)
    assert topic in md.topics
