"""Transactions (issue 12, part 2), with confluent-kafka (librdkafka) as the
client, over two shards so that markers also cross to the other shard:

* commit, abort, commit: `read_committed` sees exactly the committed
  records, `read_uncommitted` sees all of them;
* consume-transform-produce with `send_offsets_to_transaction` is atomic:
  an aborted round leaves neither its output nor its offsets;
* an open transaction past its timeout is aborted by the coordinator (and
  no longer holds back `read_committed` readers);
* a second producer with the same transactional id fences the first;
* kill -9 inside a transaction, and during its commit: after the restart
  each transaction is visible as a whole or not at all;
* DescribeTransactions and ListTransactions show the coordinator's state;
* transactions v2 (KIP-890 part 2) on the wire: Produce v12 and
  TxnOffsetCommit v5 add their partitions themselves, EndTxn v5 bumps the
  epoch at every end, and a retried end or a late batch is answered as
  Kafka answers it.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

import kwire
from test_idempotence import create_topic, leader_port

BROKER_PARAMS = {"shards": 2, "broker_id": 0, "args": [
    "--transaction-abort-check-interval-ms", "300",
]}

PARTITIONS = 4


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def txn_producer(broker, txn_id: str, **extra) -> Producer:
    conf = {"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
            "transactional.id": txn_id, "linger.ms": 5}
    conf.update(extra)
    p = Producer(conf)
    p.init_transactions(30)
    return p


def read_all(broker, topic: str, isolation: str, partitions: int = PARTITIONS,
             settle: float = 2.0, timeout: float = 60.0) -> list[str]:
    """Every value in the topic for this isolation level: reads until each
    partition's end (the LSO for read_committed) and nothing more comes."""
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": unique("reader"), "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "isolation.level": isolation,
                  "fetch.wait.max.ms": 100, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[str] = []
    eof: set[int] = set()
    quiet_since = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(1000, timeout=0.3)
            for m in msgs:
                if m.error():
                    if m.error().code() == -191:  # _PARTITION_EOF
                        eof.add(m.partition())
                        continue
                    raise AssertionError(m.error())
                out.append(m.value().decode())
                eof.discard(m.partition())
            if len(eof) == partitions and not msgs:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    break
            else:
                quiet_since = None
    finally:
        c.close()
    return out


def produce_round(p: Producer, topic: str, tag: str, n: int) -> list[str]:
    values = [f"{tag}-{i}" for i in range(n)]
    for i, v in enumerate(values):
        p.produce(topic, value=v.encode(), partition=i % PARTITIONS)
    # Sent and acknowledged before the transaction ends, so that an abort
    # cannot just drop them in the client.
    assert p.flush(30) == 0
    return values


def coordinator_port(broker, key: str, key_type: int = 1) -> int:
    """The port of the coordinator of a transactional id (or, with
    key_type 0, of a group)."""
    with kwire.Conn(broker.host, broker.ports[0]) as c:
        deadline = time.monotonic() + 15
        while True:
            err, node = kwire.find_coordinator(c, key, key_type=key_type)
            if err == 0:
                return broker.port_of_node(node)
            assert time.monotonic() < deadline, f"FindCoordinator error {err}"
            time.sleep(0.2)


def test_commit_abort_commit(broker):
    topic = unique("txn")
    create_topic(broker, topic, PARTITIONS)
    txn_id = unique("tid")
    p = txn_producer(broker, txn_id)
    committed, aborted = [], []
    for tag, commit in [("a", True), ("b", False), ("c", True)]:
        p.begin_transaction()
        values = produce_round(p, topic, tag, 40)
        if commit:
            p.commit_transaction(30)
            committed += values
        else:
            p.abort_transaction(30)
            aborted += values
    rc = read_all(broker, topic, "read_committed")
    ru = read_all(broker, topic, "read_uncommitted")
    assert sorted(rc) == sorted(committed), f"read_committed saw {len(rc)} of {len(committed)}"
    assert sorted(ru) == sorted(committed + aborted)

    with kwire.Conn(broker.host, coordinator_port(broker, txn_id)) as c:
        d = kwire.describe_transaction(c, txn_id)
        assert (d.error_code, d.state, d.partitions) == (0, "CompleteCommit", []), d
        listed = {t[0]: t for t in kwire.list_transactions(c)}
        assert listed[txn_id][2] == "CompleteCommit"
        assert listed[txn_id][1] == d.producer_id
    p.begin_transaction()
    produce_round(p, topic, "d", 4)
    with kwire.Conn(broker.host, coordinator_port(broker, txn_id)) as c:
        d = kwire.describe_transaction(c, txn_id)
        assert d.state == "Ongoing" and d.partitions == [(topic, i) for i in range(PARTITIONS)], d
    p.abort_transaction(30)


