"""Batch prediction: ``jmk batch-predict`` against a single-process pandas loop over the same files, same run.

Usage::

    .venv/bin/python benchmarks/batch.py [--files 8] [--rows 200000] [--features 20] [--shards 2] [--repeat 3]
                                         [--keep]

Setup (not timed): a temporary folder with a SQLite MLflow store, a scikit-learn ``LinearRegression``
on ``--features`` float columns registered as ``bench-batch`` (alias ``champion``, with a signature),
and ``--files`` Parquet files of ``--rows`` rows each.

Timed, each in a fresh Python process (so both pay their imports; the clock starts before the first
import), rounds interleaved, medians reported:

- **peer**: the plain loop: ``mlflow.pyfunc.load_model(models:/bench-batch@champion)``, then for
  each file ``pandas.read_parquet``, ``model.predict`` on the feature columns, the input plus a
  ``prediction`` column written with ``to_parquet``.
- **ours**: ``jmk batch-predict models:/bench-batch@champion --input DIR/*.parquet --output OUT/
  --shards N`` on the local backend (each shard a job: a process that loads the model through the
  serving loader and checks every row against the signature), into a fresh output folder.

Reported: wall seconds and rows/s end to end (rows over wall), the ratio ours/peer, and the steady
rows/s (predict and I/O only: the peer's loop without the model load; ours from the shard markers,
summed over shards). The outputs of both must hold the same predictions (checked). Nothing is asserted
about timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEER = r"""
import sys, time, json
t0 = time.perf_counter()
import mlflow, pandas as pd
from pathlib import Path
model = mlflow.pyfunc.load_model(sys.argv[1])
t1 = time.perf_counter()
out = Path(sys.argv[3]); out.mkdir(parents=True, exist_ok=True)
features = json.loads(sys.argv[4])
rows = 0
for i, path in enumerate(sorted(Path(sys.argv[2]).glob("*.parquet"))):
    frame = pd.read_parquet(path)
    frame["prediction"] = model.predict(frame[features])
    frame.to_parquet(out / f"part-{i:05d}.parquet", index=False)
    rows += len(frame)
t2 = time.perf_counter()
print(json.dumps({"rows": rows, "load": t1 - t0, "loop": t2 - t1}))
"""


def setup(tmp: Path, args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    code = f"""
import mlflow, numpy as np, pandas as pd
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LinearRegression
rng = np.random.default_rng(0)
features = [f"x{{i}}" for i in range({args.features})]
train = pd.DataFrame(rng.normal(size=(2000, {args.features})), columns=features)
model = LinearRegression().fit(train, train.sum(axis=1))
mlflow.set_experiment("bench-batch")
with mlflow.start_run():
    info = mlflow.sklearn.log_model(model, name="model", input_example=train.head(2),
                                    registered_model_name="bench-batch")
MlflowClient().set_registered_model_alias("bench-batch", "champion", str(info.registered_model_version))
folder = "{tmp / 'in'}"
import os; os.makedirs(folder, exist_ok=True)
for f in range({args.files}):
    frame = pd.DataFrame(rng.normal(size=({args.rows}, {args.features})), columns=features)
    frame.insert(0, "id", np.arange(f * {args.rows}, (f + 1) * {args.rows}))
    frame.to_parquet(f"{{folder}}/f{{f:03d}}.parquet", index=False)
"""
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return [f"x{i}" for i in range(args.features)]


def run_peer(tmp: Path, out: Path, features: list[str], env: dict[str, str]) -> dict[str, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEER, "models:/bench-batch@champion", str(tmp / "in"), str(out),
                           json.dumps(features)], env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "rows": result["rows"], "steady": result["rows"] / result["loop"]}


def run_ours(tmp: Path, out: Path, shards: int, env: dict[str, str]) -> dict[str, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jupyter_mlflow_k8s.cli", "batch-predict",
                           "models:/bench-batch@champion", "--input", f"{tmp / 'in'}/*.parquet", "--output", str(out),
                           "--shards", str(shards)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"jmk batch-predict failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    markers = [json.loads(p.read_text()) for p in (out / "_jmk_batch").glob("shard-*/_SUCCESS")]
    rows = sum(m["rows"] for m in markers)
    return {"wall": wall, "rows": rows, "steady": sum(m["rows_per_s"] for m in markers)}


def same_predictions(peer: Path, ours: Path) -> bool:
    import numpy as np
    import pandas as pd

    def read(folder: Path) -> pd.Series:
        frame = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("part-*.parquet"))])
        return frame.set_index("id")["prediction"].sort_index()

    a, b = read(peer), read(ours)
    return bool(a.index.equals(b.index) and np.allclose(a.to_numpy(), b.to_numpy()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jmk-bench-batch-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "JMK_STATE_DIR": str(tmp / "state"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop("JMK_BACKEND", None)
    env.pop("JMK_STORAGE_URL", None)
    try:
        began = time.perf_counter()
        features = setup(tmp, args, env)
        print(f"setup (model + {args.files} files x {args.rows:,} rows x {args.features} features): "
              f"{time.perf_counter() - began:.1f} s; cpus: {os.cpu_count()}")
        results: dict[str, list[dict[str, float]]] = {"peer": [], "ours": []}
        for round_no in range(args.repeat):
            peer = run_peer(tmp, tmp / f"peer-{round_no}", features, env)
            ours = run_ours(tmp, tmp / f"ours-{round_no}", args.shards, env)
            results["peer"].append(peer)
            results["ours"].append(ours)
            print(f"round {round_no}: peer {peer['wall']:.2f} s, ours {ours['wall']:.2f} s")
        same = same_predictions(tmp / "peer-0", tmp / "ours-0")
        rows = results["peer"][0]["rows"]
        median = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "steady")} for k, v in results.items()}
        print(f"\n{'variant':<34} {'wall (s)':>9} {'rows/s':>12} {'ratio':>7} {'steady rows/s':>14} {'ratio':>7}")
        labels = {"peer": "pandas loop, pyfunc.predict", "ours": f"jmk batch-predict, {args.shards} shards"}
        for name, label in labels.items():
            m = median[name]
            ratio = median["peer"]["wall"] / m["wall"]
            steady_ratio = m["steady"] / median["peer"]["steady"]
            print(f"{label:<34} {m['wall']:>9.2f} {rows / m['wall']:>12,.0f} {ratio:>6.2f}x {m['steady']:>14,.0f} "
                  f"{steady_ratio:>6.2f}x")
        print(f"\nrows: {rows:,}; same predictions: {same}; medians of {args.repeat} round(s); ratio: rows/s over "
              "the peer's (above 1: ours is faster)")
        return 0 if same else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
