"""Model serving: our inference server against ``mlflow models serve``, on the same model, in the same run.

Usage::

    .venv/bin/python benchmarks/serving.py [--duration 10] [--warmup 2] [--concurrency 1 16 64] [--rows 1]
                                           [--rounds 1] [--workers 1 2] [--baseline TREE]
                                           [--servers mlflow ours ours-nb] [--server-cpu 0] [--load-cpu 1] [--keep]

The model: an iris-like scikit-learn ``LogisticRegression`` (4 float64 features, 3 classes) logged
with a signature and registered as version 1 of ``iris-bench`` in a new SQLite tracking store in a
temporary folder, by ``make_served`` from ``tests/serving_fixtures.py`` (the fixture the serving
tests use; it also registers a version 2, not used here). Every server loads ``models:/iris-bench/1``
from that store (``MLFLOW_TRACKING_URI``) with ``W`` workers, for each ``W`` of ``--workers`` (1 by
default):

- **mlflow**: ``mlflow models serve -m models:/iris-bench/1 --env-manager local --port P --workers W``
  (MLflow 3: uvicorn + FastAPI, as shipped: its access log on, written to a file here);
- **ours, batching**: ``python -m jupyter_mlflow_k8s.serving models:/iris-bench/1 --port P --workers W``
  (dynamic batching on with the server's defaults for ``--max-batch-size`` and ``--max-wait-ms``,
  printed by the run);
- **ours, no batching**: the same with ``--no-batching`` (one model call per request).

Ours runs the package of this checkout (``PYTHONPATH`` set to it, whatever the virtual environment
has installed). With ``--baseline TREE`` (a commit, branch or tag of this repository) ours is also run
from ``TREE``: its ``jupyter_mlflow_k8s/`` is exported with ``git archive`` into a temporary folder,
put first on ``PYTHONPATH`` of those servers, and removed at the end; same model, same load, same
pinning. The peer ``mlflow models serve`` is measured beside both.

Pinning: with one worker a server runs on CPU ``--server-cpu`` (``taskset -c``; its children
inherit it), the load generator (``benchmarks/loadgen.py``, a separate process) on CPU
``--load-cpu``. With ``W`` workers a server gets ``W`` CPUs: ``--server-cpu`` and the next usable
ones, the load generator's CPU last; on a 2-core machine ``--workers 2`` therefore runs on CPUs 0,1
and shares CPU 1 with the load generator (the run prints the CPU set of each worker count, and the
load generator's own CPU use per point). The load is closed loop: ``--concurrency`` virtual users,
each with one keep-alive HTTP/1.1 connection, each sending its next request when the answer to the
previous one arrived; ``--warmup`` seconds not counted, then ``--duration`` seconds measured. Every
request is the same ``POST /invocations`` with a JSON ``dataframe_split`` body of ``--rows`` rows (1
by default: single-row requests, the usual online case). Reported per server, workers and
concurrency: requests/s (200 answers in the window / duration), p50 and p99 latency as the client
sees it, failed requests (non-200 answers and connection errors), the CPU the server used per
second (1.0 = one core saturated), the load generator's CPU per second, and the CPU other processes
of the machine used meanwhile (the machine may be shared). For ours with batching, the mean batch
size comes from its ``/metrics`` (``jmk_batch_size`` sum / count); with several workers that is
only meaningful where one scrape sums every worker (prometheus_client's multiprocess mode), with
per-worker metrics it is the batch size of whichever worker answered the scrape.

With ``--rounds N`` each server (kind, tree, worker count) is started once per round; a round goes
through all of them, every other round in the reverse order, so that a drift of the machine hits the
baseline and the current tree (and both worker counts) alike. The median round is reported per
point; the ratio tables add the ratio of each round's pair.

When a server is first started, the same requests (``--rows`` rows, and 64 rows of the training
frame) are sent to it; its answers must match ``pyfunc_model.predict`` in this process, so all the
servers answer the same.

Also measured, so that the reader can place the numbers:

- **the load generator's own ceiling**: the same load against a trivial ``asyncio.Protocol`` server
  that answers a fixed body (server on the server CPU, generator on the load CPU): what the
  generator can drive; it must be far above what the model servers reach;
- **the in-process ceiling**: ``pyfunc_model.predict`` called in a loop in this process (pinned to
  the server CPU) on the same one-row DataFrame (calls/s), and on a 64-row frame (calls/s and
  rows/s); the scikit-learn estimator's own ``predict`` next to it. No server can answer single-row
  requests faster than the one-row rate without batching (per worker).

Nothing is asserted about timings; the script exits with 1 when a server fails to start or exits,
a server's answers differ, or a request failed, and with 2 for bad arguments (an unknown
``--baseline``, a CPU this process may not use).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from loadgen import free_port  # benchmarks/loadgen.py
from machine import (  # benchmarks/machine.py
    busy_cpu_seconds,
    children_cpu_seconds,
    code_state,
    cpu_model,
    memory_total,
    package_versions,
    table,
)
from machine import os_name as machine_os_name

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
PACKAGE = "jupyter_mlflow_k8s"
MODEL_NAME = "iris-bench"
GOAL_THROUGHPUT = 3.0
CHECK_ROWS = 64
START_S = 6.0  # about how long a server takes to answer /ping here (for the time estimate only)


# ----------------------------------------------------------------------------- small helpers


def s(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (all of ``os.cpu_count()`` where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def server_cpus(workers: int, server_cpu: int, load_cpu: int | None) -> list[int]:
    """The CPUs a server with ``workers`` workers is pinned to: ``server_cpu``, then the next usable
    ones, the load generator's CPU only when no other is left (fewer than ``workers`` on a small machine)."""
    usable = usable_cpus()
    after = sorted(usable, key=lambda cpu: (cpu - server_cpu) % (max(usable) + 1))
    chosen = [cpu for cpu in after if cpu != load_cpu][:workers]
    if len(chosen) < workers and load_cpu in usable and load_cpu not in chosen:
        chosen.append(load_cpu)
    return sorted(chosen)