def test_consume_transform_produce_is_atomic(broker):
    src, dst = unique("ctp-in"), unique("ctp-out")
    create_topic(broker, src, PARTITIONS)
    create_topic(broker, dst, PARTITIONS)
    n = 200
    plain = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4"})
    for i in range(n):
        plain.produce(src, value=f"in-{i}".encode(), partition=i % PARTITIONS)
    assert plain.flush(30) == 0
    group = unique("ctp-group")

    def run(txn_id: str, rounds: list[bool]) -> None:
        """One processor: each round reads up to 25 records, writes their
        transforms and the input offsets in one transaction, then commits
        or aborts it as `rounds` says."""
        c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                      "group.id": group, "enable.auto.commit": False,
                      "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
        c.subscribe([src])
        p = txn_producer(broker, txn_id)
        try:
            for commit in rounds:
                msgs = []
                deadline = time.monotonic() + 30
                while len(msgs) < 25 and time.monotonic() < deadline:
                    msgs += [m for m in c.consume(25 - len(msgs), timeout=0.5) if not m.error()]
                if not msgs:
                    return
                p.begin_transaction()
                for m in msgs:
                    p.produce(dst, value=m.value().decode().replace("in-", "out-").encode(),
                              partition=m.partition())
                assert p.flush(30) == 0
                p.send_offsets_to_transaction(c.position(c.assignment()),
                                              c.consumer_group_metadata(), 30)
                if commit:
                    p.commit_transaction(30)
                else:
                    p.abort_transaction(30)
                    # Start again from the committed offsets, as a restarted
                    # processor would.
                    committed = c.committed(c.assignment(), timeout=10)
                    for tp in committed:
                        c.seek(TopicPartition(tp.topic, tp.partition,
                                              tp.offset if tp.offset >= 0 else 0))
        finally:
            c.close()

    tid = unique("ctp")
    run(tid, [True, False, True, False])
    # A second processor (same transactional id: it fences nothing open now)
    # finishes the input.
    run(tid, [True] * 20)
    out = read_all(broker, dst, "read_committed")
    assert sorted(out) == sorted(f"out-{i}" for i in range(n)), \
        f"{len(out)} outputs, {len(set(out))} distinct"
    # The group's committed offsets are the ends of the input.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": group})
    try:
        committed = c.committed([TopicPartition(src, i) for i in range(PARTITIONS)], timeout=10)
    finally:
        c.close()
    assert sum(tp.offset for tp in committed) == n, committed
    # read_uncommitted also has the aborted rounds' outputs.
    assert len(read_all(broker, dst, "read_uncommitted")) > n


def test_timed_out_transaction_is_aborted(broker):
    topic = unique("txn-timeout")
    create_topic(broker, topic, PARTITIONS)
    txn_id = unique("slow")
    slow = txn_producer(broker, txn_id, **{"transaction.timeout.ms": 1500})
    slow.begin_transaction()
    stuck = produce_round(slow, topic, "stuck", 20)
    # While it is open, a later committed transaction is held back.
    other = txn_producer(broker, unique("other"))
    other.begin_transaction()
    later = produce_round(other, topic, "later", 20)
    other.commit_transaction(30)
    with kwire.Conn(broker.host, coordinator_port(broker, txn_id)) as c:
        deadline = time.monotonic() + 20
        while True:
            d = kwire.describe_transaction(c, txn_id)
            if d.state == "CompleteAbort":
                break
            assert time.monotonic() < deadline, f"not aborted after its timeout: {d}"
            time.sleep(0.2)
        assert d.producer_epoch >= 1, "the timed-out producer is fenced by an epoch bump"
    rc = read_all(broker, topic, "read_committed")
    assert sorted(rc) == sorted(later), "read_committed must see the later commit only"
    assert sorted(read_all(broker, topic, "read_uncommitted")) == sorted(stuck + later)
    # The timed-out producer cannot commit what the coordinator aborted.
    with pytest.raises(KafkaException):
        slow.commit_transaction(10)


