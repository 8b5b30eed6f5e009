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
``started``/``finished`` written by the supervisor, the mtimes of the result document and the
log written by the runner), which gives where the time of one job goes. The first ``%%train``
after ``%load_ext`` is reported on its own (cold: MLflow import, database creation).

It prints a table and ratios; it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

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
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
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

    def wrap(self, owner: Any, attribute: str, name: str) -> Callable[[], None]:
        """Replace ``owner.attribute`` by a timed wrapper; returns the undo."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
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
    """Time the steps of submit, launch and collect (no MLflow import here)."""
    from jupyter_mlflow_k8s import jobs, tracking
    from jupyter_mlflow_k8s.backends.local import LocalBackend
    from jupyter_mlflow_k8s.magics import train
    from jupyter_mlflow_k8s.widgets.status import JobStatusView

    return [
        stamps.wrap(train, "analyze_cell", "analyze"),
        stamps.wrap(jobs.JobService, "submit", "submit"),
        stamps.wrap(LocalBackend, "check", "check"),
        stamps.wrap(jobs, "stage_inputs", "stage"),
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
    details: dict[str, float | None] = field(default_factory=dict)
    after: dict[str, float | None] = field(default_factory=dict)


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
    record = service_for(shell).store.load(submitted.job_id)
    linger = None
    if record.pid:
        with contextlib.suppress(psutil.Error):
            psutil.Process(record.pid).wait(timeout=SUPERVISOR_EXIT_TIMEOUT_S)
        linger = time.time() - end_wall

    marks = stamps.marks
    launched = marks.get("launch.end")
    result_written = mtime(url_path(record.result_uri))
    first_line = diff(sink.first_seen, start_wall)
    sample = TrainSample(total=total, first_line=first_line)
    sample.after = {"supervisor exits, after the magic returned": linger}
    if expect_x:
        sample.phases = {
            "kernel: parse flags, analyze cell, build spec": diff(marks.get("submit.start"), start_wall),
            "kernel: check backend, create job record": stamps.span("submit.start", "stage.start"),
            "kernel: stage inputs (cloudpickle)": stamps.span("stage.start", "stage.end"),
            "kernel: MLflow start_run": stamps.span("start_run.start", "start_run.end"),
            "kernel: write payload, update record": stamps.span("start_run.end", "launch.start"),
            "kernel: spawn supervisor (Popen + psutil)": stamps.span("launch.start", "launch.end"),
            "supervisor: start, imports, slot, spawn runner": diff(record.started, launched),
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
            "kernel: submit (analyze ... spawn supervisor)": diff(launched, start_wall),
            "supervisor: start, imports, slot, spawn runner": diff(record.started, launched),
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
        "tracking.client (MlflowClient for the URI)": stamps.span("client.start", "client.end"),
        "tracking.ensure_experiment": stamps.span("ensure_experiment.start", "ensure_experiment.end"),
        "MLflow get_experiment_by_name": stamps.span("mlflow.get_experiment_by_name.start",
                                                     "mlflow.get_experiment_by_name.end"),
        "MLflow create_run": stamps.span("mlflow.create_run.start", "mlflow.create_run.end"),
        "MLflow log_batch (params)": stamps.span("mlflow.log_batch.start", "mlflow.log_batch.end"),
        "MLflow log_artifact (job log)": stamps.span("mlflow.log_artifact.start", "mlflow.log_artifact.end"),
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


def single_rows(sample: TrainSample, attribute: str) -> list[list[str]]:
    items: dict[str, float | None] = getattr(sample, attribute)
    return [
        [name, ms(value), f"{100 * value / sample.total:.0f}%"] for name, value in items.items() if value is not None
    ]


def watch_warm_thread() -> Callable[[], float | None]:
    """When %load_ext's background MLflow import ends: a getter for that wall time (None: not seen)."""
    warm = next((t for t in threading.enumerate() if t.name == "jmk-warm-mlflow"), None)
    done: list[float] = []
    if warm is None:
        return lambda: None

    def wait() -> None:
        warm.join()
        done.append(time.time())

    threading.Thread(target=wait, name="bench-watch-warm", daemon=True).start()
    return lambda: done[0] if done else None


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def fresh_environment(keep: bool) -> Iterator[Path]:
    """A temporary JMK_STATE_DIR and IPYTHONDIR; no MLflow URI, storage or backend override."""
    root = Path(tempfile.mkdtemp(prefix="jmk-bench-"))
    saved = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "JMK_STORAGE_URL", "JMK_BACKEND"):
        os.environ.pop(name, None)
    os.environ["JMK_STATE_DIR"] = str(root / "state")
    os.environ["IPYTHONDIR"] = str(root / "ipython")
    try:
        yield root
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


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
        warm_done = watch_warm_thread()
        cold_start = time.time()
        cold = run_train(shell, stamps, TRIVIAL_CELL, expect_x=True)
        imported = warm_done()
        cold.details["MLflow background import done, after the call started"] = diff(imported, cold_start)
        client_start, client_end = stamps.marks.get("client.start"), stamps.marks.get("client.end")
        if imported is not None and client_start is not None and client_end is not None:
            cold.details["MlflowClient: store creation after the import was done"] = client_end - max(
                imported, client_start
            )
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
            "python -c 'import jupyter_mlflow_k8s.backends.local' (supervisor)": [
                "-c", "import jupyter_mlflow_k8s.backends.local"],
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
    out.append(
        table(
            f"Where one %%train 'x = 1 + 1' goes (critical path, {repeat} runs; phases add up to the total)",
            ["phase", "median", "p90", "share"],
            phase_rows(trivial, "phases", median(totals)),
        )
    )
    out.append("")
    out.append(table("  of which, or beside it (ms)", ["detail", "median", "p90", "share"],
                     phase_rows(trivial, "details", median(totals))))
    out.append("")
    out.append(
        table(
            f"Where the first streamed line's time goes ({len(streamed)} runs)",
            ["phase", "median", "p90", "share"],
            phase_rows(streamed, "phases", median(first_lines)),
        )
    )
    out.append("")
    out.append(
        table(
            f"The rest of the (d) cell, from the line to the result ({len(streamed)} runs)",
            ["phase", "median", "p90", "share"],
            phase_rows(streamed, "details", median(streamed_totals)),
        )
    )
    out.append("")
    lingers = [v for s in [*trivial, *streamed] if (v := s.after.get("supervisor exits, after the magic returned"))]
    if lingers:
        out.append(
            f"After the magic returned, the supervisor exited {ms(median(lingers))} ms later (median, p90 "
            f"{ms(p90(lingers))} ms); the next round waited for it."
        )
        out.append("")
    out.append(f"Cold: %load_ext {ms(load_ext)} ms; first %%train right after it {ms(cold.total)} ms")
    out.append(table("Where the cold first %%train goes", ["phase", "ms", "share"], single_rows(cold, "phases")))
    out.append("")
    out.append(table("  of which, or beside it", ["detail", "ms", "share"], single_rows(cold, "details")))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
