"""The sidebar with 10,000 runs: latency of ``GET /jmk/api/runs`` against MLflow's own search, and the
panel's time to first paint in Chromium against JupyterLab's own startup, in the same run.

Usage::

    .venv/bin/python benchmarks/sidebar.py [--runs 10000] [--repeat 15] [--loads 5] [--out FILE]

The store: one SQLite file, 4 experiments, ``--runs`` finished runs (params lr/batch/seed, metrics loss
and accuracy with 5 steps each, the runName and user tags), written in bulk through MLflow's own
SQLAlchemy models (creating them one by one with ``MlflowClient`` takes minutes; the seeding time is
printed). Then, against that one file:

- **ours**: a real ``jupyter lab`` with the server extension; ``GET /jmk/api/runs`` over HTTP with the
  token (all experiments, as the sidebar asks).
- **peer, REST**: a real ``mlflow server`` (``--workers 1``) on the same file;
  ``POST /api/2.0/mlflow/runs/search`` with the same filter, order and page size over all experiments.
- **peer, in-process**: ``MlflowClient(uri).search_runs`` in this process (no HTTP at all).

Each case is requested once to warm up, then ``--repeat`` times in turn across the three; medians and
90th percentiles in ms. Ratio = ours / MLflow REST.

First paint: headless Debian Chromium (Playwright, ``executable_path``) loads ``/lab`` ``--loads`` times
with the sidebar open (restored from the workspace). In the page, a MutationObserver installed before any
script runs records ``performance.now()`` when JupyterLab removes its splash screen (the app is
restored: the peer) and when the first run row appears in the sidebar; both count from navigation start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests" / "ui")]

from machine import cpu_model, memory_total, os_name, table  # noqa: E402

CASES: list[tuple[str, dict[str, Any]]] = [
    ("first page, 100", {"max_results": 100}),
    ("first page, 500", {"max_results": 500}),
    ("filter metrics.loss < 0.2, 100", {"max_results": 100, "filter": "metrics.loss < 0.2"}),
    ("filter params.lr = '0.01', 100", {"max_results": 100, "filter": "params.lr = '0.01'"}),
    ("sort metrics.loss ASC, 100", {"max_results": 100, "order_by": "metrics.loss ASC"}),
    ("sort metrics.loss ASC, 500", {"max_results": 500, "order_by": "metrics.loss ASC"}),
]
OBSERVER = """
(() => {
  const t = {};
  window.__jmkTimes = t;
  const check = () => {
    if (t.labReady === undefined && document.body && !document.getElementById('jupyterlab-splash-screen')
        && document.querySelector('.jp-LabShell')) t.labReady = performance.now();
    if (t.firstRow === undefined && document.querySelector('[data-testid="jmk-run-row"]'))
      t.firstRow = performance.now();
    if (t.panel === undefined && document.querySelector('[data-testid="jmk-panel"]')) t.panel = performance.now();
  };
  new MutationObserver(check).observe(document, {childList: true, subtree: true});
})();
"""


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]




def machine_description(tmp: Path) -> list[tuple[str, str]]:
    versions = []
    for package in ("jupyter_mlflow_k8s", "mlflow", "jupyterlab", "jupyter_server", "playwright"):
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True).stdout.strip()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("CPU", f"{cpu_model()}, {os.cpu_count()} logical cores, {usable} usable"),
        ("memory", memory_total()),
        ("OS", os_name()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("packages", ", ".join(versions)),
        ("browser", chromium or "unknown"),
        ("temporary folder", str(tmp)),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


# ----------------------------------------------------------------------------- the store


def seed(uri: str, artifacts: Path, runs: int) -> tuple[list[str], float]:
    """``runs`` finished runs over 4 experiments, inserted in bulk with MLflow's SQLAlchemy models."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(uri, artifacts.as_uri())  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    experiments = [store.create_experiment(f"bench-{i}") for i in range(4)]  # type: ignore[no-untyped-call]
    base = int(time.time() * 1000) - runs * 1000
    objects: list[Any] = []
    for index in range(runs):
        run_id = uuid.uuid4().hex
        start = base + index * 1000
        experiment = experiments[index % len(experiments)]
        objects.append(SqlRun(run_uuid=run_id, name=f"run-{index:05d}", source_type="LOCAL", source_name="bench",
                              entry_point_name="", user_id="bench", status="FINISHED", start_time=start,
                              end_time=start + 900, source_version="", lifecycle_stage="active",
                              artifact_uri=f"{artifacts.as_uri()}/{experiment}/{run_id}/artifacts",
                              experiment_id=int(experiment)))
        loss = ((index * 7919) % runs) / runs
        for step in range(5):
            value = loss + (4 - step) * 0.1
            objects.append(SqlMetric(key="loss", value=value, timestamp=start + step, step=step, is_nan=False,
                                     run_uuid=run_id))
            objects.append(SqlMetric(key="accuracy", value=1 - value / 2, timestamp=start + step, step=step,
                                     is_nan=False, run_uuid=run_id))
        objects.append(SqlLatestMetric(key="loss", value=loss, timestamp=start + 4, step=4, is_nan=False,
                                       run_uuid=run_id))
        objects.append(SqlLatestMetric(key="accuracy", value=1 - loss / 2, timestamp=start + 4, step=4,
                                       is_nan=False, run_uuid=run_id))
        for key, text in (("lr", ("0.1", "0.01", "0.001")[index % 3]), ("batch", str(32 << index % 3)),
                          ("seed", str(index))):
            objects.append(SqlParam(key=key, value=text, run_uuid=run_id))
        objects.append(SqlTag(key="mlflow.runName", value=f"run-{index:05d}", run_uuid=run_id))
        objects.append(SqlTag(key="mlflow.user", value="bench", run_uuid=run_id))
    with store.ManagedSessionMaker() as session:
        session.bulk_save_objects(objects)
    return experiments, time.perf_counter() - started


