"""Many and slow connections (issue 15, defect 6): connection limits, idle
close, and a producer that keeps its latency while 1,000 idle connections
and 50 slow-loris connections (each dribbling a frame a byte at a time) sit
on the same shard.

Each test gets its own one-shard broker (`fresh_broker`, flags through
indirect parametrization), so every connection lands on the shard that
leads the producer's partition.
"""

from __future__ import annotations

import resource
import socket
import statistics
import struct
import threading
import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

import kwire
from kwire import Conn

IDLE_CONNECTIONS = 1000
SLOW_LORIS_CONNECTIONS = 50
# What a slow-loris claims to send: large, so a broker that sizes its buffer
# by the claim rather than by what arrived shows it in RSS.
SLOW_LORIS_CLAIM = 64 << 20
SLOW_LORIS_BYTE_EVERY_S = 0.2

PRODUCE_RATE = 500  # messages per second
# The producer runs windows without and with the connections, alternately,
# so a disturbance of the machine (a slow fsync, a neighbour's build) falls
# on both sides rather than on one. acks=all latency here is mostly fsync:
# on a shared machine one window in several stalls for up to seconds, with
# or without any extra connection (seen on the code before this change
# too), so the test compares the median of the windows' p99s of each side;
# the p99 over all messages of each side is reported as well.
WINDOWS = 8
# Rounds of WINDOWS measured at most (see the test).
ROUNDS = 3
WINDOW_S = 3.0
WARM_UP_S = 3.0
PAUSE_S = 1.0
P99_RATIO_LIMIT = 2.0
# Resident set of the whole broker (one shard, 256 MiB WAL file) while the
# connections are open. Measured: about 23 MiB before the first attack and
# 38 MiB during it, so about 15 KiB per connection (8 KiB read buffer, the
# slow-loris frames' first 8 KiB, the task). The limits leave room for
# allocator noise, not for per-connection buffers of 64 KiB as before
# (1,050 x 64 KiB alone is 66 MiB).
RSS_LIMIT_KIB = 96 * 1024
RSS_GROWTH_LIMIT_KIB = 32 * 1024


def _raise_fd_limit(need: int) -> None:
    """Raised at import, before the broker starts, so it inherits it too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


_raise_fd_limit(4 * (IDLE_CONNECTIONS + SLOW_LORIS_CONNECTIONS))


def broker_with(*args: str):
    return pytest.mark.parametrize("fresh_broker", [{"shards": 1, "args": list(args)}],
                                   indirect=True)


def open_socket(broker, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection((broker.host, broker.ports[0]), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_by_broker(s: socket.socket, within: float) -> bool:
    """True if the broker closes (or resets) `s` within `within` seconds;
    anything it sends first is ignored."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        s.settimeout(left)
        try:
            if not s.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def serves(broker) -> bool:
    try:
        with Conn(broker.host, broker.ports[0], 5.0) as c:
            return kwire.api_versions(c, 3).error_code == kwire.NONE
    except (kwire.Closed, OSError):
        return False


