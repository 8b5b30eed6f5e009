"""A sweep of short trials on the local backend, against the ideal and the loops a user would write, in one run.

Usage::

    python benchmarks/sweep.py [--repeat 3] [--trials 16] [--parallel 4] [--seconds 1] [--keep]

Everything runs in one in-process IPython shell (``InteractiveShell.instance()``, history in memory) with
``%load_ext jupyter_mlflow_k8s``, a fresh ``JMK_STATE_DIR``, ``IPYTHONDIR`` and ``JUPYTER_CONFIG_DIR`` and a
SQLite MLflow store (``MLFLOW_TRACKING_URI=sqlite:///...``), all under one temporary directory; jobs run on
the local backend with ``c.LocalBackend.max_concurrent_jobs = --parallel`` (its default is the number of
cores, at least 2, which would cap ``--parallel`` on a small machine: row (e) measures that default). The
cell sleeps ``--seconds`` and assigns the objective ``t``. After one plain ``%%train`` and one small sweep
(warm-up, not counted), each of ``--repeat`` rounds measures, in turn:

(a) ``%%train --sweep "i=range(16)" --objective t:min --parallel 4``: wall time from the magic call until
    it returns (the best trial's ``t`` and ``sweep`` are in the namespace);
(b) the ideal: ``ceil(trials / parallel)`` rounds of ``--seconds`` (4.0 s), computed, not run;
(c) a loop of 16 plain ``%%train --param i=N`` cells of the same cell, one after the other: what a user
    writes without ``--sweep``;
(d) Optuna's ``study.optimize(objective, n_trials=16, n_jobs=4)`` (in-memory storage, a grid sampler over
    the same 16 points) whose objective sleeps in the process: threads, no job isolation, no MLflow;
(e) (a) again with the local backend's default slot count (``max_concurrent_jobs`` unset).

Where (a)'s time goes comes from the records, not from wrappers: the sweep's ``created`` (the kernel wrote
its folder), ``started`` (the controller process began its loop) and ``finished`` (the controller closed the
parent run); each trial's job ``created`` (the controller began to submit it), ``started`` (the supervisor
spawned the runner) and ``finished`` (the supervisor saw the runner exit); and each trial's MLflow run
``start_time`` (the controller created it; its ``end_time`` is the job's end, whoever closed it). After each
measurement the script waits until the controller and every supervisor have exited, so nothing overlaps.

It prints tables; it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine import code_state, cpu_model, memory_total, os_name, package_versions, scratch_environment, table

ROOT = Path(__file__).resolve().parent.parent
EXIT_TIMEOUT_S = 60.0


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------- the environment


def fresh_environment(keep: bool) -> contextlib.AbstractContextManager[Path]:
    """A temporary state dir, IPython dir, Jupyter config dir and SQLite MLflow store; no storage or backend set."""
    return scratch_environment("jmk-bench-sweep-", keep, lambda root: {
        "JMK_STATE_DIR": str(root / "state"), "IPYTHONDIR": str(root / "ipython"),
        "JUPYTER_CONFIG_DIR": str(root / "jupyter"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    })  # fmt: skip


def make_shell(slots: int) -> Any:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    if slots:
        config.LocalBackend.max_concurrent_jobs = slots
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "jupyter_mlflow_k8s")
    return shell


def set_slots(shell: Any, slots: int | None) -> None:
    """Configure the local backend's slot count (None: its default); the next magic builds its services anew."""
    if slots is None:
        shell.config.LocalBackend.pop("max_concurrent_jobs", None)
    else:
        shell.config.LocalBackend.max_concurrent_jobs = slots
    shell.__dict__.pop("_jmk_service", None)
    shell.__dict__.pop("_jmk_sweeps", None)


def wait_for_exits(shell: Any) -> None:
    """Until every controller and supervisor this shell started has exited (the next measurement starts clean)."""
    from jupyter_mlflow_k8s.magics.common import service_for
    from jupyter_mlflow_k8s.magics.train import sweeps_for
    from jupyter_mlflow_k8s.util.processes import pid_exists

    pids = [int(r.pid) for r in service_for(shell).store.list() if r.pid]
    pids += [int(r["controller_pid"]) for r in sweeps_for(shell).list() if r.get("controller_pid")]
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while any(pid_exists(pid) for pid in pids):
        if time.monotonic() > deadline:
            progress(f"processes still running after {EXIT_TIMEOUT_S:.0f} s: {[p for p in pids if pid_exists(p)]}")
            return
        time.sleep(0.02)


# ----------------------------------------------------------------------------- the measurements


def cell(seconds: float) -> str:
    return f"import time\ntime.sleep({seconds})\nt = i\n"


@dataclass
class SweepSample:
    """One measured ``%%train --sweep``: its wall time and what its records say."""

    total: float
    phases: dict[str, float] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)
    overlap: int = 0
    states: str = ""