def test_second_producer_fences_the_first(broker):
    topic = unique("txn-fence")
    create_topic(broker, topic, PARTITIONS)
    txn_id = unique("fence")
    first = txn_producer(broker, txn_id)
    first.begin_transaction()
    open_values = produce_round(first, topic, "first", 12)
    second = txn_producer(broker, txn_id)  # aborts first's open transaction
    second.begin_transaction()
    kept = produce_round(second, topic, "second", 12)
    second.commit_transaction(30)
    with pytest.raises(KafkaException) as e:
        first.commit_transaction(10)
    err = e.value.args[0]
    assert err.fatal() or "fenced" in str(err).lower(), err
    assert sorted(read_all(broker, topic, "read_committed")) == sorted(kept)
    assert sorted(read_all(broker, topic, "read_uncommitted")) == sorted(open_values + kept)


def test_kill9_inside_and_during_commit_is_all_or_nothing(broker):
    topic = unique("txn-crash")
    create_topic(broker, topic, PARTITIONS)
    txn_id = unique("crash")
    p = txn_producer(broker, txn_id)
    p.begin_transaction()
    before = produce_round(p, topic, "before", 20)
    p.commit_transaction(30)
    # 1. kill -9 between AddPartitionsToTxn and EndTxn.
    p.begin_transaction()
    open_values = produce_round(p, topic, "open", 20)
    broker.kill9()
    broker.restart()
    # The new incarnation of the producer aborts what the old one left.
    p2 = txn_producer(broker, txn_id)
    assert sorted(read_all(broker, topic, "read_committed")) == sorted(before)
    # 2. kill -9 while EndTxn (commit) is being handled, at a few delays.
    visible = list(before)
    everything = before + open_values
    for round_no, delay in enumerate([0.0, 0.002, 0.01]):
        p2.begin_transaction()
        values = produce_round(p2, topic, f"commit{round_no}", 20)
        everything += values
        t = threading.Thread(target=lambda: _try_commit(p2), daemon=True)
        t.start()
        time.sleep(delay)
        broker.kill9()
        broker.restart()
        t.join(60)
        # A new producer finishes or aborts whatever was half-ended.
        p2 = txn_producer(broker, txn_id)
        rc = read_all(broker, topic, "read_committed")
        new = sorted(set(rc) - set(visible))
        assert new in ([], sorted(values)), \
            f"round {round_no}: {len(new)} of {len(values)} records of one transaction visible"
        visible = rc
    assert sorted(read_all(broker, topic, "read_uncommitted")) == sorted(everything)


def add_partitions(c: kwire.Conn, version: int, txn_id: str, pid: int, epoch: int,
                   topic: str, partition: int, verify_only: bool = False) -> int:
    """AddPartitionsToTxn (v3: the client form; v4+: the batched form with
    VerifyOnly): the partition's error code."""
    w = kwire.Writer()
    if version >= 4:
        w.array_len(1, compact=True).string(txn_id, compact=True).int64(pid).int16(epoch)
        w.bool(verify_only)
    else:
        w.string(txn_id, compact=True).int64(pid).int16(epoch)
    w.array_len(1, compact=True).string(topic, compact=True)
    w.array_len(1, compact=True).int32(partition).tags(True)
    if version >= 4:
        w.tags(True)
    r = c.request(kwire.ADD_PARTITIONS_TO_TXN, version, w.tags(True).getvalue())
    r.int32()  # throttle_time_ms
    if version >= 4:
        assert r.int16() == 0
        assert r.array_len(compact=True) == 1 and r.string(compact=True) == txn_id
    assert r.array_len(compact=True) == 1 and r.string(compact=True) == topic
    assert r.array_len(compact=True) == 1 and r.int32() == partition
    return r.int16()


