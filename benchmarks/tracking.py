"""Metric logging from a training loop: ours (buffered) against plain MLflow, same store, same run.

Peers in the same run:
- ``mlflow.log_metric`` per point, as a training loop calls it (one store round trip each);
- ``MlflowClient.log_batch`` with 1,000 points per call (the fastest MLflow offers, but the
  loop must collect the points itself and is blocked for the whole batch);
- ours: ``mlflow.log_metric`` as patched inside a ``%%train`` job (``tracking/fastlog.py``):
  the call appends to a buffer, a thread sends ``log_batch`` every second.

Points/s count until every point is in the store (ours includes the final flush). "Blocked"
is how long one call holds the training loop.

    python benchmarks/tracking.py [--points 20000] [--server]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    import requests

    port = _free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--default-artifact-root", str(root / "server-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("mlflow server did not start within 90 s")


def _loop(call: Callable[[int], Any], points: int) -> list[float]:
    blocked = []
    for i in range(points):
        start = time.perf_counter()
        call(i)
        blocked.append(time.perf_counter() - start)
    return blocked


def measure(uri: str, points: int, plain_points: int) -> list[tuple[str, int, float, list[float]]]:
    """Rows of (method, points, seconds until stored, per-call blocked times)."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from jupyter_mlflow_k8s.tracking import fastlog

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment(f"bench-{time.time_ns()}")
    rows = []

    run = client.create_run(experiment).info.run_id
    with mlflow.start_run(run_id=run):
        start = time.perf_counter()
        blocked = _loop(lambda i: mlflow.log_metric("loss", 1 / (i + 1), step=i), plain_points)
        rows.append(("mlflow.log_metric (plain)", plain_points, time.perf_counter() - start, blocked))

    run = client.create_run(experiment).info.run_id
    batch: list[Any] = []

    def batched(i: int) -> None:
        batch.append(Metric("loss", 1 / (i + 1), int(time.time() * 1000), i))
        if len(batch) == 1000:
            client.log_batch(run, metrics=batch)
            batch.clear()

    start = time.perf_counter()
    blocked = _loop(batched, points)
    if batch:
        client.log_batch(run, metrics=batch)
    rows.append(("MlflowClient.log_batch x1000", points, time.perf_counter() - start, blocked))

    run = client.create_run(experiment).info.run_id
    os.environ["MLFLOW_RUN_ID"] = run
    buffer = fastlog.install(mlflow, run, interval=1.0)
    start = time.perf_counter()
    blocked = _loop(lambda i: mlflow.log_metric("loss", 1 / (i + 1), step=i), points)
    buffer.close()
    rows.append(("ours: patched mlflow.log_metric", points, time.perf_counter() - start, blocked))
    mlflow.end_run()
    stored = len(client.get_metric_history(run, "loss"))
    if stored != points:
        raise RuntimeError(f"ours stored {stored} of {points} points")
    return rows


def _print(title: str, rows: list[tuple[str, int, float, list[float]]]) -> None:
    plain_rate = rows[0][1] / rows[0][2]
    print(f"\n{title}")
    print(f"{'method':32} {'points':>7} {'points/s':>10} {'x plain':>8} {'p50 us':>8} {'p99 us':>8} {'max ms':>7}")
    for name, points, seconds, blocked in rows:
        ordered = sorted(blocked)
        p99 = ordered[int(len(ordered) * 0.99) - 1]
        print(
            f"{name:32} {points:7d} {points / seconds:10.0f} {points / seconds / plain_rate:8.1f} "
            f"{statistics.median(ordered) * 1e6:8.1f} {p99 * 1e6:8.1f} {ordered[-1] * 1e3:7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=20000, help="points for batched methods")
    parser.add_argument("--plain-points", type=int, default=500, help="points for plain log_metric (slow)")
    parser.add_argument("--server", action="store_true", help="also against a real `mlflow server` on 127.0.0.1")
    args = parser.parse_args()
    import mlflow

    print(f"machine: {_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}, mlflow {mlflow.__version__}")
    root = Path(tempfile.mkdtemp(prefix="jmk-bench-tracking-"))
    try:
        rows = measure(f"sqlite:///{root / 'mlflow.db'}", args.points, args.plain_points)
        _print("SQLite store (the embedded default)", rows)
        if args.server:
            proc, url = _start_server(root)
            try:
                _print(f"mlflow server at {url} (SQLite behind it)", measure(url, args.points, args.plain_points))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
