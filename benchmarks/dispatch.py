"""Dispatch overhead of ``%%train`` on the local backend, beside its peers in the same run.

Usage::

    python benchmarks/dispatch.py [--repeat 20] [--warmup 2] [--keep]

Everything runs in one in-process IPython shell with ``%load_ext jupyter_mlflow_k8s``, a fresh
``JMK_STATE_DIR`` and no ``MLFLOW_TRACKING_URI`` (so the embedded SQLite store is used). It
measures, interleaved over ``--repeat`` rounds after a warm-up:

(a) ``shell.run_cell("x = 1 + 1")``: the cell run in the kernel;
(b) ``subprocess.run([python, "-c", "x = 1 + 1"])``: the bare subprocess, the peer every ratio uses;
(c) ``%%train`` on ``x = 1 + 1`` until ``x`` is back in the namespace;
(d) ``%%train`` on ``print("first", flush=True)`` + a 0.5 s sleep: when the line reaches stdout;

then process start + imports of the runner, the supervisor and MLflow against ``python -c pass``.
Every ``%%train`` is timestamped phase by phase (wrapped service functions, the job record's
``started``/``finished`` written by the supervisor, the creation time of the slot lock file the
supervisor takes, the mtimes of the result document and the log written by the runner), which
gives where the time of one job goes. The supervisor is spawned in ``LocalBackend.prepare``,
before MLflow's ``start_run``: from the spawn until the runner starts, the kernel (opening the
run, writing the payload) and the supervisor (starting, importing, taking a slot, waiting for the
payload) work at once, and that stretch is shown both ways with its overlap. The first
``%%train`` after ``%load_ext`` is reported on its own (cold: it imports MLflow and creates the
SQLite store, in the foreground).

It prints a table and ratios; it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from machine import cpu_model, memory_total, scratch_environment  # benchmarks/machine.py

TRIVIAL_CELL = "x = 1 + 1"
FIRST_LINE_CELL = 'print("first", flush=True)\nimport time; time.sleep(0.5)'
FIRST_LINE_MARKER = "first"
GOAL_FIRST_LINE_S = 0.3
GOAL_OVERHEAD_RATIO = 2.0
SUPERVISOR_EXIT_TIMEOUT_S = 15.0


# ----------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


# ----------------------------------------------------------------------------- machine


def machine_description(state_dir: Path) -> list[tuple[str, str]]:
    """CPU, cores, memory, Python and the versions that matter, as (label, value) pairs."""
    cpu, memory = cpu_model(), memory_total()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for package in ("jupyter_mlflow_k8s", "mlflow", "ipython", "cloudpickle", "fsspec", "psutil"):
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    return [
        ("CPU", cpu),
        ("cores", f"{os.cpu_count()} logical, {usable} usable by this process"),
        ("memory", memory),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"),
        ("packages", ", ".join(versions)),
        ("nvidia-smi", shutil.which("nvidia-smi") or "not found (no GPUs to detect)"),
        ("state dir", f"{state_dir} on {filesystem_of(state_dir)}"),
    ]


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (SQLite's commit cost depends on it)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return f"{kind} ({best or '?'})"


# ----------------------------------------------------------------------------- instrumentation


class Stamps:
    """Wall-clock times (``time.time()``, comparable across processes) of one ``%%train``."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.results: dict[str, Any] = {}

    def reset(self) -> None:
        self.marks.clear()
        self.results.clear()

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.time())  # the first occurrence in this call counts

    def span(self, start: str, end: str) -> float | None:
        if start in self.marks and end in self.marks:
            return self.marks[end] - self.marks[start]
        return None

    def wrap(self, owner: Any, attribute: str, name: str, within: str | None = None) -> Callable[[], None]:
        """Replace ``owner.attribute`` by a timed wrapper; returns the undo.

        With ``within``, only calls made while the wrapped ``within`` step runs are marked.
        """
        original = getattr(owner, attribute)

        def inside() -> bool:
            return within is None or (f"{within}.start" in self.marks and f"{within}.end" not in self.marks)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not inside():
                return original(*args, **kwargs)
            self.mark(f"{name}.start")
            try:
                result = original(*args, **kwargs)
            finally:
                self.mark(f"{name}.end")
            self.results.setdefault(name, result)
            return result

        setattr(owner, attribute, timed)
        return lambda: setattr(owner, attribute, original)