def describe_cpus(workers: int, server_cpu: int, load_cpu: int | None) -> str:
    """The CPUs of :func:`server_cpus` for the reader, saying when the load generator's is among them."""
    cpus = server_cpus(workers, server_cpu, load_cpu)
    text = f"CPU{'s' if len(cpus) > 1 else ''} {','.join(map(str, cpus))}"
    if load_cpu in cpus and workers > 1:
        text += " (shared with the load generator)"
    if len(cpus) < workers:
        text += f" ({workers} workers share {len(cpus)})"
    return text


def pinning_description(workers: Sequence[int], server_cpu: int, load_cpu: int) -> str:
    if not shutil.which("taskset"):
        return "not pinned (no taskset)"
    per_count = "; ".join(f"{w} worker{'s' if w > 1 else ''}: {describe_cpus(w, server_cpu, load_cpu)}"
                          for w in workers)
    return f"servers with taskset -c ({per_count}), load generator on CPU {load_cpu}"


def machine_description(tmp: Path, server_cpu: int, load_cpu: int,
                        workers: Sequence[int] = (1,)) -> list[tuple[str, str]]:
    versions = package_versions((PACKAGE, "mlflow", "uvicorn", "fastapi", "scikit-learn", "pandas", "numpy",
                                 "psutil", "prometheus_client"))
    return [
        ("date", datetime.now().astimezone().isoformat(timespec="seconds")),
        ("code", code_state(ROOT)),
        ("CPU", f"{cpu_model()}, {os.cpu_count()} logical cores, {len(usable_cpus())} usable"),
        ("pinning", pinning_description(workers, server_cpu, load_cpu)),
        ("memory", memory_total()),
        ("OS", machine_os_name()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"),
        ("packages", versions),
        ("temporary folder", str(tmp)),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


# ----------------------------------------------------------------------------- the code under test


@dataclass(frozen=True)
class Tree:
    """Where the served package comes from: this checkout, or an export of ``--baseline``."""

    name: str  # "current" or "baseline"
    path: Path  # the folder that holds jupyter_mlflow_k8s/, put first on PYTHONPATH
    what: str  # for the reader: the commit and how the code got there


def current_tree() -> Tree:
    return Tree("current", ROOT, f"{code_state(ROOT)}, from {ROOT}")


def resolve_commit(ref: str) -> str:
    """The full commit id of ``ref`` in this repository; ValueError with git's answer when there is none."""
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"--baseline {ref}: not a commit, branch or tag of {ROOT} "
                         f"(try `git -C {ROOT} log --oneline` for one)")
    return done.stdout.strip()


def export_tree(ref: str, into: Path) -> Tree:
    """``jupyter_mlflow_k8s/`` of ``ref`` in a new folder ``into`` (``git archive``, no worktree left behind)."""
    commit = resolve_commit(ref)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, PACKAGE],
                             capture_output=True, check=True).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return Tree("baseline", into, f"{ref} = {commit[:7]}, exported with git archive to {into} (removed at the end)")