# ----------------------------------------------------------------------------- the servers


def free_port() -> int:
    from ui_helpers import free_port as port

    return port()


def wait_http(url: str, timeout: float = 90.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def start_mlflow(uri: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", uri,
               "--default-artifact-root", artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health")
    return process, url


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def ours(lab: Any, params: dict[str, Any]) -> Callable[[], int]:
    query = urllib.parse.urlencode(params)
    request = urllib.request.Request(f"{lab.url}/jmk/api/runs?{query}",
                                     headers={"Authorization": f"token {lab.token}"})

    def call() -> int:
        with urllib.request.urlopen(request, timeout=60) as response:
            return len(json.loads(response.read())["runs"])
    return call


def peer_rest(url: str, experiments: list[str], params: dict[str, Any]) -> Callable[[], int]:
    body: dict[str, Any] = {"experiment_ids": experiments, "max_results": params["max_results"]}
    if "filter" in params:
        body["filter"] = params["filter"]
    if "order_by" in params:
        body["order_by"] = [params["order_by"]]
    data = json.dumps(body).encode()

    def call() -> int:
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return len(json.loads(response.read()).get("runs", []))
    return call


def peer_client(client: Any, experiments: list[str], params: dict[str, Any]) -> Callable[[], int]:
    def call() -> int:
        return len(client.search_runs(experiments, filter_string=params.get("filter", ""),
                                      max_results=params["max_results"],
                                      order_by=[params["order_by"]] if "order_by" in params else None))
    return call


# ----------------------------------------------------------------------------- first paint


def first_paint(lab: Any, loads: int) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright
    from ui_helpers import CHROMIUM_FLAGS, VIEWPORT

    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(lab.lab_url())  # once: open the sidebar so that the workspace restores it open
        page.locator('li[data-id="jmk-sidebar"]').click(timeout=120_000)
        page.locator('[data-testid="jmk-run-row"]').first.wait_for(timeout=60_000)
        time.sleep(3)  # the workspace is saved after a layout change
        page.close()
        context.add_init_script(OBSERVER)
        for _ in range(loads + 1):  # the first load warms the server and the browser's cache
            page = context.new_page()
            page.goto(f"{lab.url}/lab?token={lab.token}")
            page.locator('[data-testid="jmk-run-row"]').first.wait_for(timeout=60_000)
            times = page.evaluate("window.__jmkTimes")
            nav = page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
            results.append({**times, "dcl": nav})
            page.close()
        browser.close()
    return results[1:]


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient
    from ui_helpers import Store, start_lab, stop_lab

    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    with tempfile.TemporaryDirectory(prefix="jmk-bench-sidebar-") as folder:
        tmp = Path(folder)
        say(f"# Sidebar: runs API and first paint with {args.runs:,} runs")
        say()
        for label, value in machine_description(tmp):
            say(f"- {label}: {value}")
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        artifacts = tmp / "artifacts"
        artifacts.mkdir()
        experiments, seconds = seed(uri, artifacts, args.runs)
        client = MlflowClient(uri)
        found = len(client.search_runs(experiments, max_results=50_000))
        say(f"- seeding {args.runs:,} runs (4 experiments, 2 metrics x 5 steps, 3 params, 2 tags each) with "
            f"MLflow's SQLAlchemy models in bulk: {seconds:.1f} s; search_runs finds {found:,}")

        mlflow_process, mlflow_url = start_mlflow(uri, artifacts, tmp / "mlflow.log")
        lab = start_lab(tmp / "lab", Store(uri, tmp / "state", {}))
        try:
            rows = []
            for name, params in CASES:
                calls = {"ours": ours(lab, params), "rest": peer_rest(mlflow_url, experiments, params),
                         "client": peer_client(client, experiments, params)}
                counts = {key: call() for key, call in calls.items()}  # warm-up
                if len(set(counts.values())) != 1:
                    say(f"WARNING: {name}: row counts differ: {counts}")
                samples: dict[str, list[float]] = {key: [] for key in calls}
                for _ in range(args.repeat):
                    for key, call in calls.items():
                        samples[key].append(timed(call)[0])
                rows.append([name, counts["ours"], f"{median(samples['ours']):.0f} / {p90(samples['ours']):.0f}",
                             f"{median(samples['rest']):.0f} / {p90(samples['rest']):.0f}",
                             f"{median(samples['client']):.0f} / {p90(samples['client']):.0f}",
                             f"{median(samples['ours']) / median(samples['rest']):.2f}",
                             f"{median(samples['ours']) / median(samples['client']):.2f}"])
            say()
            say(table(f"GET /jmk/api/runs vs MLflow's search_runs, {args.runs:,} runs, all 4 experiments "
                      f"(ms, median / p90 of {args.repeat})",
                      ["case", "rows", "ours (HTTP)", "mlflow server REST", "MlflowClient in-process",
                       "ours/REST", "ours/in-process"], rows))

            paints = first_paint(lab, args.loads)
            say()
            prow = []
            for key, label in (("dcl", "DOMContentLoaded"), ("labReady", "JupyterLab restored (splash gone): peer"),
                               ("panel", "sidebar panel in the DOM"), ("firstRow", "first run row painted")):
                values = [p[key] for p in paints if p.get(key) is not None]
                prow.append([label, f"{median(values):.0f}" if values else "-",
                             f"{min(values):.0f}-{max(values):.0f}" if values else "-"])
            gap = [p["firstRow"] - p["labReady"] for p in paints if "firstRow" in p and "labReady" in p]
            ratio = [p["firstRow"] / p["labReady"] for p in paints if "firstRow" in p and "labReady" in p]
            prow.append(["first run row after JupyterLab restored", f"{median(gap):.0f}" if gap else "-",
                         f"{min(gap):.0f}-{max(gap):.0f}" if gap else "-"])
            say(table(f"Time to first paint in headless Chromium, sidebar open, {args.runs:,} runs "
                      f"(ms from navigation start, median and range of {len(paints)} loads)",
                      ["milestone", "median", "range"], prow))
            if ratio:
                say(f"ratio first run row / JupyterLab restored: {median(ratio):.2f}")
        finally:
            stop_lab(lab)
            mlflow_process.terminate()
            mlflow_process.wait(timeout=20)
    if args.out:
        args.out.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