def test_verify_only_answers_as_kafka_per_version(broker):
    """AddPartitionsToTxn with VerifyOnly (KIP-890 part 1): a partition
    outside the transaction is INVALID_TXN_STATE at v4 and
    TRANSACTION_ABORTABLE from v5, as Kafka's coordinator answers; once
    added, it verifies."""
    topic, txn_id = unique("verify"), unique("verify-tx")
    create_topic(broker, topic, 1)
    with kwire.Conn(broker.host, coordinator_port(broker, txn_id)) as c:
        err, pid, epoch = kwire.init_producer_id(c, 5, txn_id)
        assert err == 0, err
        assert add_partitions(c, 4, txn_id, pid, epoch, topic, 0, verify_only=True) == 48
        assert add_partitions(c, 5, txn_id, pid, epoch, topic, 0, verify_only=True) == 120
        assert add_partitions(c, 3, txn_id, pid, epoch, topic, 0) == 0
        for v in (4, 5):
            assert add_partitions(c, v, txn_id, pid, epoch, topic, 0, verify_only=True) == 0


def _try_commit(p: Producer) -> None:
    try:
        p.commit_transaction(20)
    except KafkaException:
        pass


TRANSACTIONAL = 0x10  # the record batch attribute


def produce_v12(broker, topic: str, partition: int, txn_id: str, pid: int, epoch: int,
                seq: int, values: list[str]) -> int:
    """A transactional batch sent as a transactions v2 client sends it:
    Produce v12 with no AddPartitionsToTxn before it. Its error code."""
    batch = kwire.record_batch([kwire.Record(None, v.encode()) for v in values],
                               producer_id=pid, producer_epoch=epoch, base_sequence=seq,
                               attributes=TRANSACTIONAL)
    with kwire.Conn(broker.host, leader_port(broker, topic, partition)) as c:
        body = kwire.produce_body(12, -1, 10000, {topic: {partition: batch}},
                                  transactional_id=txn_id)
        return kwire.parse_produce(c.request(kwire.PRODUCE, 12, body), 12)[(topic, partition)].error_code