def instrument_service(stamps: Stamps) -> list[Callable[[], None]]:
    """Time the steps of submit, prepare (spawn), launch and collect (no MLflow import here).

    ``LocalBackend.prepare`` writes ``launch.json`` and spawns the supervisor; its first call of
    ``_reap_children`` comes right after ``Popen`` returned (the supervisor has exec-ed): the
    spawn. ``LocalBackend.launch`` does nothing now; it is called right after the payload's URL
    is in the job record, which is when the supervisor can see it: "payload staged".
    """
    from jupyter_mlflow_k8s import jobs, tracking
    from jupyter_mlflow_k8s.backends import local
    from jupyter_mlflow_k8s.backends.local import LocalBackend
    from jupyter_mlflow_k8s.magics import train
    from jupyter_mlflow_k8s.widgets.status import JobStatusView

    return [
        stamps.wrap(train, "analyze_cell", "analyze"),
        stamps.wrap(jobs.JobService, "submit", "submit"),
        stamps.wrap(LocalBackend, "check", "check"),
        stamps.wrap(jobs, "stage_inputs", "stage"),
        stamps.wrap(LocalBackend, "prepare", "prepare"),
        stamps.wrap(local, "_reap_children", "spawned", within="prepare"),
        stamps.wrap(tracking, "start_run", "start_run"),
        stamps.wrap(tracking, "client", "client"),
        stamps.wrap(tracking, "ensure_experiment", "ensure_experiment"),
        stamps.wrap(jobs, "write_payload", "write_payload"),
        stamps.wrap(LocalBackend, "launch", "launch"),
        stamps.wrap(JobStatusView, "show", "show"),
        stamps.wrap(jobs, "finalize_tracking", "finalize"),
        stamps.wrap(tracking, "close_run", "close_run"),
        stamps.wrap(jobs.JobService, "result", "result"),
    ]


def instrument_mlflow(stamps: Stamps) -> list[Callable[[], None]]:
    """Time the MLflow client calls (imports MLflow: install only after the cold call)."""
    from mlflow.tracking import MlflowClient

    calls = ("get_experiment_by_name", "create_run", "log_batch", "log_artifact", "set_terminated")
    return [stamps.wrap(MlflowClient, name, f"mlflow.{name}") for name in calls]


class StampedStdout(io.TextIOBase):
    """Stands in for sys.stdout: keeps the text, notes when a line equal to the marker arrives."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.first_seen: float | None = None
        self.parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.first_seen is None and any(line.strip() == self.marker for line in text.splitlines()):
            self.first_seen = time.time()
        self.parts.append(text)
        return len(text)

    def text(self) -> str:
        return "".join(self.parts)


# ----------------------------------------------------------------------------- one %%train


@dataclass
class TrainSample:
    """One timed ``%%train``: seconds, from the magic's call."""

    total: float
    first_line: float | None
    phases: dict[str, float | None] = field(default_factory=dict)
    concurrent: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, float | None] = field(default_factory=dict)
    after: dict[str, float | None] = field(default_factory=dict)
    supervisor_first: bool | None = None  # had its slot before the payload was staged


def url_path(url: str | None) -> Path | None:
    if not url:
        return None
    parsed = urlparse(url)
    return Path(url2pathname(parsed.path)) if parsed.scheme in ("file", "") else None


def mtime(path: Path | str | None) -> float | None:
    if path is None:
        return None
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return None


