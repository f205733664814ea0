"""Operator mistakes that must stop a second broker at start (issue 15,
defects 1 and 2): the same data directory, the same WAL, or a port another
broker already serves. The second process exits non-zero with a message
naming what is taken, and the first broker keeps serving its data.
"""

from __future__ import annotations

import os
import random
import subprocess
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

import conftest
import kwire

SECOND_TIMEOUT_S = 20.0


def second_broker(tmp_path, *, shards: int, data_dir, base_port: int, broker_id: int = 0,
                  extra: list[str] | None = None) -> tuple[int | None, str]:
    """Starts a broker process and waits for it to exit. Returns (exit
    code, its output); the exit code is None if it was still running after
    SECOND_TIMEOUT_S (it is then killed: it ran next to the first)."""
    cmd = [str(conftest.broker_bin()), "--data-dir", str(data_dir), "--shards", str(shards),
           "--base-port", str(base_port), "--listen-host", conftest.HOST,
           "--broker-id", str(broker_id), *(extra or [])]
    env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
    env.setdefault("BROKER_WAL_SIZE_BYTES", str(256 << 20))
    log = tmp_path / f"second-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, preexec_fn=conftest._die_with_parent)
        try:
            code = proc.wait(SECOND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            code = None
    return code, log.read_text(errors="replace")


def free_base_port(shards: int) -> int:
    return conftest._pick_base_port(shards, random.Random())


def assert_refused(code: int | None, output: str, *must_name: str) -> None:
    assert code is not None, f"the second broker kept running:\n{output[-3000:]}"
    assert code != 0, f"the second broker exited 0:\n{output[-3000:]}"
    for what in must_name:
        assert what in output, f"the message does not name {what!r}:\n{output[-3000:]}"


def produce_and_read_back(broker, topic: str, n: int = 20) -> None:
    """The first broker still takes writes and returns exactly them."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "acks": "all"})
    errors = []
    for i in range(n):
        p.produce(topic, key=str(i).encode(), value=f"v{i}".encode(), partition=0,
                  on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(30) == 0 and not errors, errors[:3]
    c = Consumer({"bootstrap.servers": broker.bootstrap, "broker.address.family": "v4",
                  "group.id": f"g-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        while len(got) < n:
            msgs = c.consume(n, timeout=10)
            assert msgs, f"only {len(got)} of {n} records read back"
            for m in msgs:
                assert m.error() is None, m.error()
                got.append((m.offset(), m.value().decode()))
        assert got == [(i, f"v{i}") for i in range(n)]
    finally:
        c.close()


def test_second_broker_on_the_same_data_dir_is_refused(fresh_broker, tmp_path):
    topic = f"excl-dir-{uuid.uuid4().hex[:6]}"
    code, out = second_broker(tmp_path, shards=fresh_broker.shards, data_dir=fresh_broker.data_dir,
                              base_port=free_base_port(fresh_broker.shards))
    assert_refused(code, out, str(fresh_broker.data_dir / ".lock"), "in use",
                   f"pid {fresh_broker.pid}")
    produce_and_read_back(fresh_broker, topic)
    # Stopped and started again on the same directory, it takes the lock back.
    fresh_broker.stop()
    fresh_broker.restart()
    produce_and_read_back(fresh_broker, f"{topic}-again")


def test_second_broker_on_the_same_wal_is_refused(fresh_broker, tmp_path):
    wal = fresh_broker.data_dir / "wal"
    assert wal.exists()
    # Another data directory, same broker id and shard count (so the WAL's
    # header would match): only the lock stands between them.
    code, out = second_broker(tmp_path, shards=fresh_broker.shards, data_dir=tmp_path / "other",
                              base_port=free_base_port(fresh_broker.shards),
                              broker_id=fresh_broker.broker_id, extra=["--wal-path", str(wal)])
    assert_refused(code, out, str(wal), "locked by another process")
    produce_and_read_back(fresh_broker, f"excl-wal-{uuid.uuid4().hex[:6]}")


def test_second_broker_on_a_served_port_is_refused(fresh_broker, tmp_path):
    # Another data directory and another broker id: if it ran, Metadata on
    # the shared port would sometimes name its nodes (7000, 7001, ...).
    data_dir = tmp_path / "other"
    code, out = second_broker(tmp_path, shards=fresh_broker.shards, data_dir=data_dir,
                              base_port=fresh_broker.base_port, broker_id=7)
    assert_refused(code, out, f"{fresh_broker.host}:{fresh_broker.base_port}", "already in use")
    assert not (data_dir / "wal").exists(), "the WAL was created before the port check"
    for _ in range(20):
        with kwire.Conn(fresh_broker.host, fresh_broker.ports[-1]) as c:
            md = kwire.metadata(c, 1, None)
        assert md.brokers == fresh_broker.expected_nodes, md.brokers
    produce_and_read_back(fresh_broker, f"excl-port-{uuid.uuid4().hex[:6]}")


def test_a_port_taken_by_another_program_is_refused(tmp_path):
    """Not only brokers: any listener on a shard's port (here the second
    shard's) stops the start before the WAL or metadata are touched."""
    import socket
    base = free_base_port(2)
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    other.bind((conftest.HOST, base + 1))
    other.listen(1)
    try:
        data_dir = tmp_path / "data"
        code, out = second_broker(tmp_path, shards=2, data_dir=data_dir, base_port=base)
        assert_refused(code, out, f"{conftest.HOST}:{base + 1}", "shard 1", "already in use")
        assert not (data_dir / "wal").exists(), "the WAL was created before the port check"
    finally:
        other.close()