def test_transactions_v2_on_the_wire(broker):
    """What a Java 4 client with transaction.version 2 sends, byte by byte:
    no AddPartitionsToTxn or AddOffsetsToTxn (TxnOffsetCommit v5, and v6 by
    topic id); the partition leaders (on both
    shards) and the group coordinator add their partitions; EndTxn v5
    answers the bumped epoch; a retried end is answered as done; a late
    batch of the old epoch is fenced; read_committed sees exactly the
    committed transaction."""
    topic, txn_id, group = unique("tv2"), unique("tv2-tx"), unique("tv2-group")
    create_topic(broker, topic, PARTITIONS)
    with kwire.Conn(broker.host, broker.ports[0]) as c:
        features = kwire.finalized_features(kwire.api_versions(c, 3))
        assert features.get("transaction.version") == (2, 2), features
    coord = coordinator_port(broker, txn_id)
    with kwire.Conn(broker.host, coord) as c:
        err, pid, epoch = kwire.init_producer_id(c, 5, txn_id)
        assert (err, epoch) == (0, 0)

    # Round 1, committed: every partition, one of them twice.
    committed = [f"one-{p}" for p in range(PARTITIONS)] + ["one-0b"]
    for p in range(PARTITIONS):
        assert produce_v12(broker, topic, p, txn_id, pid, 0, 0, [f"one-{p}"]) == 0
    assert produce_v12(broker, topic, 0, txn_id, pid, 0, 1, ["one-0b"]) == 0
    with kwire.Conn(broker.host, coordinator_port(broker, group, key_type=0)) as g:
        assert kwire.txn_offset_commit(g, 5, txn_id, group, pid, 0, topic, 0, 42) == 0
        # v6 names the topic by id; an id no topic has is UNKNOWN_TOPIC_ID.
        tid = kwire.metadata(g, 12, [topic]).topics[topic].topic_id
        assert kwire.txn_offset_commit(g, 6, txn_id, group, pid, 0, topic, 1, 43,
                                       topic_id=tid) == 0
        assert kwire.txn_offset_commit(g, 6, txn_id, group, pid, 0, "", 1, 44,
                                       topic_id=uuid.uuid4()) == kwire.UNKNOWN_TOPIC_ID
    with kwire.Conn(broker.host, coord) as c:
        d = kwire.describe_transaction(c, txn_id)
        assert d.state == "Ongoing", d
        assert {(topic, p) for p in range(PARTITIONS)} <= set(d.partitions), d
        assert any(t == "__consumer_offsets" for t, _ in d.partitions), d
        assert kwire.end_txn(c, 5, txn_id, pid, 0, True) == (0, pid, 1)
        # The client's retry of that end (its answer was lost): done.
        assert kwire.end_txn(c, 5, txn_id, pid, 0, True) == (0, pid, 1)
        # ... but not as the opposite end.
        assert kwire.end_txn(c, 5, txn_id, pid, 0, False)[0] == 48  # INVALID_TXN_STATE
    with kwire.Conn(broker.host, coordinator_port(broker, group, key_type=0)) as g:
        deadline = time.monotonic() + 15
        while (got := kwire.offset_fetch(g, 7, group, topic, 0)).offset != 42:
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert kwire.offset_fetch(g, 7, group, topic, 1).offset == 43

    # A late batch of the ended transaction's epoch is fenced.
    assert produce_v12(broker, topic, 1, txn_id, pid, 0, 1, ["late"]) == kwire.INVALID_PRODUCER_EPOCH

    # Round 2 at the bumped epoch, sequences from 0, aborted.
    assert produce_v12(broker, topic, 0, txn_id, pid, 1, 0, ["two-0"]) == 0
    assert produce_v12(broker, topic, 2, txn_id, pid, 1, 0, ["two-2"]) == 0
    with kwire.Conn(broker.host, coord) as c:
        # Two epochs back is no retry.
        assert kwire.end_txn(c, 5, txn_id, pid, 0, False)[0] == 90  # PRODUCER_FENCED
        assert kwire.end_txn(c, 5, txn_id, pid, 1, False) == (0, pid, 2)
        d = kwire.describe_transaction(c, txn_id)
        assert (d.state, d.producer_epoch) == ("CompleteAbort", 2), d

    assert sorted(read_all(broker, topic, "read_committed")) == sorted(committed)
    assert sorted(read_all(broker, topic, "read_uncommitted")) == sorted(committed + ["two-0", "two-2"])


def test_write_txn_markers_v2_checks_the_bumped_epoch(broker):
    """WriteTxnMarkers v2 (KIP-1228): a marker of transaction version 2 must
    carry an epoch above the producer's (its end bumped it), except when it
    repeats a marker already written; v1 keeps Kafka's older rule (not
    below the producer's)."""
    topic, pid = unique("wtm"), 777_000 + int(uuid.uuid4().int % 1000)
    create_topic(broker, topic, 1)
    batch = kwire.record_batch([kwire.Record(None, b"open")], producer_id=pid, producer_epoch=3,
                               base_sequence=0, attributes=TRANSACTIONAL)
    with kwire.Conn(broker.host, leader_port(broker, topic, 0)) as c:
        body = kwire.produce_body(11, -1, 10000, {topic: {0: batch}}, transactional_id="wtm")
        assert kwire.parse_produce(c.request(kwire.PRODUCE, 11, body), 11)[(topic, 0)].error_code == 0
        for epoch in (2, 3):
            assert kwire.write_txn_marker(c, 2, pid, epoch, True, topic, 0,
                                          transaction_version=2) == kwire.INVALID_PRODUCER_EPOCH
        assert kwire.write_txn_marker(c, 2, pid, 4, True, topic, 0, transaction_version=2) == 0
        # The same marker again (a coordinator finishing after a crash).
        assert kwire.write_txn_marker(c, 2, pid, 4, True, topic, 0, transaction_version=2) == 0
        # Older epochs stay fenced, at either version.
        assert kwire.write_txn_marker(c, 1, pid, 3, False, topic, 0) == kwire.INVALID_PRODUCER_EPOCH
        assert kwire.write_txn_marker(c, 2, pid, 3, False, topic, 0) == kwire.INVALID_PRODUCER_EPOCH
    assert read_all(broker, topic, "read_committed", partitions=1) == ["open"]
