"""Staging a large input: first time, again unchanged (content hash hit), against plain writes.

Peer in the same run: ``numpy.save`` of the same array to the same disk (what a user would do by
hand), and ``cloudpickle.dump`` to a file (serialization alone). Prints a table with ratios.

    python benchmarks/staging.py [--gib 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import numpy as np

from jupyter_mlflow_k8s.payload import stage_value
from jupyter_mlflow_k8s.storage import get_storage


def _time(func: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return times


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=1.0, help="array size in GiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    array = np.random.default_rng(0).random(int(args.gib * 2**30 // 8))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        storage = get_storage((root / "store").as_uri())
        rows: list[tuple[str, list[float]]] = []
        rows.append(("numpy.save to disk (peer)", _time(lambda: np.save(root / "plain.npy", array), args.repeat)))

        def pickle_to_file() -> None:
            with open(root / "plain.pkl", "wb") as handle:
                cloudpickle.dump(array, handle, protocol=5)

        rows.append(("cloudpickle.dump to disk (peer)", _time(pickle_to_file, args.repeat)))
        start = time.perf_counter()
        entry = stage_value(storage, "array", array)
        rows.append(("stage_value, first time (hash + write)", [time.perf_counter() - start]))
        again = _time(lambda: stage_value(storage, "array", array), args.repeat)
        rows.append(("stage_value, unchanged (hash only)", again))
        blobs = [p for p in (root / "store").rglob("*") if p.is_file()]
        stored = sum(p.stat().st_size for p in blobs)
    peer = statistics.median(rows[0][1])
    print(f"machine: {_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"array: {array.nbytes / 2**30:.2f} GiB float64; stored once: {len(blobs)} blob, {stored / 2**30:.2f} GiB")
    print(f"{'what':42} {'median s':>9} {'vs numpy.save':>14}")
    for name, times in rows:
        median = statistics.median(times)
        print(f"{name:42} {median:9.3f} {median / peer:13.2f}x")
    print(f"blob key: {entry.key}")


if __name__ == "__main__":
    main()
