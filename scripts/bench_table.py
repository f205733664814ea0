"""The side-by-side table of scripts/bench --peer kafka: each figure of each
broker and its ratio to ours, from perf's JSON results and Kafka's
ProducerPerformance output lines.

Usage: bench_table.py OURS_LABEL PRODUCER_PERFORMANCE.txt RESULT.json...
A result's label is "<broker> <preset>" (as scripts/bench names runs).
"""
from __future__ import annotations

import json
import re
import sys


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


def main() -> None:
    ours, pp_file, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    figures: dict[tuple[str, str], dict[str, dict]] = {}
    brokers: list[str] = []
    for path in files:
        with open(path) as f:
            result = json.load(f)
        broker, _, preset = result["label"].partition(" ")
        if broker not in brokers:
            brokers.append(broker)
        if result.get("produce"):
            figures.setdefault((preset, "produce"), {})[broker] = result["produce"]
        consume = result.get("consume") or {}
        if consume.get("e2e_latency"):
            # End to end: consume throughput, latency from produce to consume.
            figures.setdefault((preset, "e2e"), {})[broker] = {
                "mb_per_sec": consume["mb_per_sec"], "latency": consume["e2e_latency"]}
    peers = [b for b in brokers if b != ours]
    print("Throughput (MB/s of values; the ratio is the peer's figure over ours):\n")
    print("| preset | what | " + " | ".join([ours] + peers) + " |")
    print("|---|---|" + "---|" * (1 + len(peers)))
    for (preset, what), by in figures.items():
        base = by.get(ours, {}).get("mb_per_sec", 0.0)
        cells = [f"{base:.1f}"] + [
            f"{by[p]['mb_per_sec']:.1f} ({ratio(by[p]['mb_per_sec'], base)})" if p in by else "-"
            for p in peers]
        print(f"| {preset} | {what} | " + " | ".join(cells) + " |")
    print("\nLatency p50 / p99 ms (ratio of p99 to ours):\n")
    print("| preset | what | " + " | ".join([ours] + peers) + " |")
    print("|---|---|" + "---|" * (1 + len(peers)))
    for (preset, what), by in figures.items():
        lat = {b: r["latency"] for b, r in by.items()}
        base = lat.get(ours, {}).get("p99_ms", 0.0)
        cells = []
        for b in [ours] + peers:
            if b not in lat:
                cells.append("-")
                continue
            cell = f"{lat[b]['p50_ms']:.2f} / {lat[b]['p99_ms']:.2f}"
            if b != ours:
                cell += f" ({ratio(lat[b]['p99_ms'], base)})"
            cells.append(cell)
        print(f"| {preset} | {what} | " + " | ".join(cells) + " |")
    pattern = re.compile(r"^(\S+): (\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), "
                         r"([\d.]+) ms avg latency, ([\d.]+) ms max latency, (\d+) ms 50th, "
                         r"(\d+) ms 95th, (\d+) ms 99th")
    rows = {}
    try:
        with open(pp_file) as f:
            for line in f:
                m = pattern.match(line.strip())
                if m:
                    rows[m.group(1)] = (float(m.group(4)), int(m.group(7)), int(m.group(9)))
    except FileNotFoundError:
        pass
    if rows:
        print("\nKafka's ProducerPerformance (1 KiB records, acks=all, linger 5 ms, 1 MiB batches, "
              "one partition):\n")
        print("| broker | MB/s | p50 ms | p99 ms |")
        print("|---|---|---|---|")
        base = rows.get(ours, (0.0, 0, 0))
        for b, (mb, p50, p99) in rows.items():
            extra = "" if b == ours else f" ({ratio(mb, base[0])})"
            print(f"| {b} | {mb:.1f}{extra} | {p50} | {p99} |")


if __name__ == "__main__":
    main()
