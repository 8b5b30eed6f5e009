"""Model serving under a sustained load: 60 seconds at saturation, no failed request, flat memory.

Usage::

    .venv/bin/python benchmarks/serving_soak.py [--duration 60] [--warmup 2] [--concurrency 64] [--rows 1]
                                                [--slice 10] [--no-batching] [--server-cpu 0] [--load-cpu 1] [--keep]

The same model, server and load generator as ``benchmarks/serving.py`` (see there): ``iris-bench``
version 1 in a new SQLite store, served by ``python -m jupyter_mlflow_k8s.serving models:/iris-bench/1
--workers 1`` (dynamic batching on unless ``--no-batching``) pinned to CPU ``--server-cpu``; the
closed-loop generator (``benchmarks/loadgen.py``) on CPU ``--load-cpu`` with ``--concurrency`` users
(64: the server's core is saturated, see the CPU column) sending single-row ``dataframe_split``
requests for ``--warmup`` + ``--duration`` seconds.

Reported: total requests over the whole run (warm-up included), failed requests (non-200 answers
and connection errors; the goal is 0), throughput in each ``--slice``-second slice of the measured
window, p50/p99 latency over the window, and the server's resident memory (RSS of its process tree,
psutil) sampled every second from just before the load starts to its end: first, last and maximum,
and the least-squares slope in MiB per minute over the whole window and over its second half (the
first seconds may still grow caches and allocator pools). The RSS right after the server answered
``/ping``, before any load, is printed too. Nothing is asserted; the script exits with 1 when a
request failed or the server died.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from machine import busy_cpu_seconds, children_cpu_seconds  # benchmarks/machine.py
from serving import (  # benchmarks/serving.py
    SERVERS,
    machine_description,
    register_model,
    run_loadgen,
    s,
    split_body,
    start_server,
    table,
)

MIB = 2**20


def slope_per_minute(samples: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of RSS over time, in MiB per minute (None with fewer than 3 samples)."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    return cov / var * 60 / MIB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--slice", type=int, default=10, help="seconds per throughput slice")
    parser.add_argument("--no-batching", action="store_true")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (store, server log)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="jmk-bench-soak-"))
    try:
        return run(args, tmp)
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> int:
    print(table("Machine", ["what", "value"], machine_description(tmp, args.server_cpu, args.load_cpu)))
    model = register_model(tmp)
    body = split_body(model.frame.iloc[:args.rows])
    body_file = tmp / "request.json"
    body_file.write_bytes(body)
    kind = next(k for k in SERVERS if k.key == ("ours-nb" if args.no_batching else "ours"))
    print(f"\nmodel: {model.uri}; server: {kind.label}, 1 worker; load: {args.concurrency} closed-loop users, "
          f"{args.rows}-row dataframe_split requests ({len(body)} bytes), {args.warmup:g} s warm-up + "
          f"{args.duration:g} s")

    server = start_server(kind, model, tmp, args.server_cpu)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        origin = time.perf_counter()
        while not stop.is_set():
            samples.append((time.perf_counter() - origin, server.rss_bytes()))
            stop.wait(1.0)

    idle_rss = server.rss_bytes()
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        cpu_before, busy_before, children_before = server.cpu_seconds(), busy_cpu_seconds(), children_cpu_seconds()
        sampler.start()
        started = time.perf_counter()
        result = run_loadgen(f"{server.base}/invocations", body_file, args.concurrency, args.duration, args.warmup,
                             args.load_cpu)
        wall = time.perf_counter() - started
        stop.set()
        sampler.join(5)
        server_seconds = server.cpu_seconds() - cpu_before
        server_cpu = server_seconds / wall
        busy_after = busy_cpu_seconds()
        if busy_before is not None and busy_after is not None:
            others = busy_after - busy_before - server_seconds - (children_cpu_seconds() - children_before)
            result["other_cpu_s"] = max(0.0, others)
        alive = server.process.poll() is None
    finally:
        stop.set()
        server.stop()
    return report(args, server.ready_s, idle_rss, samples, result, server_cpu, alive, server.log_tail())


def report(args: argparse.Namespace, ready_s: float, idle_rss: int, samples: list[tuple[float, int]],
           result: dict[str, Any], server_cpu: float, alive: bool, log_tail: str) -> int:
    per_second: list[int] = result["per_second"]
    errors_per_second: list[int] = result["errors_per_second"]
    total_ok = sum(per_second)
    total_failed = sum(errors_per_second)
    first = int(args.warmup)
    window = per_second[first:first + int(args.duration)]
    rows = []
    for start in range(0, len(window), args.slice):
        part = window[start:start + args.slice]
        errors = errors_per_second[first + start:first + start + len(part)]
        rows.append([f"{start}-{start + len(part)} s", str(sum(part)), s(sum(part) / len(part)), str(sum(errors))])
    print()
    print(f"server ready (first 200 on /ping) after {ready_s:.1f} s; "
          f"RSS then, before any load: {idle_rss / MIB:.1f} MiB")
    print()
    print(table(f"Throughput per {args.slice}-second slice of the measured window (seconds after the "
                f"{args.warmup:g} s warm-up)", ["slice", "requests", "req/s", "failed"], rows))

    summary = [
        ["requests answered 200, whole run (warm-up included)", str(total_ok)],
        ["failed requests, whole run (non-200 or connection errors)", str(total_failed)],
        ["statuses in the measured window", ", ".join(f"{k}: {v}" for k, v in result["statuses"].items()) or "-"],
        ["connection errors in the measured window", str(result["connection_errors"])],
        ["throughput over the measured window (req/s)", s(result["throughput"])],
        ["p50 / p99 / max latency (ms)", f"{s(result['p50_ms'], 2)} / {s(result['p99_ms'], 2)} / "
                                         f"{s(result['max_ms'], 2)}"],
        ["server CPU per second (its core: 1.0)", s(server_cpu, 2)],
        ["load generator CPU per second", s(result["loadgen_cpu_s_per_s"], 2)],
        ["CPU-seconds other processes used during the run (machine shared)", s(result.get("other_cpu_s"))],
        ["server still running at the end", "yes" if alive else "NO"],
    ]
    print()
    print(table("Totals", ["what", "value"], summary))

    rss = [r for _, r in samples]
    half = [x for x in samples if x[0] >= samples[-1][0] / 2] if samples else []
    memory = [
        ["samples (one per second)", str(len(samples))],
        ["first (MiB)", s(rss[0] / MIB) if rss else "-"],
        ["last (MiB)", s(rss[-1] / MIB) if rss else "-"],
        ["max (MiB)", s(max(rss) / MIB) if rss else "-"],
        ["last - first (MiB)", s((rss[-1] - rss[0]) / MIB) if rss else "-"],
        ["slope, whole run (MiB/min)", s(slope_per_minute(samples), 2)],
        ["slope, second half (MiB/min)", s(slope_per_minute(half), 2)],
    ]
    print()
    print(table("Server RSS (its process tree), sampled every second during the load", ["what", "value"], memory))
    if rss:
        print("RSS every 5 s (MiB): " + " ".join(f"{r / MIB:.1f}" for r in rss[::5]))
    if result["error_samples"]:
        print("\nerror samples:\n  " + "\n  ".join(result["error_samples"]))
    if not alive:
        print("\nserver log tail:\n" + log_tail)
    print("\nload average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0 if total_failed == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
