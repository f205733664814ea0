"""Idempotent producers (issue 12, part 1).

* kafka-python 3 and confluent-kafka producers with their default settings
  (idempotence on) and with enable.idempotence=true: every message is stored
  once, in order.
* On the raw wire (kwire): InitProducerId hands out distinct ids; a retried
  batch (same producer id, epoch and sequence) is answered with its original
  offset and stored once; a sequence gap gets OUT_OF_ORDER_SEQUENCE_NUMBER;
  an older epoch gets INVALID_PRODUCER_EPOCH; control batches from clients
  are refused; producer state expires after producer_id_expiration_ms.
* An idempotent producer sends 200,000 messages while the broker is kill
  -9'ed and restarted twice: every message is present exactly once, in
  order (retries after the crash are deduplicated from the WAL and the
  objects' producer-state snapshots).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition

import kwire

BROKER_PARAMS = {"shards": 2, "broker_id": 0}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(broker, name: str, partitions: int, conf: dict | None = None) -> None:
    """`conf`: the admin client's whole configuration (a SASL one, say)."""
    admin = AdminClient(conf or {"bootstrap.servers": broker.bootstrap,
                                 "broker.address.family": "v4"})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                        operation_timeout=30)[name].result(timeout=30)
    deadline = time.monotonic() + 15
    while True:
        t = admin.list_topics(timeout=10).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions and \
                all(p.leader >= 0 for p in t.partitions.values()):
            return
        assert time.monotonic() < deadline, f"{name} not in metadata"
        time.sleep(0.2)


def leader_port(broker, topic: str, partition: int = 0) -> int:
    with kwire.Conn(broker.host, broker.ports[0]) as c:
        v = kwire.pick_version(kwire.negotiate(c), kwire.METADATA, 4, 12)
        deadline = time.monotonic() + 15
        while True:
            t = kwire.metadata(c, v, [topic], allow_auto_create=True).topics.get(topic)
            if t and t.error_code == 0 and partition in t.partitions and t.partitions[partition].leader >= 0:
                return broker.port_of_node(t.partitions[partition].leader)
            assert time.monotonic() < deadline, t
            time.sleep(0.2)


def consume_values(bootstrap: str, topic: str, partitions: int, expected: int,
                   timeout: float = 90.0) -> dict[int, list[bytes]]:
    """Every value of every partition, in offset order; offsets must be
    contiguous from 0."""
    c = Consumer({"bootstrap.servers": bootstrap, "broker.address.family": "v4",
                  "group.id": "idem-check", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    got = 0
    deadline = time.monotonic() + timeout
    try:
        while got < expected and time.monotonic() < deadline:
            for m in c.consume(10000, timeout=1.0):
                assert m.error() is None, m.error()
                vals = out[m.partition()]
                assert m.offset() == len(vals), \
                    f"partition {m.partition()}: offset {m.offset()} after {len(vals)} records"
                vals.append(m.value())
                got += 1
        # Nothing more than expected.
        extra = c.consume(1000, timeout=1.0)
        assert not [m for m in extra if m.error() is None], "more records than were sent"
    finally:
        c.close()
    return out


def check_exactly_once_in_order(values: dict[int, list[bytes]], n: int, tag: str) -> None:
    seen: dict[int, int] = {}
    for p, vals in values.items():
        idxs = [int(v.decode().split("-")[-1]) for v in vals]
        assert idxs == sorted(idxs), f"partition {p}: not in send order"
        for i in idxs:
            assert i not in seen, f"{tag}: message {i} stored twice (partitions {seen[i]} and {p})"
            seen[i] = p
    missing = sorted(set(range(n)) - set(seen))
    assert not missing, f"{tag}: {len(missing)} messages missing, first {missing[:10]}"


# -- real clients, default settings ---------------------------------------------

@pytest.mark.parametrize("explicit", [False, True], ids=["defaults", "enable_idempotence"])
def test_kafka_python_idempotent_producer(broker, explicit):
    topic = unique("kp-idem")
    create_topic(broker, topic, 3)
    kwargs = {"enable_idempotence": True} if explicit else {}
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, **kwargs)
    assert producer.config["enable_idempotence"], "kafka-python 3 enables idempotence by default"
    n = 3000
    futures = [producer.send(topic, key=f"k{i % 17}".encode(), value=f"kp-{i}".encode()) for i in range(n)]
    producer.flush(60)
    for f in futures:
        f.get(timeout=30)
    producer.close(10)
    values = consume_values(broker.bootstrap, topic, 3, n)
    check_exactly_once_in_order(values, n, "kafka-python")
    # The broker tracked the producer: each partition names one producer id.
    pids = set()
    for p in range(3):
        with kwire.Conn(broker.host, leader_port(broker, topic, p)) as c:
            err, producers = kwire.describe_producers(c, topic, p)
            assert err == 0
            assert len(producers) == 1, producers
            pids.add(producers[0].producer_id)
            assert producers[0].last_sequence == len(values[p]) - 1
    assert len(pids) == 1


@pytest.mark.parametrize("explicit", [False, True], ids=["defaults", "enable_idempotence"])
def test_confluent_idempotent_producer(broker, explicit):
    topic = unique("ck-idem")
    create_topic(broker, topic, 3)
    conf = {"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"}
    if explicit:
        conf.update({"enable.idempotence": True, "acks": "all"})
    producer = Producer(conf)
    n = 20000
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))

    for i in range(n):
        while True:
            try:
                producer.produce(topic, key=f"k{i % 17}".encode(), value=f"ck-{i}".encode(),
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:5]
    values = consume_values(broker.bootstrap, topic, 3, n)
    check_exactly_once_in_order(values, n, "confluent")
    if explicit:
        with kwire.Conn(broker.host, leader_port(broker, topic, 0)) as c:
            err, producers = kwire.describe_producers(c, topic, 0)
            assert err == 0 and len(producers) == 1, producers
            assert producers[0].epoch == 0