# ----------------------------------------------------------------------------- the model and the requests


@dataclass
class Model:
    """The registered model and the requests sent to it."""

    tracking_uri: str
    uri: str
    frame: Any  # the training DataFrame
    seconds: float  # how long creating the store and registering took


def register_model(tmp: Path) -> Model:
    """A new SQLite store in ``tmp`` with ``iris-bench`` v1 and v2 (``make_served``); serve v1."""
    sys.path.insert(0, str(ROOT))
    from tests.serving_fixtures import make_served

    started = time.perf_counter()
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    served = make_served(MODEL_NAME, uri)
    return Model(uri, served.uri(served.versions[0]), served.frame, time.perf_counter() - started)


def split_body(frame: Any) -> bytes:
    """A ``dataframe_split`` request body for the frame's rows (no index)."""
    return json.dumps({"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}}).encode()


# ----------------------------------------------------------------------------- the servers


@dataclass
class ServerKind:
    key: str
    label: str
    command: Callable[[str, int, int], list[str]]  # (model URI, port, workers) -> argv
    ours: bool = True  # runs this repository's package (so --baseline applies)


def python_bin() -> Path:
    return Path(sys.executable).parent


def mlflow_command(uri: str, port: int, workers: int = 1) -> list[str]:
    return [str(python_bin() / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


def ours_command(uri: str, port: int, workers: int = 1, batching: bool = True) -> list[str]:
    command = [sys.executable, "-m", f"{PACKAGE}.serving", uri, "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers)]
    return command if batching else [*command, "--no-batching"]


SERVERS = (
    ServerKind("mlflow", "mlflow models serve", mlflow_command, ours=False),
    ServerKind("ours", "ours, batching", ours_command),
    ServerKind("ours-nb", "ours, no batching",
               lambda uri, port, workers: ours_command(uri, port, workers, batching=False)),
)
SERVERS_BY_KEY = {kind.key: kind for kind in SERVERS}


@dataclass(frozen=True)
class Variant:
    """One server as measured: its kind, its worker count and (for ours) the tree its code comes from."""

    kind: ServerKind
    workers: int
    tree: Tree | None  # None: not our code (mlflow)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.kind.key, self.tree.name if self.tree else "", self.workers

    @property
    def label(self) -> str:
        return self.kind.label + (", baseline" if self.tree and self.tree.name == "baseline" else "")

    def describe(self) -> str:
        return f"{self.label}, {self.workers} worker{'s' if self.workers > 1 else ''}"


@dataclass
class Server:
    """A started server process (its own process group), pinned to its CPUs."""

    kind: ServerKind
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    ready_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tree(self) -> list[Any]:
        import psutil

        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        return []

    def cpu_seconds(self) -> float:
        import psutil

        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        import psutil

        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def start_server(kind: ServerKind, model: Model, tmp: Path, cpu: int | Sequence[int] | None, timeout: float = 180.0,
                 *, workers: int = 1, tree: Tree | None = None) -> Server:
    """Start ``kind`` with ``workers`` on a free port, pinned to ``cpu`` (one or several), our package from
    ``tree`` (this checkout by default); return once ``GET /ping`` answers 200."""
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=model.tracking_uri,
               PATH=f"{python_bin()}{os.pathsep}{os.environ.get('PATH', '')}",  # mlflow runs ``uvicorn`` from PATH
               JMK_STATE_DIR=str(tmp / "state"))
    if kind.ours:  # this tree's package, not the one the virtual environment was installed from
        source = (tree or current_tree()).path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), os.environ.get("PYTHONPATH", "")) if p)
    command = kind.command(model.uri, port, workers)
    cpus = [cpu] if isinstance(cpu, int) else list(cpu or [])
    if cpus and shutil.which("taskset"):
        command = ["taskset", "-c", ",".join(map(str, cpus)), *command]
    log = tmp / f"{kind.key}-{port}.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   cwd=tmp, start_new_session=True)
    server = Server(kind, port, process, log)
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind.label} exited with {process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError):
            if http("GET", f"{server.base}/ping", timeout=2.0)[0] == 200:
                server.ready_s = time.perf_counter() - started
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{kind.label} did not answer /ping within {timeout:.0f} s:\n{server.log_tail()}")


