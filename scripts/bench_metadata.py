"""Driver of scripts/bench-metadata: starts the broker on a fresh data dir,
times CreateTopics/DeleteTopics round trips with a raw Kafka client
(scripts/compat/kwire.py), prints the figures and stops the broker."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "compat"))
import kwire  # noqa: E402

CREATE_TOPICS_V = 4
DELETE_TOPICS_V = 3  # v4 is flexible; kwire encodes the classic form


def free_base_port(n: int) -> int:
    for base in range(41000, 60000, 17):
        ok = True
        for p in range(base, base + n):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return base
    raise RuntimeError("no free ports")


def create_topics_body(name: str, partitions: int) -> bytes:
    w = kwire.Writer()
    w.int32(1)  # one topic
    w.string(name).int32(partitions).int16(1)
    w.int32(0)  # assignments
    w.int32(0)  # configs
    w.int32(30000)  # timeout_ms
    w.bool(False)  # validate_only
    return w.getvalue()


def delete_topics_body(name: str) -> bytes:
    w = kwire.Writer()
    w.int32(1).string(name)
    w.int32(30000)
    return w.getvalue()


def topic_error(r: kwire.Reader, create: bool) -> int:
    r.int32()  # throttle_time_ms
    n = r.array_len()
    assert n == 1, n
    r.string()
    err = r.int16()
    if create:
        r.string()  # error_message
    return err


def timed(conn: kwire.Conn, api: int, version: int, body: bytes, create: bool) -> float:
    t0 = time.perf_counter()
    r = conn.request(api, version, body)
    dt = time.perf_counter() - t0
    err = topic_error(r, create)
    if err != 0:
        raise RuntimeError(f"api {api} error {err}")
    return dt * 1000


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def report(label: str, xs: list[float]) -> None:
    print(f"{label:<38} n={len(xs):4d}  p50={pct(xs, 50):6.2f} ms  p90={pct(xs, 90):6.2f} ms  "
          f"p99={pct(xs, 99):6.2f} ms  max={max(xs):6.2f} ms  mean={statistics.mean(xs):6.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("-n", "--count", type=int, default=500)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args()

    data = Path(os.environ.get("BENCH_DIR", "target/bench-metadata")).resolve()
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    base = free_base_port(args.shards)
    log = open(data / "broker.log", "wb")
    cmd = [args.broker, "--data-dir", str(data / "data"), "--shards", str(args.shards),
           "--base-port", str(base), "--listen-host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", base + args.shards - 1), 0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"broker did not start; see {data / 'broker.log'}")
                time.sleep(0.1)
        print(f"broker {args.broker}: {args.shards} shards, data dir {data / 'data'} "
              f"(filesystem of {data}), {args.count} topics x {args.partitions} partitions per run")
        results = {}
        for shard in range(min(2, args.shards)):
            with kwire.Conn("127.0.0.1", base + shard) as c:
                names = [f"bench-s{shard}-{i}" for i in range(args.count)]
                for n in names[:10]:  # warm-up, not counted
                    timed(c, kwire.CREATE_TOPICS, CREATE_TOPICS_V, create_topics_body(n + "-w", 1), True)
                created = [timed(c, kwire.CREATE_TOPICS, CREATE_TOPICS_V,
                                 create_topics_body(n, args.partitions), True) for n in names]
                results[f"CreateTopics via shard {shard}"] = created
                if shard == 0:
                    results["DeleteTopics via shard 0"] = [
                        timed(c, kwire.DELETE_TOPICS, DELETE_TOPICS_V, delete_topics_body(n), False)
                        for n in names]
        for label, xs in results.items():
            report(label, xs)
        worst = max(pct(results[k], 99) for k in results if k.startswith("CreateTopics"))
        verdict = "OK" if worst < 50 else "ABOVE TARGET"
        print(f"CreateTopics commit p99 (worst shard) = {worst:.2f} ms; target < 50 ms: {verdict}")
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
