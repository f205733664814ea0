"""kcat (Debian's, built on librdkafka 2.0.2) against the broker.

librdkafka 2.0.2 cannot skip default-valued tagged fields in the ApiVersions
v3 response (DESIGN.md section 10); if the broker sends them, kcat fails to
connect at all and every test here fails.

The broker runs with broker id 3, so the shards must appear as nodes 3000 and
3001, and with 4 partitions per auto-created topic so a kcat round trip uses
both shards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

BROKER_PARAMS = {"shards": 2, "broker_id": 3, "args": ["--num-partitions", "4"]}
N_LINES = 3000

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")


def kcat(args: list[str], input_bytes: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = ["kcat", "-X", "broker.address.family=v4", *args]
    try:
        p = subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} still running after {timeout}s; stdout had "
                    f"{len((e.stdout or b'').splitlines())} lines\nstderr: "
                    f"{(e.stderr or b'').decode(errors='replace')[-2000:]}", pytrace=False)
    assert p.returncode == 0, (f"{' '.join(cmd)} exited {p.returncode}\n"
                               f"stderr: {p.stderr.decode(errors='replace')[-2000:]}")
    return p


def flat_headers(h) -> list:
    """kcat 1.7 prints headers as [name, value, ...]; its help says an object."""
    if isinstance(h, dict):
        return [x for kv in h.items() for x in kv]
    return list(h or [])


def first_shard(broker) -> str:
    return f"{broker.host}:{broker.ports[0]}"


@pytest.mark.parametrize("shard", [0, 1])
def test_metadata_lists_every_shard(broker, shard):
    p = kcat(["-L", "-J", "-b", f"{broker.host}:{broker.ports[shard]}"])
    md = json.loads(p.stdout)
    got = {b["id"]: b["name"] for b in md["brokers"]}
    want = {node: f"{host}:{port}" for node, (host, port) in broker.expected_nodes.items()}
    assert got == want
    assert set(want) == {3000, 3001}


@pytest.mark.parametrize("compression", ["none", "snappy"])
def test_produce_consume_round_trip(broker, compression):
    topic = f"kcat-{compression}-{uuid.uuid4().hex[:8]}"
    lines = [f"key-{i:05d}:value {i} {'x' * (i % 50)}" for i in range(N_LINES)]
    # -K: splits key from value at the first ':'; auto-create makes 4 partitions.
    kcat(["-P", "-b", first_shard(broker), "-t", topic, "-K", ":", "-z", compression,
          "-H", "source=kcat", "-X", "topic.request.required.acks=-1"],
         input_bytes=("\n".join(lines) + "\n").encode())

    md = json.loads(kcat(["-L", "-J", "-b", first_shard(broker), "-t", topic]).stdout)
    t = [t for t in md["topics"] if t["topic"] == topic]
    assert t and not t[0].get("error"), md
    leaders = {p["partition"]: p["leader"] for p in t[0]["partitions"]}
    assert sorted(leaders) == [0, 1, 2, 3]
    assert set(leaders.values()) == {3000, 3001}, f"partitions should be spread over both shards: {leaders}"

    out = kcat(["-C", "-b", first_shard(broker), "-t", topic, "-o", "beginning", "-e", "-J", "-q"]).stdout
    msgs = [json.loads(line) for line in out.decode().splitlines() if line.strip()]

    expected = {}
    for ln in lines:
        k, v = ln.split(":", 1)
        expected[k] = v
    got = {}
    by_partition: dict[int, list[tuple[int, str]]] = {}
    for m in msgs:
        assert m["topic"] == topic
        assert m["key"] not in got, f"duplicate message {m}"
        got[m["key"]] = m["payload"]
        assert flat_headers(m.get("headers")) == ["source", "kcat"], m
        assert m["broker"] == leaders[m["partition"]], f"fetched from {m['broker']}, leader is {leaders[m['partition']]}"
        by_partition.setdefault(m["partition"], []).append((m["offset"], m["key"]))
    assert got == expected, f"{len(expected)} sent, {len(got)} received, {len(set(expected) ^ set(got))} differ"
    assert len(by_partition) > 1, "all messages landed in one partition"
    for p, entries in by_partition.items():
        offsets = [o for o, _ in entries]
        assert offsets == list(range(len(entries))), f"partition {p}: offsets {offsets[:10]}... not 0..n-1"
        keys = [k for _, k in entries]
        assert keys == sorted(keys), f"partition {p}: not in produce order"