@contextlib.contextmanager
def running(variant: Variant, model: Model, tmp: Path, cpus: Sequence[int]) -> Iterator[Server]:
    server = start_server(variant.kind, model, tmp, cpus, workers=variant.workers, tree=variant.tree)
    try:
        yield server
    finally:
        server.stop()


def batch_size_totals(server: Server) -> tuple[float, float] | None:
    """``jmk_batch_size`` sum and count over all series from ``/metrics`` (0, 0 before any; None without metrics)."""
    try:
        status, text = http("GET", f"{server.base}/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    total = count = 0.0
    for line in text.decode(errors="replace").splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ("jmk_batch_size_sum", "jmk_batch_size_count"):
            value = float(line.rsplit(" ", 1)[1])
            if name.endswith("_sum"):
                total += value
            else:
                count += value
    return total, count


# ----------------------------------------------------------------------------- measuring


def run_loadgen(url: str, body_file: Path, concurrency: int, duration: float, warmup: float,
                cpu: int | None) -> dict[str, Any]:
    """One load point in a new load generator process; its JSON summary."""
    command = [sys.executable, str(LOADGEN), "--url", url, "--body-file", str(body_file), "--concurrency",
               str(concurrency), "--duration", str(duration), "--warmup", str(warmup)]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + warmup + 120)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure_point(server: Server, body_file: Path, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """One load point against a running server, with the CPU used by it, the generator and the rest."""
    batches_before = batch_size_totals(server) if server.kind.key == "ours" else None
    busy_before, children_before, server_before = busy_cpu_seconds(), children_cpu_seconds(), server.cpu_seconds()
    wall = time.perf_counter()
    result = run_loadgen(f"{server.base}/invocations", body_file, concurrency, args.duration, args.warmup,
                         args.load_cpu)
    wall = time.perf_counter() - wall
    server_cpu = server.cpu_seconds() - server_before
    loadgen_cpu = children_cpu_seconds() - children_before
    busy_after = busy_cpu_seconds()
    result["server_cpu_s_per_s"] = server_cpu / wall
    result["other_cpu_s"] = (None if busy_before is None or busy_after is None
                             else max(0.0, busy_after - busy_before - server_cpu - loadgen_cpu))
    result["wall_s"] = wall
    result["mean_batch"] = None
    batches_after = batch_size_totals(server) if batches_before is not None else None
    if batches_before is not None and batches_after is not None and batches_after[1] > batches_before[1]:
        result["mean_batch"] = (batches_after[0] - batches_before[0]) / (batches_after[1] - batches_before[1])
    if server.process.poll() is not None:
        server.problems.append(f"exited with {server.process.returncode} during the load")
    return result


def check_answers(servers: Sequence[Server], bodies: Sequence[bytes], expected: Sequence[Any]) -> list[str]:
    """The same requests to every server: each answer must be 200 and the same predictions as in-process."""
    problems = []
    for body, want in zip(bodies, expected, strict=True):
        answers = {}
        for server in servers:
            status, text = http("POST", f"{server.base}/invocations", body)
            if status != 200:
                problems.append(f"{server.kind.label}: {status} {text[:300]!r}")
                continue
            answers[server.kind.label] = json.loads(text)
        for label, answer in answers.items():
            if answer != {"predictions": want}:
                problems.append(f"{label} answered {str(answer)[:200]}, in-process predict gives {str(want)[:200]}")
    return problems


def in_process_ceiling(model: Model, rows: int, seconds: float, cpu: int | None) -> list[list[str]]:
    """``pyfunc_model.predict`` (and the estimator's ``predict``) in a loop, pinned to ``cpu``."""
    import mlflow

    mlflow.set_tracking_uri(model.tracking_uri)
    pyfunc_model = mlflow.pyfunc.load_model(model.uri)
    estimator = mlflow.sklearn.load_model(model.uri)
    previous = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cpu is not None and previous is not None:
        os.sched_setaffinity(0, {cpu})
    rows_out = []
    try:
        calls_to = (("pyfunc_model.predict", pyfunc_model.predict), ("estimator.predict", estimator.predict))
        for label, predict in calls_to:
            for n in sorted({rows, CHECK_ROWS}):
                frame = model.frame.iloc[:n].copy()
                for _ in range(50):
                    predict(frame)
                calls, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < seconds:
                    for _ in range(20):
                        predict(frame)
                    calls += 20
                rows_out.append([f"{label}, {n}-row frame", s(calls / elapsed), s(calls * n / elapsed),
                                 s(1e6 * elapsed / calls)])
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)
    return rows_out