# -- the raw wire ----------------------------------------------------------------

def fetch_all(c: kwire.Conn, fv: int, topic: str) -> list[bytes]:
    """Every batch up to the high watermark (a fetch may stop at the end of
    an object)."""
    out: list[bytes] = []
    offset = 0
    while True:
        body = kwire.fetch_body(fv, topic, 0, offset, 0)
        got = kwire.parse_fetch(c.request(kwire.FETCH, fv, body), fv)[(topic, 0)]
        assert got.error_code == 0, got
        batches = kwire.split_batches(got.records)
        if not batches:
            assert offset == got.high_watermark, (offset, got)
            return out
        out.extend(batches)
        last = batches[-1]
        offset = struct.unpack_from(">q", last, 0)[0] + struct.unpack_from(">i", last, 23)[0] + 1


def header(batch: bytes) -> tuple[int, int, int, int]:
    """(base offset, producer id, epoch, base sequence) of a stored batch."""
    base = struct.unpack_from(">q", batch, 0)[0]
    pid, epoch, seq = struct.unpack_from(">qhi", batch, 43)
    return base, pid, epoch, seq


def test_wire_retry_is_answered_with_its_offset_and_stored_once(broker):
    topic = unique("wire-idem")
    port = leader_port(broker, topic)
    with kwire.Conn(broker.host, port) as c:
        keys = kwire.negotiate(c)
        assert kwire.INIT_PRODUCER_ID in keys, "InitProducerId must be advertised"
        pv = kwire.pick_version(keys, kwire.PRODUCE, 3, 9)
        fv = kwire.pick_version(keys, kwire.FETCH, 4, 11)
        err, pid, epoch = kwire.init_producer_id(c, 4)
        assert (err, epoch) == (0, 0) and pid >= 0
        err2, pid2, _ = kwire.init_producer_id(c, 1)
        assert err2 == 0 and pid2 != pid, "every InitProducerId gets a new producer id"

        def batch(seq: int, n: int, e: int = epoch, tag: str = "") -> bytes:
            recs = [kwire.Record(None, f"{tag}{seq + i}".encode()) for i in range(n)]
            return kwire.record_batch(recs, producer_id=pid, producer_epoch=e, base_sequence=seq)

        # Another producer writes first, so offsets are not just sequences.
        other = kwire.record_batch([kwire.Record(None, b"x")] * 2, producer_id=pid2, producer_epoch=0,
                                   base_sequence=0)
        assert kwire.produce(c, pv, topic, 0, other).base_offset == 0
        first = batch(0, 3)
        r1 = kwire.produce(c, pv, topic, 0, first)
        assert (r1.error_code, r1.base_offset) == (0, 2), r1
        r2 = kwire.produce(c, pv, topic, 0, batch(3, 2))
        assert (r2.error_code, r2.base_offset) == (0, 5), r2
        # The same batch again (a retry): its original offset, nothing written.
        again = kwire.produce(c, pv, topic, 0, first)
        assert (again.error_code, again.base_offset) == (0, 2), again
        again2 = kwire.produce(c, pv, topic, 0, batch(3, 2))
        assert (again2.error_code, again2.base_offset) == (0, 5), again2
        # A gap (sequence 6 after 4), and a sequence inside what was written.
        gap = kwire.produce(c, pv, topic, 0, batch(6, 1))
        assert gap.error_code == kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, gap
        inside = kwire.produce(c, pv, topic, 0, batch(1, 1))
        assert inside.error_code == kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, inside
        # A bumped epoch starts at 0; the old epoch is then refused.
        assert kwire.produce(c, pv, topic, 0, batch(2, 1, e=1)).error_code == \
            kwire.OUT_OF_ORDER_SEQUENCE_NUMBER
        bumped = kwire.produce(c, pv, topic, 0, batch(0, 1, e=1, tag="e1-"))
        assert (bumped.error_code, bumped.base_offset) == (0, 7), bumped
        old = kwire.produce(c, pv, topic, 0, batch(5, 1))
        assert old.error_code == kwire.INVALID_PRODUCER_EPOCH, old
        # Clients cannot write transaction markers.
        marker = bytearray(kwire.record_batch([kwire.Record(b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00")],
                                              producer_id=pid, producer_epoch=1, attributes=0x30))
        assert kwire.produce(c, pv, topic, 0, bytes(marker)).error_code == kwire.INVALID_RECORD

        stored = [header(b) for b in fetch_all(c, fv, topic)]
        assert stored == [(0, pid2, 0, 0), (2, pid, 0, 0), (5, pid, 0, 3), (7, pid, 1, 0)], stored
        err, producers = kwire.describe_producers(c, topic, 0)
        assert err == 0
        mine = {p.producer_id: p for p in producers}
        assert (mine[pid].epoch, mine[pid].last_sequence) == (1, 0)
        assert mine[pid2].last_sequence == 1


@pytest.mark.parametrize("fresh_broker", [{"args": ["--producer-id-expiration-ms", "1500",
                                                    "--producer-id-expiration-check-interval-ms", "200"]}],
                         indirect=True)
def test_producer_state_expires(fresh_broker):
    broker = fresh_broker
    topic = unique("expire")
    port = leader_port(broker, topic)
    with kwire.Conn(broker.host, port) as c:
        pv = kwire.pick_version(kwire.negotiate(c), kwire.PRODUCE, 3, 9)
        _, pid, epoch = kwire.init_producer_id(c)
        now = int(time.time() * 1000)

        def batch(seq):
            return kwire.record_batch([kwire.Record(None, b"v")], base_timestamp=now,
                                      producer_id=pid, producer_epoch=epoch, base_sequence=seq)

        assert kwire.produce(c, pv, topic, 0, batch(0)).error_code == 0
        assert kwire.produce(c, pv, topic, 0, batch(5)).error_code == kwire.OUT_OF_ORDER_SEQUENCE_NUMBER
        assert [p.producer_id for p in kwire.describe_producers(c, topic, 0)[1]] == [pid]
        deadline = time.monotonic() + 10
        while kwire.describe_producers(c, topic, 0)[1]:
            assert time.monotonic() < deadline, "producer state never expired"
            time.sleep(0.2)
        # Forgotten: as in Kafka, any sequence is accepted again.
        assert kwire.produce(c, pv, topic, 0, batch(5)).error_code == 0


@pytest.mark.parametrize("fresh_broker", [{"args": ["--upload-interval-ms", "300"]}], indirect=True)
def test_wire_retry_after_kill_9_is_deduplicated(fresh_broker):
    """A batch made durable before a crash and retried after it is answered
    with its first offset: from the WAL tail, and from the producer-state
    snapshot committed with the objects once the WAL was trimmed."""
    broker = fresh_broker
    topic = unique("wire-crash")
    port = leader_port(broker, topic)

    def conn():
        c = kwire.Conn(broker.host, port)
        keys = kwire.negotiate(c)
        return c, kwire.pick_version(keys, kwire.PRODUCE, 3, 9), kwire.pick_version(keys, kwire.FETCH, 4, 11)

    c, pv, fv = conn()
    _, pid, epoch = kwire.init_producer_id(c)

    def batch(seq, n):
        return kwire.record_batch([kwire.Record(None, f"r{seq + i}".encode()) for i in range(n)],
                                  producer_id=pid, producer_epoch=epoch, base_sequence=seq)

    sent = [(0, 4), (4, 2), (6, 3)]
    offsets = [kwire.produce(c, pv, topic, 0, batch(s, n)).base_offset for s, n in sent]
    assert offsets == [0, 4, 6]
    c.close()
    # 1. The batches are only in the WAL: crash, restart, retry them all.
    broker.kill9()
    broker.restart()
    c, pv, fv = conn()
    for (s, n), off in zip(sent, offsets):
        r = kwire.produce(c, pv, topic, 0, batch(s, n))
        assert (r.error_code, r.base_offset) == (0, off), (s, r)
    # 2. Wait until they are uploaded (and the WAL trimmed), then crash.
    deadline = time.monotonic() + 30
    while not any("PartitionProducers" in line and "-0 end=9 " in line
                  for line in broker.tool("metadata-shell").splitlines()):
        assert time.monotonic() < deadline, "no producer-state snapshot was committed"
        time.sleep(0.3)
    time.sleep(1.0)  # the WAL is trimmed right after the commit
    c.close()
    broker.kill9()
    broker.restart()
    c, pv, fv = conn()
    for (s, n), off in list(zip(sent, offsets))[1:]:
        r = kwire.produce(c, pv, topic, 0, batch(s, n))
        assert (r.error_code, r.base_offset) == (0, off), (s, r)
    gap = kwire.produce(c, pv, topic, 0, batch(10, 1))
    assert gap.error_code == kwire.OUT_OF_ORDER_SEQUENCE_NUMBER, gap
    nxt = kwire.produce(c, pv, topic, 0, batch(9, 1))
    assert (nxt.error_code, nxt.base_offset) == (0, 9), nxt
    stored = [header(b)[0] for b in fetch_all(c, fv, topic)]
    assert stored == [0, 4, 6, 9], "each batch stored once"
    c.close()


# -- kill -9 while an idempotent producer writes ----------------------------------

N_CRASH = 200_000


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fresh_broker", [{"args": ["--upload-interval-ms", "1000"]}], indirect=True)
def test_idempotent_producer_survives_two_kill_9(fresh_broker, figures):
    broker = fresh_broker
    topic = unique("idem-crash")
    create_topic(broker, topic, 1)
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "broker.address.family": "v4",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.timeout.ms": 300000,
        "retry.backoff.ms": 100,
        "socket.timeout.ms": 5000,
        "queue.buffering.max.messages": 50000,
    })
    errors: list[str] = []
    acked = [0]
    lock = threading.Lock()

    def on_delivery(err, msg):
        with lock:
            if err is not None:
                errors.append(str(err))
            else:
                acked[0] += 1

    done = threading.Event()

    def produce_all():
        for i in range(N_CRASH):
            while True:
                try:
                    producer.produce(topic, value=f"crash-{i}".encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 500 == 0:
                producer.poll(0)
        producer.flush(300)
        done.set()

    t = threading.Thread(target=produce_all)
    t.start()
    for kill_at in (60_000, 130_000):
        deadline = time.monotonic() + 240
        while acked[0] < kill_at:
            assert time.monotonic() < deadline, f"stuck at {acked[0]} acknowledged"
            assert t.is_alive() or done.is_set()
            time.sleep(0.01)
        broker.kill9()
        time.sleep(0.5)
        # Log retried batches answered from producer state (debug level).
        before = os.environ.get("RUST_LOG")
        os.environ["RUST_LOG"] = "info,broker::shard::append=debug"
        try:
            broker.restart()
        finally:
            if before is None:
                os.environ.pop("RUST_LOG", None)
            else:
                os.environ["RUST_LOG"] = before
    t.join(360)
    assert done.is_set(), "the producer never finished"
    assert not errors, errors[:5]
    assert acked[0] == N_CRASH
    values = consume_values(broker.bootstrap, topic, 1, N_CRASH, timeout=180)
    got = [int(v.decode().split("-")[1]) for v in values[0]]
    assert len(got) == N_CRASH, f"{len(got)} stored for {N_CRASH} sent"
    assert got == list(range(N_CRASH)), "every message exactly once, in order"
    # One producer id throughout: the retries went out under the same id
    # and sequences, so the broker, not luck, kept them from doubling.
    with kwire.Conn(broker.host, leader_port(broker, topic)) as c:
        err, producers = kwire.describe_producers(c, topic, 0)
    assert err == 0 and len(producers) == 1, producers
    assert producers[0].last_sequence == N_CRASH - 1
    dups = broker.log_text().count("retried batch answered with its offsets")
    figures.record(f"idempotent kill -9 x2: {N_CRASH} messages exactly once; "
                   f"{dups} retried batches answered from producer state")