def broker_sockets(broker) -> int:
    """Open sockets of the broker process (its listener included)."""
    import os
    n = 0
    for fd in os.listdir(f"/proc/{broker.pid}/fd"):
        try:
            if os.readlink(f"/proc/{broker.pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def settle() -> None:
    """Lets the broker see the close of conftest's readiness probe, which
    would otherwise still hold a slot when a test starts counting."""
    time.sleep(0.5)


def refusal_lines(broker) -> int:
    return broker.log_path.read_text(errors="replace").count("refused connection")


def hold_connections(broker, n: int) -> list[Conn]:
    """`n` open connections, each shown to be served."""
    settle()
    held = [Conn(broker.host, broker.ports[0], 5.0) for _ in range(n)]
    for c in held:
        assert kwire.api_versions(c, 3).error_code == kwire.NONE
    return held


# -- limits ----------------------------------------------------------------------

@broker_with("--max-connections-per-ip", "5")
def test_max_connections_per_ip_refuses_beyond_the_limit(fresh_broker):
    b = fresh_broker
    held = hold_connections(b, 5)
    # The sixth from the same address is closed at once.
    s = open_socket(b)
    assert closed_by_broker(s, 5.0), "connection beyond max_connections_per_ip stayed open"
    s.close()
    # A flood of refusals is logged once, with a count, not once each.
    for _ in range(50):
        s = open_socket(b)
        assert closed_by_broker(s, 5.0)
        s.close()
    assert refusal_lines(b) == 1, f"{refusal_lines(b)} refusal lines for 51 refusals"
    assert "max_connections_per_ip (5)" in b.log_path.read_text(errors="replace")
    # The admitted ones still work; closing one gives its slot back.
    for c in held:
        assert kwire.api_versions(c, 3).error_code == kwire.NONE
    held.pop().close()
    deadline = time.monotonic() + 5
    while not serves(b):
        assert time.monotonic() < deadline, "a released slot was not given back"
        time.sleep(0.1)
    for c in held:
        c.close()


@broker_with("--max-connections", "3")
def test_max_connections_refuses_beyond_the_limit(fresh_broker):
    b = fresh_broker
    held = hold_connections(b, 3)
    s = open_socket(b)
    assert closed_by_broker(s, 5.0), "connection beyond max_connections stayed open"
    s.close()
    assert "max_connections (3) reached" in b.log_path.read_text(errors="replace")
    for c in held:
        c.close()
    deadline = time.monotonic() + 5
    while not serves(b):
        assert time.monotonic() < deadline, "closed connections did not give their slots back"
        time.sleep(0.1)


# -- idle close ------------------------------------------------------------------

@broker_with("--connections-max-idle-ms", "1500")
def test_idle_connections_close_and_busy_ones_stay(fresh_broker):
    b = fresh_broker
    idle = Conn(b.host, b.ports[0], 5.0)
    assert kwire.api_versions(idle, 3).error_code == kwire.NONE
    busy = Conn(b.host, b.ports[0], 5.0)
    # Dribbles a frame and never completes it: no complete request.
    loris = open_socket(b)
    loris.sendall(struct.pack(">i", 1000))

    t0 = time.monotonic()
    idle_closed_at = None
    while time.monotonic() - t0 < 4.5:
        # A request every 0.5 s keeps `busy` open well past the idle limit.
        assert kwire.api_versions(busy, 3).error_code == kwire.NONE, "a busy connection was closed"
        try:
            loris.sendall(b"x")
        except OSError:
            pass
        if idle_closed_at is None and closed_by_broker(idle.sock, 0.5):
            idle_closed_at = time.monotonic() - t0
        else:
            time.sleep(0.5)
    assert idle_closed_at is not None, "an idle connection was not closed after 1.5 s"
    assert 1.0 <= idle_closed_at <= 4.0, f"idle connection closed after {idle_closed_at:.1f} s"
    assert closed_by_broker(loris, 1.0), "a connection dribbling a frame was not closed"
    busy.close()
    loris.close()


@broker_with("--connections-max-idle-ms", "2000")
def test_a_client_that_never_reads_is_closed(fresh_broker):
    """Pipelines far more requests than the broker keeps in flight and never
    reads the answers: the broker stops reading from it and closes it once
    no request has completed for the idle time."""
    b = fresh_broker
    s = open_socket(b)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    req = kwire.encode_request(kwire.API_VERSIONS, 3, 1, kwire.api_versions_body(3))
    s.settimeout(0.2)
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:
        try:
            s.send(req * 64)
            sent += 64
        except socket.timeout:
            break  # the broker stopped reading from us
    assert sent > 128, f"only {sent} requests went out before the broker stopped reading"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    # Now drain: every queued request is answered, then, with nothing left
    # to complete, the idle limit closes the connection. What the kernel's
    # buffers queued (megabytes of requests) takes a debug build seconds to
    # answer, so the limit is generous.
    assert closed_by_broker(s, 30.0), f"a connection that never reads stayed open ({sent} requests sent)"
    s.close()
    assert serves(b)


FETCH_FLOOD_REQUESTS = 100
FETCH_FLOOD_PARTITION_BYTES = 8 << 20
# Growth of the broker's RSS while one connection has pipelined the fetches
# above and reads nothing. Each response is a fresh 8 MiB buffer: held all
# at once (as before: up to 128 in flight) they are 800 MiB; the broker now
# builds one Fetch response at a time per connection and stops reading
# once 16 MiB of responses wait unsent.
FETCH_FLOOD_GROWTH_LIMIT_KIB = 96 * 1024


@broker_with("--connections-max-idle-ms", "30000")
def test_fetches_a_client_never_reads_hold_bounded_memory(fresh_broker):
    """Pipelines 100 fetches of 8 MiB each and reads none of the answers:
    the broker's memory grows by a bounded amount, not by 100 responses,
    and it goes on serving others."""
    b = fresh_broker
    topic = f"flood-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": b.bootstrap, "broker.address.family": "v4"})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    p = Producer({"bootstrap.servers": b.bootstrap, "broker.address.family": "v4",
                  "linger.ms": 20, "batch.size": 1 << 20})
    value = b"v" * (64 << 10)
    for _ in range(24 << 4):  # 24 MiB
        while True:
            try:
                p.produce(topic, value)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0
    time.sleep(1.0)
    rss_before = b.rss_kib()

    s = open_socket(b)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = kwire.fetch_body(11, topic, 0, 0, max_wait_ms=0, max_bytes=64 << 20,
                            partition_max_bytes=FETCH_FLOOD_PARTITION_BYTES)
    s.settimeout(0.5)
    sent = 0
    try:
        for i in range(FETCH_FLOOD_REQUESTS):
            s.sendall(kwire.encode_request(kwire.FETCH, 11, i, body))
            sent += 1
    except socket.timeout:
        pass  # the broker stopped reading from us
    peak = 0
    for _ in range(10):
        time.sleep(0.3)
        peak = max(peak, b.rss_kib())
    growth = peak - rss_before
    print(f"{sent} fetches sent, broker RSS {rss_before // 1024} MiB before, "
          f"{peak // 1024} MiB at most while unread")
    assert growth < FETCH_FLOOD_GROWTH_LIMIT_KIB, \
        f"broker RSS grew by {growth // 1024} MiB for one connection that does not read"
    assert serves(b)
    s.close()