def run_sweep(shell: Any, trials: int, parallel: int, seconds: float) -> SweepSample:
    from jupyter_mlflow_k8s.magics.train import sweeps_for

    line = f'--sweep "i=range({trials})" --objective t:min --parallel {parallel} --experiment bench-sweep'
    shell.user_ns.pop("t", None)
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):  # the leaderboard's text lines
        shell.run_cell_magic("train", line, cell(seconds))
    end = time.time()
    if shell.user_ns.get("t") != 0:
        raise RuntimeError(f"the sweep did not bring back the best trial's t=0: {shell.user_ns.get('t')!r}")
    sweeps = sweeps_for(shell)
    record = sweeps.list()[0]
    sample = SweepSample(total=end - start)
    sample.states = ",".join(sorted({t["state"] for t in record["trials"]}))
    sample.phases, sample.details, sample.overlap = sweep_phases(sweeps, record, start, end)
    wait_for_exits(shell)
    return sample


def sweep_phases(sweeps: Any, record: dict[str, Any], start: float, end: float) -> tuple[
        dict[str, float], dict[str, float], int]:  # fmt: skip
    """The critical path of one sweep (phases that add up to its total) and per-trial details, from its records."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(record["tracking_uri"])
    jobs = [sweeps.jobs.get(t["job_id"]) for t in record["trials"]]
    runs = [client.get_run(t["run_id"]).info for t in record["trials"]]
    created = [j.created for j in jobs]
    started = [float(j.started) for j in jobs]
    finished = [float(j.finished) for j in jobs]
    run_opened = [r.start_time / 1000 for r in runs]
    first_start, last_end = min(started), max(finished)
    parallel = int(record["parallel"])
    phases = {
        "kernel: parse, check, stage the inputs, write the sweep's folder": record["created"] - start,
        "kernel: open the parent run, submit the first wave, until its first runner starts": first_start
        - record["created"],
        "trials: the first runner start until the last trial ended": last_end - first_start,
        "controller: close the last runs and the parent run": record["finished"] - last_end,
        "kernel: see the end, collect the best trial, the table": end - record["finished"],
    }
    freed = sorted(finished)  # slots free up in the order trials end; trials launch in index order
    later = range(parallel, len(jobs))
    details = {
        "first submit: job created -> its MLflow run created": run_opened[0] - created[0],
        "first submit: MLflow run created -> runner started": started[0] - run_opened[0],
        "a later submit: job created -> runner started (median)": statistics.median(
            started[k] - created[k] for k in range(1, len(jobs))),
        "a trial: runner started -> supervisor saw it end (median)": statistics.median(
            f - s for s, f in zip(started, finished, strict=True)),
        "a slot: a trial ended -> the next trial's job created (median)": statistics.median(
            created[k] - freed[k - parallel] for k in later) if later else math.nan,
        "a slot: a trial ended -> the next trial's runner started (median)": statistics.median(
            started[k] - freed[k - parallel] for k in later) if later else math.nan,
        "first wave: first runner start -> last runner start of the wave": max(started[:parallel]) - first_start,
        "controller process: the first runner start -> it took the sweep over": record["started"]
        - first_start,
    }  # fmt: skip
    return phases, details, max_overlap(started, finished)


def max_overlap(started: Sequence[float], finished: Sequence[float]) -> int:
    """The most trials running at one instant, from their runners' start and end times."""
    events = sorted([(s, 1) for s in started] + [(f, -1) for f in finished], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def run_loop(shell: Any, trials: int, seconds: float) -> float:
    """The peer a user writes without --sweep: one plain %%train per point, one after the other."""
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        for index in range(trials):
            shell.run_cell_magic("train", f"--param i={index} --experiment bench-loop", cell(seconds))
    elapsed = time.time() - start
    if shell.user_ns.get("t") != trials - 1:
        raise RuntimeError(f"the loop's last %%train did not bring back t={trials - 1}: {shell.user_ns.get('t')!r}")
    wait_for_exits(shell)
    return elapsed


def run_optuna(trials: int, parallel: int, seconds: float) -> float:
    """Optuna's own parallel loop: the objective sleeps in this process, in ``parallel`` threads."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: Any) -> float:
        i = trial.suggest_int("i", 0, trials - 1)
        time.sleep(seconds)
        return float(i)

    start = time.time()
    sampler = optuna.samplers.GridSampler({"i": list(range(trials))}, seed=0)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=trials, n_jobs=parallel)
    return time.time() - start


# ----------------------------------------------------------------------------- report


def machine_description(state_dir: Path) -> list[tuple[str, str]]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("code", code_state(ROOT)),
        ("CPU", f"{cpu_model()}, {os.cpu_count()} logical cores, {usable} usable"),
        ("memory", memory_total()),
        ("OS", os_name()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("packages", package_versions(("jupyter_mlflow_k8s", "mlflow", "ipython", "optuna", "cloudpickle"))),
        ("state dir", str(state_dir)),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def ratio(value: float | None, ideal: float) -> str:
    return "-" if value is None else f"{value / ideal:.2f}"


def summary(named: Sequence[tuple[str, Sequence[float]]], ideal: float) -> str:
    rows = []
    for name, values in named:
        middle = median(values)
        rows.append([name, secs(middle), secs(min(values)) if values else "-", secs(max(values)) if values else "-",
                     ratio(middle, ideal)])  # fmt: skip
    return table("Wall time, s (median of the rounds; ratio = median / the ideal (b))",
                 ["what", "median", "min", "max", "x ideal"], rows)  # fmt: skip


def phase_table(title: str, samples: Sequence[SweepSample], attribute: str, whole: float | None) -> str:
    names = list(getattr(samples[0], attribute))
    rows = []
    for name in names:
        values = [getattr(s, attribute)[name] for s in samples if not math.isnan(getattr(s, attribute)[name])]
        middle = median(values)
        share = f"{100 * middle / whole:.0f}%" if whole and middle is not None else ""
        rows.append([name, secs(middle), secs(min(values)) if values else "-", secs(max(values)) if values else "-",
                     share])  # fmt: skip
    return table(title, ["phase", "median s", "min", "max", "share"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--trials", type=int, default=16, help="trials per sweep (default 16)")
    parser.add_argument("--parallel", type=int, default=4, help="--parallel of the sweep (default 4)")
    parser.add_argument("--seconds", type=float, default=1.0, help="how long the cell sleeps (default 1)")
    parser.add_argument("--no-default-slots", action="store_true", help="leave out row (e)")
    parser.add_argument("--sweeps-only", action="store_true", help="only (a) and (b): to compare versions of the code")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    repeat, trials, parallel, seconds = max(1, args.repeat), args.trials, args.parallel, args.seconds
    ideal = math.ceil(trials / parallel) * seconds
    began = time.perf_counter()

    with fresh_environment(args.keep) as root:
        machine = machine_description(root / "state")
        shell = make_shell(parallel)
        progress("warm-up: one %%train (imports MLflow in the kernel, creates the store), one sweep of 4 trials")
        with contextlib.redirect_stdout(io.StringIO()):
            shell.run_cell_magic("train", "--param i=0", cell(0))
        run_sweep(shell, 4, parallel, 0)
        swept: list[SweepSample] = []
        defaults: list[SweepSample] = []
        loops: list[float] = []
        optunas: list[float] = []
        for round_ in range(repeat):
            progress(f"round {round_ + 1}/{repeat}: (a) the sweep")
            swept.append(run_sweep(shell, trials, parallel, seconds))
            progress(f"  {swept[-1].total:.2f} s")
            if args.sweeps_only:
                continue
            progress(f"  (c) {trials} plain %%train one after the other")
            loops.append(run_loop(shell, trials, seconds))
            progress(f"  {loops[-1]:.2f} s; (d) Optuna n_jobs={parallel}")
            optunas.append(run_optuna(trials, parallel, seconds))
            if not args.no_default_slots:
                progress(f"  {optunas[-1]:.2f} s; (e) the sweep with the default slot count")
                set_slots(shell, None)
                defaults.append(run_sweep(shell, trials, parallel, seconds))
                set_slots(shell, parallel)
                progress(f"  {defaults[-1].total:.2f} s")
        from jupyter_mlflow_k8s.magics.common import service_for

        set_slots(shell, None)
        default_slots = service_for(shell).backend("local").max_concurrent_jobs

    sweep_line = f'%%train --sweep "i=range({trials})" --objective t:min --parallel {parallel}'
    out = [f"Sweeps on the local backend: {trials} trials of a {seconds:g} s cell, --parallel {parallel}", ""]
    out += [f"{label:<23}{value}" for label, value in machine]
    out.append(f"{'run':<23}{time.strftime('%Y-%m-%d %H:%M:%S')}, --repeat {repeat}")
    out.append("")
    named: list[tuple[str, Sequence[float]]] = [
        (f"(a) {sweep_line}, {parallel} slots", [s.total for s in swept]),
        (f"(b) ideal: {math.ceil(trials / parallel)} rounds of {seconds:g} s", [ideal]),
    ]
    if loops:
        named.append((f"(c) {trials} x plain %%train, one after the other", loops))
        named.append((f"(d) Optuna study.optimize(n_trials={trials}, n_jobs={parallel}), in-process sleep", optunas))
    if defaults:
        named.append((f"(e) (a) with the default max_concurrent_jobs ({default_slots})", [s.total for s in defaults]))
    out.append(summary(named, ideal))
    out.append("")
    total = median([s.total for s in swept])
    verdict = "met" if total is not None and total <= 1.15 * ideal else "missed"
    out.append(f"(a) over the ideal: {100 * ((total or 0) / ideal - 1):.0f}%   (goal <= 15%: {verdict})")
    if loops:
        out.append(f"(a) / (c), the sweep against the loop: {ratio(total, median(loops) or math.nan)}")
    out.append(f"most trials running at once in (a): {', '.join(str(s.overlap) for s in swept)}; "
               f"in (e): {', '.join(str(s.overlap) for s in defaults) or '-'}; trial states: "
               f"{'; '.join(s.states for s in [*swept, *defaults])}")  # fmt: skip
    out.append("")
    out.append(phase_table(f"Where (a) goes: the critical path, from the records ({repeat} sweeps; phases add up "
                           "to the total)", swept, "phases", total))  # fmt: skip
    out.append("")
    out.append(phase_table("  of which, or beside it", swept, "details", total))
    print("\n".join(out))
    print(f"\nwhole benchmark: {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