# ----------------------------------------------------------------------------- the run


Results = dict[tuple[tuple[str, str, int], int], list[dict[str, Any]]]  # (variant key, concurrency) -> rounds


def median_round(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput (the lower middle one for an even count)."""
    ordered = sorted(results, key=lambda r: r["throughput"])
    return ordered[(len(ordered) - 1) // 2]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: use 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per load point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measured window")
    parser.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rows", type=positive_int, default=1, help="rows per request")
    parser.add_argument("--rounds", type=positive_int, default=1)
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[1],
                        help="run every server with each of these worker counts, e.g. --workers 1 2")
    parser.add_argument("--baseline", metavar="TREE",
                        help="also run ours from this commit, branch or tag (e.g. --baseline main), same run")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--ceiling-seconds", type=float, default=3.0, help="per in-process measurement")
    parser.add_argument("--servers", nargs="+", default=[k.key for k in SERVERS], choices=[k.key for k in SERVERS])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (store, server logs)")
    args = parser.parse_args(argv)
    args.workers = sorted(set(args.workers))
    for option in ("server_cpu", "load_cpu"):
        if getattr(args, option) not in usable_cpus():
            parser.error(f"--{option.replace('_', '-')} {getattr(args, option)}: this process may use CPUs "
                         f"{','.join(map(str, usable_cpus()))} only")
    if args.baseline is not None:
        if not any(SERVERS_BY_KEY[key].ours for key in args.servers):
            parser.error("--baseline compares ours: add ours or ours-nb to --servers")
        try:
            resolve_commit(args.baseline)
        except ValueError as error:
            parser.error(str(error))
    tmp = Path(tempfile.mkdtemp(prefix="jmk-bench-serving-"))
    baseline_dir = tmp / "baseline"
    try:
        return run(args, tmp, export_tree(args.baseline, baseline_dir) if args.baseline is not None else None)
    finally:
        shutil.rmtree(baseline_dir, ignore_errors=True)  # the exported tree goes, --keep or not
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def plan(args: argparse.Namespace, baseline: Tree | None) -> list[Variant]:
    """Every server to measure in one round, in the order of the first round."""
    trees = [current_tree(), *([baseline] if baseline else [])]
    kinds = [SERVERS_BY_KEY[key] for key in args.servers]
    return [Variant(kind, workers, tree) for workers in args.workers for kind in kinds
            for tree in (trees if kind.ours else [None])]


def run(args: argparse.Namespace, tmp: Path, baseline: Tree | None = None) -> int:
    wall_start = time.perf_counter()
    print(table("Machine", ["what", "value"], machine_description(tmp, args.server_cpu, args.load_cpu, args.workers)))
    variants = plan(args, baseline)
    trees = {v.tree.name: v.tree for v in variants if v.tree}
    for tree in trees.values():
        print(f"{tree.name}: {tree.what}")
    points = len(variants) * len(args.concurrency) * args.rounds
    estimate = (points * (args.duration + args.warmup + 0.5) + len(variants) * args.rounds * START_S
                + len(args.concurrency) * (args.duration + args.warmup + 1) + 4 * args.ceiling_seconds + 20)
    print(f"plan: {args.rounds} round(s) of {len(variants)} servers x {len(args.concurrency)} concurrencies = "
          f"{points} load points, about {estimate / 60:.0f} min on an idle machine")
    model = register_model(tmp)
    print(f"\nmodel: {model.uri} in {model.tracking_uri} (store created and 2 versions registered in "
          f"{model.seconds:.1f} s)")
    body = split_body(model.frame.iloc[:args.rows])
    body_file = tmp / "request.json"
    body_file.write_bytes(body)
    print(f"request: POST /invocations, Content-Type application/json, dataframe_split, {args.rows} row(s), "
          f"{len(body)} bytes: {body[:160].decode()}{'...' if len(body) > 160 else ''}")

    import mlflow

    pyfunc_model = mlflow.pyfunc.load_model(model.uri)
    check_bodies = [body, split_body(model.frame.iloc[:CHECK_ROWS])]
    expected = [pyfunc_model.predict(model.frame.iloc[:n]).tolist() for n in (args.rows, CHECK_ROWS)]
    with contextlib.suppress(ImportError, AttributeError):
        from jupyter_mlflow_k8s.serving.__main__ import parser as serving_parser

        defaults = serving_parser().parse_args([model.uri])
        print(f"ours: batching defaults --max-batch-size {defaults.max_batch_size}, "
              f"--max-wait-ms {defaults.max_wait_ms:g}")

    results: Results = {}
    problems = measure_rounds(args, variants, model, tmp, body_file, (check_bodies, expected), results)
    if any(p.startswith("stopped:") for p in problems):
        print("\nproblems:\n  " + "\n  ".join(problems))
        return 1

    ceiling = {}
    for concurrency in args.concurrency:
        done = subprocess.run([sys.executable, str(LOADGEN), "--ceiling", "--body-file", str(body_file),
                               "--concurrency", str(concurrency), "--duration", str(args.duration), "--warmup",
                               str(args.warmup), "--server-cpu", str(args.server_cpu), "--cpu", str(args.load_cpu)],
                              capture_output=True, text=True, timeout=args.duration + args.warmup + 120)
        if done.returncode == 0:
            ceiling[concurrency] = json.loads(done.stdout)
        else:
            problems.append(f"load generator ceiling at concurrency {concurrency}: {done.stderr[-500:]}")
    in_process = in_process_ceiling(model, args.rows, args.ceiling_seconds, args.server_cpu)

    report(args, variants, results, ceiling, in_process)
    for variant in variants:
        for concurrency in args.concurrency:
            for r in results[(variant.key, concurrency)]:
                if r["failed"]:
                    problems.append(f"{variant.describe()} at concurrency {concurrency}: {r['failed']} failed requests "
                                    f"({r['statuses']}, connection errors {r['connection_errors']}): "
                                    f"{'; '.join(r['error_samples'])}")
    elapsed = time.perf_counter() - wall_start
    print(f"\nwhole benchmark: {elapsed:.0f} s; load average at the end: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("\nproblems (failed starts, different answers, failed requests): " + ("none" if not problems else ""))
    for line in problems:
        print("  " + line)
    return 1 if problems else 0


def measure_rounds(args: argparse.Namespace, variants: Sequence[Variant], model: Model, tmp: Path, body_file: Path,
                   checks: tuple[Sequence[bytes], Sequence[Any]], results: Results) -> list[str]:
    """Every round over every server, reversed every other round; problems found (``stopped:`` first when the
    run cannot go on: a server that did not start or answered differently)."""
    problems: list[str] = []
    for round_index in range(args.rounds):
        for variant in variants if round_index % 2 == 0 else variants[::-1]:
            cpus = server_cpus(variant.workers, args.server_cpu, args.load_cpu)
            try:
                with running(variant, model, tmp, cpus) as server:
                    if round_index == 0:  # each server's answers once, before its first load
                        wrong = check_answers([server], *checks)
                        where = describe_cpus(variant.workers, args.server_cpu, args.load_cpu)
                        print(f"\n{variant.describe()} on {where}: "
                              f"first 200 on /ping after {server.ready_s:.1f} s; answers ({len(checks[0])} requests: "
                              f"{args.rows} and {CHECK_ROWS} rows) as in-process predict: {'no' if wrong else 'yes'}",
                              flush=True)
                        if wrong:
                            return [f"stopped: {variant.describe()}: {p}" for p in wrong]
                    for concurrency in args.concurrency:
                        result = measure_point(server, body_file, concurrency, args)
                        results.setdefault((variant.key, concurrency), []).append(result)
                        print(f"round {round_index + 1}, {variant.describe()}, concurrency {concurrency}: "
                              f"{result['throughput']:.0f} req/s, p50 {s(result['p50_ms'], 2)} ms, "
                              f"p99 {s(result['p99_ms'], 2)} ms, failed {result['failed']}, "
                              f"server CPU {result['server_cpu_s_per_s']:.2f}/s, "
                              f"others {s(result['other_cpu_s'])} CPU-s", flush=True)
                    problems += [f"{variant.describe()}: {p}" for p in server.problems]
            except RuntimeError as error:
                return [*problems, f"stopped: {variant.describe()}: {error}"]
    return problems


# ----------------------------------------------------------------------------- the tables


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def paired_ratios(ours: Sequence[dict[str, Any]], peer: Sequence[dict[str, Any]]) -> str:
    """The throughput ratio of each round's pair (the rounds interleave, so a pair saw the same machine)."""
    return " ".join(s(ratio(a["throughput"], b["throughput"]), 2) for a, b in zip(ours, peer, strict=True))


def report(args: argparse.Namespace, variants: Sequence[Variant], results: Results,
           ceiling: dict[int, dict[str, Any]], in_process: list[list[str]]) -> None:
    rounds = "one round" if args.rounds == 1 else f"median of {args.rounds} rounds by req/s" + (
        ", the lower middle one" if args.rounds % 2 == 0 else "")
    load = (f"{args.rows}-row dataframe_split requests, closed loop, {args.duration:g} s measured after "
            f"{args.warmup:g} s warm-up")
    ordered = sorted(variants, key=lambda v: (SERVERS.index(v.kind), v.tree.name if v.tree else "", v.workers))
    rows = []
    for variant in ordered:
        for concurrency in args.concurrency:
            r = median_round(results[(variant.key, concurrency)])
            rows.append([variant.label, str(variant.workers), str(concurrency), s(r["throughput"]), s(r["p50_ms"], 2),
                         s(r["p99_ms"], 2), str(r["failed"]), s(r["mean_batch"], 1), s(r["server_cpu_s_per_s"], 2),
                         s(r["loadgen_cpu_s_per_s"], 2), s(r["other_cpu_s"], 1)])
    print()
    print(table(f"Throughput and latency ({rounds}; {load})",
                ["server", "workers", "concurrency", "req/s", "p50 ms", "p99 ms", "failed", "mean batch",
                 "server CPU/s", "loadgen CPU/s", "others CPU-s"], rows))

    def median(variant: Variant, concurrency: int) -> dict[str, Any]:
        return median_round(results[(variant.key, concurrency)])

    by_key = {v.key: v for v in variants}
    current = [v for v in ordered if v.tree and v.tree.name == "current"]
    if any(v.kind.key == "mlflow" for v in variants):
        rows = []
        for variant in current:
            peer = by_key[("mlflow", "", variant.workers)]
            for concurrency in args.concurrency:
                ours, theirs = median(variant, concurrency), median(peer, concurrency)
                throughput = ratio(ours["throughput"], theirs["throughput"])
                p99 = ratio(ours["p99_ms"], theirs["p99_ms"])
                met = throughput is not None and p99 is not None and throughput >= GOAL_THROUGHPUT and p99 <= 1.0
                rows.append([variant.label, str(variant.workers), str(concurrency), s(throughput, 2), s(p99, 2),
                             "yes" if met else "no"])
        print()
        print(table(f"Ratios ours / mlflow models serve, same worker count (goal: throughput >= {GOAL_THROUGHPUT:g}x "
                    "at p99 ratio <= 1)",
                    ["server", "workers", "concurrency", "throughput ratio", "p99 ratio", "goal met"], rows))

    if any(v.tree and v.tree.name == "baseline" for v in variants):
        rows = []
        for variant in current:
            base = by_key[(variant.kind.key, "baseline", variant.workers)]
            for concurrency in args.concurrency:
                now, before = median(variant, concurrency), median(base, concurrency)
                rows.append([variant.label, str(variant.workers), str(concurrency), s(now["throughput"]),
                             s(before["throughput"]), s(ratio(now["throughput"], before["throughput"]), 2),
                             paired_ratios(results[(variant.key, concurrency)], results[(base.key, concurrency)]),
                             s(ratio(now["p99_ms"], before["p99_ms"]), 2)])
        print()
        print(table(f"Current / baseline ({next(v.tree.what for v in variants if v.tree and v.tree.name == 'baseline')}"
                    "; > 1: current faster)",
                    ["server", "workers", "concurrency", "req/s current", "req/s baseline", "throughput ratio",
                     "ratio per round", "p99 ratio"], rows))

    if len(args.workers) > 1:
        fewest = args.workers[0]
        rows = []
        for variant in (v for v in ordered if v.workers != fewest):
            single = by_key[(variant.kind.key, variant.key[1], fewest)]
            for concurrency in args.concurrency:
                many, one = median(variant, concurrency), median(single, concurrency)
                rows.append([variant.label, str(concurrency), f"{variant.workers} / {fewest}", s(many["throughput"]),
                             s(one["throughput"]), s(ratio(many["throughput"], one["throughput"]), 2),
                             paired_ratios(results[(variant.key, concurrency)], results[(single.key, concurrency)]),
                             s(ratio(many["p99_ms"], one["p99_ms"]), 2)])
        cpus = "; ".join(f"{w}: {describe_cpus(w, args.server_cpu, args.load_cpu)}" for w in args.workers)
        print()
        print(table(f"Workers: more / {fewest} worker{'s' if fewest > 1 else ''}, same server and tree (CPUs per "
                    f"worker count {cpus}; load generator on CPU {args.load_cpu})",
                    ["server", "concurrency", "workers", "req/s more", f"req/s {fewest}", "throughput ratio",
                     "ratio per round", "p99 ratio"], rows))

    rows = []
    for concurrency, r in sorted(ceiling.items()):
        rows.append([str(concurrency), s(r["throughput"]), s(r["p50_ms"], 3), s(r["p99_ms"], 3), str(r["failed"]),
                     s(r["loadgen_cpu_s_per_s"], 2)])
    print()
    print(table(f"The load generator's own ceiling: the same requests against a trivial asyncio.Protocol server "
                f"(server on CPU {args.server_cpu}, generator on CPU {args.load_cpu})",
                ["concurrency", "req/s", "p50 ms", "p99 ms", "failed", "loadgen CPU/s"], rows))

    print()
    print(table(f"In-process ceiling: predict in a loop in one process pinned to CPU {args.server_cpu} "
                f"({args.ceiling_seconds:g} s each, after 50 warm-up calls)",
                ["call", "calls/s", "rows/s", "us/call"], in_process))


if __name__ == "__main__":
    sys.exit(main())