# -- idle + slow-loris under a producer ---------------------------------------------

class Attack:
    """Opens `IDLE_CONNECTIONS` idle and `SLOW_LORIS_CONNECTIONS` dribbling
    connections, and keeps dribbling until closed."""

    def __init__(self, broker) -> None:
        self.broker = broker
        self.idle: list[socket.socket] = []
        self.loris: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.dribbled = 0

    def open(self) -> None:
        self.stop.clear()
        for _ in range(IDLE_CONNECTIONS):
            self.idle.append(open_socket(self.broker))
        header = struct.pack(">i", SLOW_LORIS_CLAIM)
        for _ in range(SLOW_LORIS_CONNECTIONS):
            s = open_socket(self.broker)
            s.sendall(header)  # a frame of 64 MiB is coming, one byte at a time
            self.loris.append(s)
        self.thread = threading.Thread(target=self._dribble, daemon=True)
        self.thread.start()

    def _dribble(self) -> None:
        while not self.stop.wait(SLOW_LORIS_BYTE_EVERY_S):
            for s in self.loris:
                s.sendall(b"\x01")
                self.dribbled += 1

    def close(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join()
        for s in self.idle + self.loris:
            s.close()
        self.idle.clear()
        self.loris.clear()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


@broker_with()
def test_idle_and_slow_loris_connections_do_not_slow_a_producer(fresh_broker, figures):
    b = fresh_broker
    topic = f"conns-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": b.bootstrap, "broker.address.family": "v4"})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic] \
        .result(timeout=30)
    producer = Producer({"bootstrap.servers": b.bootstrap, "broker.address.family": "v4",
                         "acks": "all", "linger.ms": 0, "enable.idempotence": False,
                         "message.timeout.ms": 30000})
    latencies: dict[bool, list[float]] = {False: [], True: []}
    window_p99s: dict[bool, list[float]] = {False: [], True: []}
    errors: list[str] = []

    def on_delivery(sent_at: float, attacked: bool, err, _msg) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            latencies[attacked].append(time.monotonic() - sent_at)

    def produce_for(seconds: float, attacked: bool) -> int:
        """Produces at PRODUCE_RATE for `seconds`; returns how many."""
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        n = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now < next_at:
                producer.poll(next_at - now)
                continue
            producer.produce(topic, b"v" * 100,
                             on_delivery=lambda e, m, t=now, a=attacked: on_delivery(t, a, e, m))
            producer.poll(0)
            next_at += 1.0 / PRODUCE_RATE
            n += 1
        assert producer.flush(30) == 0
        return n

    # Warm up (not counted): metadata, connection, and the first writes to
    # a fresh WAL file, which are slow on some file systems.
    produce_for(WARM_UP_S, False)
    latencies[False].clear()

    attack = Attack(b)
    rss_before = b.rss_kib()
    rss_during = 0
    sockets_during = 0
    # This disk stalls acks=all now and then whatever the load, so a round
    # whose ratio fails is measured again, up to ROUNDS times: connections
    # that really slow the producer fail every round.
    for round_ in range(ROUNDS):
        for side in (False, True):
            latencies[side].clear()
            window_p99s[side].clear()
        try:
            for window in range(WINDOWS):
                attacked = window % 2 == 1
                opened = time.monotonic()
                if attacked:
                    attack.open()
                # Both sides start alike: opening the connections takes a
                # moment, so a window without them waits as long first.
                time.sleep(max(0.0, opened + PAUSE_S - time.monotonic()))
                i = produce_for(WINDOW_S, attacked)
                w = latencies[attacked][-i:]
                window_p99s[attacked].append(p99(w))
                print(f"round {round_} window {window} "
                      f"{'with' if attacked else 'without'} the connections: "
                      f"{len(w)} messages, p99 {p99(w) * 1000:.1f} ms, max {max(w) * 1000:.1f} ms")
                if attacked:
                    rss_during = max(rss_during, b.rss_kib())
                    sockets_during = max(sockets_during, broker_sockets(b))
                    attack.close()
        finally:
            attack.close()

        assert not errors, f"{len(errors)} delivery errors, first: {errors[:3]}"
        n_without, n_with = len(latencies[False]), len(latencies[True])
        assert min(n_without, n_with) > PRODUCE_RATE * WINDOW_S
        # The attack was real: the broker held every connection.
        assert sockets_during > IDLE_CONNECTIONS + SLOW_LORIS_CONNECTIONS, \
            f"broker held only {sockets_during} sockets during the attack"
        p99_without, p99_with = p99(latencies[False]), p99(latencies[True])
        med_without, med_with = median(window_p99s[False]), median(window_p99s[True])
        figures.record(f"connections (round {round_ + 1}): producer p99 (median of "
                       f"{WINDOWS // 2} windows) {med_without * 1000:.2f} ms without, "
                       f"{med_with * 1000:.2f} ms with {IDLE_CONNECTIONS} idle + "
                       f"{SLOW_LORIS_CONNECTIONS} slow-loris connections (all messages: "
                       f"{p99_without * 1000:.2f} / {p99_with * 1000:.2f} ms); broker RSS "
                       f"{rss_before // 1024} MiB before, {rss_during // 1024} MiB during")
        if med_with <= P99_RATIO_LIMIT * med_without:
            break
    assert med_with <= P99_RATIO_LIMIT * med_without, \
        f"p99 {med_with * 1000:.2f} ms with the connections, {med_without * 1000:.2f} ms without"
    assert rss_during < RSS_LIMIT_KIB, f"broker RSS {rss_during} KiB during the attack"
    assert rss_during - rss_before < RSS_GROWTH_LIMIT_KIB, \
        f"broker RSS grew from {rss_before} to {rss_during} KiB during the attack"
    assert serves(b)