def diff(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier


def take_slot_stamp(job_dir: Path) -> float | None:
    """When the supervisor took its slot: the creation time of its ``slot-N`` lock file.

    The supervisor opens ``locks/slot-N`` with mode ``"a"`` and ``flock``-s it; a missing file
    is created then, so its mtime is that moment. The files are removed here once the job's
    supervisor has exited (the benchmark runs one job at a time, nothing holds them), so the
    next job creates its own.
    """
    try:
        locks = Path(json.loads((job_dir / "launch.json").read_text())["locks"])
    except (OSError, ValueError, KeyError):
        return None
    stamps = []
    for lock in locks.glob("slot-*"):
        if (stamp := mtime(lock)) is not None:
            stamps.append(stamp)
        with contextlib.suppress(OSError):
            lock.unlink()
    return max(stamps) if stamps else None


def concurrent_phases(marks: dict[str, float], slot: float | None, started: float | None) -> dict[str, float | None]:
    """From the supervisor's spawn until the runner's: the kernel's side, the supervisor's, the overlap."""
    spawned, staged = marks.get("spawned.start"), marks.get("launch.start")
    both = None if staged is None or slot is None else min(staged, slot)
    return {
        "kernel: note the supervisor's pid (psutil, record)": diff(marks.get("prepare.end"), spawned),
        "kernel: MLflow start_run": diff(marks.get("start_run.end"), marks.get("start_run.start")),
        "kernel: record the run, write payload, record it": diff(staged, marks.get("start_run.end")),
        "= kernel: spawn until payload staged": diff(staged, spawned),
        "supervisor: start, imports, read job, take a slot": diff(slot, spawned),
        "supervisor: wait for the payload, spawn the runner": diff(started, slot),
        "= supervisor: spawn until runner spawned (needs both)": diff(started, spawned),
        "overlap: both at work": diff(both, spawned),
        "runner spawned after the payload was staged": diff(started, staged),
    }


def run_train(shell: Any, stamps: Stamps, cell: str, expect_x: bool) -> TrainSample:
    """Run ``%%train`` on ``cell`` with stdout captured; wait for its supervisor to exit."""
    import psutil

    from jupyter_mlflow_k8s.magics.common import service_for

    shell.user_ns.pop("x", None)
    stamps.reset()
    sink = StampedStdout(FIRST_LINE_MARKER)
    errors = io.StringIO()
    start_wall = time.time()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(errors):
            shell.run_cell_magic("train", "", cell)
    except BaseException:
        sys.stderr.write(sink.text() + errors.getvalue())
        raise
    total = time.perf_counter() - start
    end_wall = time.time()
    if expect_x and shell.user_ns.get("x") != 2:
        sys.stderr.write(sink.text() + errors.getvalue())
        raise RuntimeError("%%train returned without x == 2 in the namespace")

    submitted = stamps.results.get("submit")
    if submitted is None:
        raise RuntimeError("%%train did not go through JobService.submit")
    store = service_for(shell).store
    record = store.load(submitted.job_id)
    linger = None
    if record.pid:
        with contextlib.suppress(psutil.Error):
            psutil.Process(record.pid).wait(timeout=SUPERVISOR_EXIT_TIMEOUT_S)
        linger = time.time() - end_wall
    slot = take_slot_stamp(store.job_dir(record.job_id))

    marks = stamps.marks
    spawned, staged = marks.get("spawned.start"), marks.get("launch.start")
    result_written = mtime(url_path(record.result_uri))
    first_line = diff(sink.first_seen, start_wall)
    sample = TrainSample(total=total, first_line=first_line)
    sample.after = {"supervisor exits, after the magic returned": linger}
    sample.concurrent = concurrent_phases(marks, slot, record.started)
    if slot is not None and staged is not None:
        sample.supervisor_first = slot < staged
    from_spawn = "spawn until runner spawned: kernel and supervisor at once"
    if expect_x:
        sample.phases = {
            "kernel: parse flags, analyze cell, build spec": diff(marks.get("submit.start"), start_wall),
            "kernel: check backend, create job record": stamps.span("submit.start", "stage.start"),
            "kernel: stage inputs (cloudpickle)": stamps.span("stage.start", "prepare.start"),
            "kernel: spawn supervisor (launch.json, Popen)": stamps.span("prepare.start", "spawned.start"),
            from_spawn: diff(record.started, spawned),
            "runner: start, imports, cell, write result": diff(result_written, record.started),
            "supervisor: see runner exit, record the end": diff(record.finished, result_written),
            "kernel: see the end (log/record poll)": diff(marks.get("finalize.start"), record.finished),
            "kernel: close MLflow run": stamps.span("finalize.start", "finalize.end"),
            "kernel: load result, namespace, print": diff(end_wall, marks.get("finalize.end")),
        }
        sample.details = mlflow_details(stamps)
    else:
        printed = mtime(record.log_path)  # the cell prints one line, then only sleeps
        sample.phases = {
            "kernel: submit until the supervisor is spawned": diff(spawned, start_wall),
            from_spawn: diff(record.started, spawned),
            "runner: start, imports, load payload, print": diff(printed, record.started),
            "kernel: see the line (log poll), print it": diff(sink.first_seen, printed),
        }
        sample.details = {
            "call until the line is in the log (table above)": diff(printed, start_wall),
            "runner: sleep 0.5 s, write result": diff(result_written, printed),
            "supervisor: see runner exit, record the end": diff(record.finished, result_written),
            "kernel: see the end (log/record poll)": diff(marks.get("finalize.start"), record.finished),
            "kernel: close MLflow run": stamps.span("finalize.start", "finalize.end"),
            "kernel: load result, namespace, print": diff(end_wall, marks.get("finalize.end")),
        }
    return sample


def mlflow_details(stamps: Stamps) -> dict[str, float | None]:
    """Parts of the phases above, and what the kernel does beside the job."""
    return {
        "backend check (GPU detection)": stamps.span("check.start", "check.end"),
        "tracking.client (cached MlflowClient for the URI)": stamps.span("client.start", "client.end"),
        "tracking.ensure_experiment (first call per URI and name)": stamps.span(
            "ensure_experiment.start", "ensure_experiment.end"
        ),
        "MLflow get_experiment_by_name": stamps.span(
            "mlflow.get_experiment_by_name.start", "mlflow.get_experiment_by_name.end"
        ),
        "MLflow create_run": stamps.span("mlflow.create_run.start", "mlflow.create_run.end"),
        "MLflow log_batch (params)": stamps.span("mlflow.log_batch.start", "mlflow.log_batch.end"),
        "MLflow log_artifact (job log, if not empty)": stamps.span(
            "mlflow.log_artifact.start", "mlflow.log_artifact.end"
        ),
        "MLflow set_terminated": stamps.span("mlflow.set_terminated.start", "mlflow.set_terminated.end"),
        "kernel, beside the job: status view shown": stamps.span("show.start", "show.end"),
        "kernel: JobService.result (read result, unpickle)": stamps.span("result.start", "result.end"),
    }


# ----------------------------------------------------------------------------- other samples


def time_subprocess(argv: Sequence[str], cwd: str | None = None, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(list(argv), check=True, stdin=subprocess.DEVNULL, capture_output=True, cwd=cwd, env=env)
    return time.perf_counter() - start


def time_run_cell(shell: Any) -> float:
    start = time.perf_counter()
    result = shell.run_cell(TRIVIAL_CELL)
    elapsed = time.perf_counter() - start
    if not result.success:
        raise RuntimeError(f"run_cell failed: {result.error_in_exec or result.error_before_exec}")
    return elapsed


# ----------------------------------------------------------------------------- report


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [title, "-" * len(title)]
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_rows(named: Sequence[tuple[str, Sequence[float]]], peer: float) -> list[list[str]]:
    return [
        [name, ms(median(values)), ms(p90(values)), f"{median(values) / peer:.2f}"]
        for name, values in named
    ]


def phase_rows(samples: Sequence[TrainSample], attribute: str, whole: float | None) -> list[list[str]]:
    names: list[str] = []
    for sample in samples:
        for name in getattr(sample, attribute):
            if name not in names:
                names.append(name)
    rows = []
    for name in names:
        values = [v for s in samples if (v := getattr(s, attribute).get(name)) is not None]
        if not values:
            continue
        share = f"{100 * median(values) / whole:.0f}%" if whole else ""
        rows.append([name, ms(median(values)), ms(p90(values)), share])
    return rows


def phase_table(title: str, samples: Sequence[TrainSample], attribute: str, whole: float | None,
                first: str = "phase") -> str:
    """Per-name median and p90 of one attribute of the samples, with its share of ``whole``."""
    return table(title, [first, "median", "p90", "share"], phase_rows(samples, attribute, whole))


def single_rows(sample: TrainSample, attribute: str) -> list[list[str]]:
    items: dict[str, float | None] = getattr(sample, attribute)
    return [
        [name, ms(value), f"{100 * value / sample.total:.0f}%"] for name, value in items.items() if value is not None
    ]


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def fresh_environment(keep: bool) -> contextlib.AbstractContextManager[Path]:
    """A temporary JMK_STATE_DIR and IPYTHONDIR; no MLflow URI, storage or backend override."""
    return scratch_environment(
        "jmk-bench-", keep, lambda root: {"JMK_STATE_DIR": str(root / "state"), "IPYTHONDIR": str(root / "ipython")}
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=20, help="measured rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="%%%%train calls after the cold one, not counted")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    args = parser.parse_args(argv)
    repeat = max(1, args.repeat)

    with fresh_environment(args.keep) as root:
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        shell = InteractiveShell.instance(config=config)
        stamps = Stamps()

        progress("cold: %load_ext, then the first %%train")
        start = time.perf_counter()
        shell.run_line_magic("load_ext", "jupyter_mlflow_k8s")
        load_ext = time.perf_counter() - start
        undo = instrument_service(stamps)
        cold = run_train(shell, stamps, TRIVIAL_CELL, expect_x=True)
        # start_run imports MLflow (``from mlflow.entities import Param``) before it asks for the client.
        cold.details = {
            "start_run: import MLflow (until it calls tracking.client)": stamps.span("start_run.start", "client.start"),
            "tracking.client: MlflowClient, create the SQLite store": stamps.span("client.start", "client.end"),
            **cold.details,
        }
        cold.details.pop("tracking.client (cached MlflowClient for the URI)", None)
        undo += instrument_mlflow(stamps)

        progress(f"warm-up: {args.warmup} x %%train on each cell")
        for _ in range(args.warmup):
            run_train(shell, stamps, TRIVIAL_CELL, expect_x=True)
            run_train(shell, stamps, FIRST_LINE_CELL, expect_x=False)
        time_run_cell(shell)
        time_subprocess([sys.executable, "-c", TRIVIAL_CELL])

        in_kernel: list[float] = []
        bare: list[float] = []
        trivial: list[TrainSample] = []
        streamed: list[TrainSample] = []
        for round_ in range(repeat):
            progress(f"round {round_ + 1}/{repeat}: run_cell, subprocess, %%train, %%train first line")
            in_kernel.append(time_run_cell(shell))
            bare.append(time_subprocess([sys.executable, "-c", TRIVIAL_CELL]))
            trivial.append(run_train(shell, stamps, TRIVIAL_CELL, expect_x=True))
            streamed.append(run_train(shell, stamps, FIRST_LINE_CELL, expect_x=False))

        from jupyter_mlflow_k8s.magics.common import service_for

        last = service_for(shell).store.list()
        payload = next((r for r in last if r.spec.code.strip() == TRIVIAL_CELL and r.payload_uri), None)
        commands: dict[str, list[str]] = {
            "python -c pass": ["-c", "pass"],
            "python -c 'import jupyter_mlflow_k8s.runner'": ["-c", "import jupyter_mlflow_k8s.runner"],
            "python -c 'import jupyter_mlflow_k8s.backends.local_supervisor' (supervisor)": [
                "-c", "import jupyter_mlflow_k8s.backends.local_supervisor"],
            "python -c 'import mlflow'": ["-c", "import mlflow"],
        }
        if payload is not None:
            commands["python -m jupyter_mlflow_k8s.runner <staged trivial payload>"] = [
                "-m", "jupyter_mlflow_k8s.runner", str(payload.payload_uri)]
        workdir = payload.spec.workdir if payload is not None else None
        runner_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        imports: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(repeat):
            progress(f"round {round_ + 1}/{repeat}: process start + imports")
            for name, arguments in commands.items():
                imports[name].append(time_subprocess([sys.executable, *arguments], cwd=workdir, env=runner_env))

        for restore in reversed(undo):
            restore()
        machine = machine_description(root)

    peer = median(bare)
    totals = [s.total for s in trivial]
    first_lines = [s.first_line for s in streamed if s.first_line is not None]
    streamed_totals = [s.total for s in streamed]
    overhead = median(totals) - median(in_kernel)

    out: list[str] = ["Dispatch overhead of %%train (local backend, embedded SQLite MLflow)", ""]
    out += [f"{label:<11}{value}" for label, value in machine]
    out.append(f"{'run':<11}{time.strftime('%Y-%m-%d %H:%M:%S')}, --repeat {repeat}, --warmup {args.warmup}")
    out.append("")
    rows = summary_rows(
        [
            ("(a) in-kernel run_cell('x = 1 + 1')", in_kernel),
            ("(b) subprocess.run([python, -c, 'x = 1 + 1'])", bare),
            ("(c) %%train 'x = 1 + 1' until x is in the namespace", totals),
            ("(d) %%train print('first') + sleep 0.5: first line", first_lines),
            ("(d) %%train print('first') + sleep 0.5: total", streamed_totals),
            *imports.items(),
        ],
        peer,
    )
    out.append(table("Timings (ms)", ["name", "median", "p90", "x (b)"], rows))
    out.append("")
    out.append(f"%%train total / bare subprocess:                         {median(totals) / peer:.2f}")
    verdict = "met" if overhead / peer <= GOAL_OVERHEAD_RATIO else "missed"
    out.append(
        f"%%train overhead (total - in-kernel) / bare subprocess:  {overhead / peer:.2f}"
        f"   (goal <= {GOAL_OVERHEAD_RATIO:g}: {verdict})"
    )
    verdict = "met" if median(first_lines) < GOAL_FIRST_LINE_S else "missed"
    out.append(
        f"time to the first streamed line:                         {ms(median(first_lines))} ms median, "
        f"{ms(p90(first_lines))} ms p90   (goal < {GOAL_FIRST_LINE_S * 1000:.0f} ms: {verdict})"
    )
    out.append("")
    both = [*trivial, *streamed]
    out += [
        phase_table(
            f"Where one %%train 'x = 1 + 1' goes (critical path, {repeat} runs; phases add up to the total)",
            trivial, "phases", median(totals),
        ),
        "",
        phase_table(
            f"  the spawn until the runner is spawned: kernel and supervisor at once ({repeat} runs, from the spawn)",
            trivial, "concurrent", median(totals), first="side: step",
        ),
    ]
    ordered = [s.supervisor_first for s in both if s.supervisor_first is not None]
    if ordered:
        out.append(
            f"  the supervisor had its slot before the payload was staged in {sum(ordered)} of {len(ordered)} "
            "(c)+(d) runs (then it polls the record for the payload)"
        )
    out += [
        "",
        phase_table("  of which, or beside it (ms)", trivial, "details", median(totals), first="detail"),
        "",
        phase_table(f"Where the first streamed line's time goes ({len(streamed)} runs)",
                    streamed, "phases", median(first_lines)),
        "",
        phase_table(f"The rest of the (d) cell, from the line to the result ({len(streamed)} runs)",
                    streamed, "details", median(streamed_totals)),
        "",
    ]
    lingers = [v for s in both if (v := s.after.get("supervisor exits, after the magic returned"))]
    if lingers:
        out.append(
            f"After the magic returned, the supervisor exited {ms(median(lingers))} ms later (median, p90 "
            f"{ms(p90(lingers))} ms); the next round waited for it."
        )
        out.append("")
    out.append(f"Cold: %load_ext {ms(load_ext)} ms; first %%train right after it {ms(cold.total)} ms")
    out.append(table("Where the cold first %%train goes", ["phase", "ms", "share"], single_rows(cold, "phases")))
    out.append("")
    out.append(table("  the spawn until the runner is spawned", ["side: step", "ms", "share"],
                     single_rows(cold, "concurrent")))
    out.append("")
    out.append(table("  of which, or beside it", ["detail", "ms", "share"], single_rows(cold, "details")))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
