"""Notebook pipelines: ``PipelineEngine`` against a plain sequential papermill loop, in the same run.

Usage::

    .venv/bin/python benchmarks/pipeline.py [--repeat 5] [--work 0.2] [--max-parallel N] [--keep]

Ten small notebooks per shape, written with nbformat into a temporary folder. Each has a
``parameters`` cell (``value``, ``n``) and a cell that loops ``n`` times over an integer
recurrence seeded by ``value`` (``n`` is calibrated here so that the loop takes ``--work`` seconds,
0.2 by default) and publishes the result with ``jupyter_mlflow_k8s.output("value", ...)``; the
steps downstream get it as their ``value`` parameter. Two shapes:

- **chain**: ``s0 -> s1 -> ... -> s9``;
- **fanout**: ``root -> b0..b7 -> join`` (the join gets the eight values as ``v0..v7``).

Each shape is run, in every round, three ways, each in a fresh Python process (so every one pays
its own imports; the clock starts before the first import of papermill or of the package):

- **peer**: a plain loop: ``papermill.execute_notebook`` for each notebook in topological order,
  with the same parameters, reading each notebook's published outputs back (the same
  ``JMK_STEP_OUTPUTS`` file mechanism the engine uses, set per notebook in the environment the
  kernel inherits) and passing them on. papermill starts a kernel per notebook, as by default.
- **ours cold**: ``PipelineEngine().run(pipeline)`` (the pipeline built with ``pipeline(...)``)
  on a fresh ``JMK_STATE_DIR`` (empty cache), ``MLFLOW_TRACKING_URI`` a SQLite file in the
  temporary folder. The SQLite store is created once before the rounds (not timed in the
  rounds; its creation time is printed), as a user's store already exists.
  Then, in the same process, **ours warm**: the same pipeline again, nothing changed (all hits).
- **ours warm, new process**: the same state dir from a fresh process: what ``jmk pipeline run``
  costs when everything is cached (it imports MLflow to record the cached steps' child runs).

The rounds interleave the variants. Medians over rounds are reported. Both sides must end with
the same final outputs (checked).

**Per-step overhead.** Every executed notebook carries nbclient's kernel timestamps per cell
(``iopub.execute_input`` and ``shell.execute_reply``); their sum over a notebook's cells is its
*pure execution* time. Each variant's process is instrumented (thin wrappers recording wall-clock
spans of ``PipelineEngine._step``, ``KernelPool._start``, ``papermill.execute_notebook``, the
kernel client's ``wait_for_ready``, ``shutdown_kernel``, ``PipelineEngine.remember``,
``_Tracker.step``; papermill's own per-cell start/end times come from the notebook). A step's
overhead is the time it held its worker (``_step``, which includes resolving parameters, the
cache lookup, taking a kernel, papermill, shutdown, the cache write and the MLflow child run)
minus its pure execution, plus its dispatch gap (from the last step that ended before it started
to its start). For the peer: the time of its loop iteration minus its pure execution. Costs paid
once per run (imports, MLflow parent run, closing the pool) are listed apart. For the chain, where
everything is sequential, ``(wall - sum of pure execution) / 10`` is printed too.

Also printed: how long one kernel takes to start and answer alone, where the time of a cold and
a warm run goes, and how much CPU other processes used during each round (the machine may be
shared); nothing is asserted about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

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
SHAPES = ("chain", "fanout")
CHAIN_LENGTH = 10
FAN_WIDTH = 8
GOAL_COLD = 0.6
GOAL_WARM = 0.05
KERNEL = "python3"
MODULUS = 2147483648

LOOP = """acc = {start}
for i in range(n):
    acc = (acc * 1103515245 + 12345 + i) % 2147483648
"""


# ----------------------------------------------------------------------------- small helpers


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"




def stamp(iso: str) -> float:
    """An ISO timestamp from papermill or nbclient (UTC, with an offset or a Z) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()






# ----------------------------------------------------------------------------- machine


def machine_description(tmp: Path) -> list[tuple[str, str]]:
    cpu, memory = cpu_model(), memory_total()
    os_name = machine_os_name()
    versions = package_versions(
        ("jupyter_mlflow_k8s", "papermill", "nbclient", "jupyter_client", "ipykernel", "mlflow"))
    tree = code_state(ROOT)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("date", datetime.now().astimezone().isoformat(timespec="seconds")),
        ("code", tree),
        ("CPU", f"{cpu}, {os.cpu_count()} logical cores, {usable} usable"),
        ("memory", memory),
        ("OS", os_name),
        ("Python", f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"),
        ("packages", versions),
        ("temporary folder", str(tmp)),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


# ----------------------------------------------------------------------------- the notebooks


def calibrate(work: float) -> int:
    """The ``n`` for which the notebooks' loop takes about ``work`` seconds here."""
    probe = 1_000_000
    code = compile(LOOP.format(start="value"), "<calibrate>", "exec")
    times = []
    for _ in range(5):
        namespace: dict[str, Any] = {"n": probe, "value": 1}
        start = time.perf_counter()
        exec(code, namespace)
        times.append(time.perf_counter() - start)
    return max(1000, round(probe * work / median(times)))


def write_notebook(path: Path, parameters: str, code: str) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell(code)]
    meta = {"kernelspec": {"name": KERNEL, "display_name": "Python 3", "language": "python"}}
    nbformat.write(new_notebook(cells=cells, metadata=meta), path)


def step_code(shape: str, name: str, start: str) -> str:
    header = f"# {shape} pipeline, step {name}\nfrom jupyter_mlflow_k8s import output\n\n"
    return header + LOOP.format(start=start) + 'output("value", acc)\n'


def param(name: str) -> dict[str, Any]:
    return {"param": name}


def from_step(step: str, name: str = "value") -> dict[str, Any]:
    return {"output": [step, name]}


def make_plan(shape: str, folder: Path, n: int, max_parallel: int | None) -> dict[str, Any]:
    """Write the shape's ten notebooks; return the steps in topological order, as plain data."""
    folder.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []

    def add(name: str, needs: list[str], parameters: dict[str, Any], extra: str, start: str) -> None:
        notebook = folder / f"{name}.ipynb"
        write_notebook(notebook, "value = 0\nn = 1000\n" + extra, step_code(shape, name, start))
        steps.append({"name": name, "notebook": str(notebook), "needs": needs, "parameters": parameters})

    if shape == "chain":
        for k in range(CHAIN_LENGTH):
            value = param("seed") if k == 0 else from_step(f"s{k - 1}")
            add(f"s{k}", [] if k == 0 else [f"s{k - 1}"], {"value": value, "n": param("n")}, "", "value")
    else:
        add("root", [], {"value": param("seed"), "n": param("n")}, "", "value")
        for j in range(FAN_WIDTH):
            add(f"b{j}", ["root"], {"value": from_step("root"), "n": param("n")}, "", f"value + {j}")
        inputs = {f"v{j}": from_step(f"b{j}") for j in range(FAN_WIDTH)}
        names = ", ".join(inputs)
        defaults = "".join(f"{name} = 0\n" for name in inputs)
        add("join", [f"b{j}" for j in range(FAN_WIDTH)], {**inputs, "n": param("n")}, defaults,
            f"sum([{names}]) % {MODULUS}")
    return {"shape": shape, "steps": steps, "parameters": {"seed": 7, "n": n}, "max_parallel": max_parallel}


def expected_final(plan: Mapping[str, Any]) -> int:
    """The last step's value, computed here (both sides must publish it)."""
    n = plan["parameters"]["n"]

    def loop(acc: int) -> int:
        for i in range(n):
            acc = (acc * 1103515245 + 12345 + i) % MODULUS
        return acc

    seed = plan["parameters"]["seed"]
    if plan["shape"] == "chain":
        value = seed
        for _ in range(CHAIN_LENGTH):
            value = loop(value)
        return value
    root = loop(seed)
    return loop(sum(loop(root + j) for j in range(FAN_WIDTH)) % MODULUS)


def template(spec: Mapping[str, Any]) -> Any:
    if "param" in spec:
        return f"{{{{ parameters.{spec['param']} }}}}"
    if "output" in spec:
        step, name = spec["output"]
        return f"{{{{ steps.{step}.outputs.{name} }}}}"
    return spec["literal"]


# ----------------------------------------------------------------------------- instrumentation (workers)


class Recorder:
    """Wall-clock spans (``time.time()``), each with the step that was running in its thread."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.local = threading.local()

    def current(self) -> str | None:
        return getattr(self.local, "step", None)

    @contextlib.contextmanager
    def span(self, what: str, step: str | None = None) -> Iterator[None]:
        step = step if step is not None else self.current()
        start = time.time()
        try:
            yield
        finally:
            self.events.append({"what": what, "step": step, "start": start, "end": time.time()})

    def wrap(self, owner: Any, attribute: str, what: str, step_of: Callable[..., str | None] | None = None,
             sets_step: bool = False) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            step = step_of(*args, **kwargs) if step_of else None
            previous = self.current()
            if sets_step:
                self.local.step = step
            try:
                with self.span(what, step):
                    return original(*args, **kwargs)
            finally:
                if sets_step:
                    self.local.step = previous

        setattr(owner, attribute, timed)

    def wrap_async(self, owner: Any, attribute: str, what: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            with self.span(what):
                return await original(*args, **kwargs)

        setattr(owner, attribute, timed)


def instrument_jupyter(recorder: Recorder) -> None:
    """Kernel start, wait for ready and shutdown, on both the blocking and the async classes."""
    from jupyter_client.asynchronous.client import AsyncKernelClient
    from jupyter_client.blocking.client import BlockingKernelClient
    from jupyter_client.manager import AsyncKernelManager, KernelManager

    recorder.wrap(BlockingKernelClient, "wait_for_ready", "kernel ready wait")
    with contextlib.suppress(ImportError):  # the engine's own client (newer engines)
        from jupyter_mlflow_k8s.pipelines.kernel import ReadyKernelClient

        recorder.wrap(ReadyKernelClient, "wait_for_ready", "kernel ready wait")
    recorder.wrap_async(AsyncKernelClient, "wait_for_ready", "kernel ready wait")
    recorder.wrap(KernelManager, "shutdown_kernel", "kernel shutdown")
    recorder.wrap_async(AsyncKernelManager, "shutdown_kernel", "kernel shutdown")
    recorder.wrap_async(AsyncKernelManager, "start_kernel", "kernel spawn")


def instrument_papermill(recorder: Recorder, papermill: Any) -> None:
    recorder.wrap(papermill, "execute_notebook", "papermill", step_of=lambda *a, **k: Path(a[1]).stem)


def instrument_engine(recorder: Recorder, engine: Any) -> None:
    """Wrap the engine's steps; papermill is imported (and timed) in the first step, as the engine does."""
    lock = threading.Lock()
    state = {"papermill": False}
    original_run_notebook = engine.PipelineEngine._run_notebook

    def run_notebook(*args: Any, **kwargs: Any) -> Any:
        with lock:
            if not state["papermill"]:
                with recorder.span("import papermill"):
                    import papermill
                instrument_papermill(recorder, papermill)
                instrument_jupyter(recorder)
                state["papermill"] = True
        return original_run_notebook(*args, **kwargs)

    def step_name(*args: Any, **kwargs: Any) -> str | None:
        """The name of the ``Step`` among a method's arguments (signatures change; look by type)."""
        for value in (*args, *kwargs.values()):
            if isinstance(value, engine.Step):
                return str(value.name)
        return None

    engine.PipelineEngine._run_notebook = run_notebook
    recorder.wrap(engine.PipelineEngine, "_step", "step", step_of=step_name, sets_step=True)
    recorder.wrap(engine.PipelineEngine, "remember", "cache write", step_of=step_name)
    for attribute, what in (("_step_record", "job record: create"), ("_end_step_record", "job record: end")):
        if hasattr(engine.PipelineEngine, attribute):  # local steps as %jobs records (newer engines)
            recorder.wrap(engine.PipelineEngine, attribute, what)
    recorder.wrap(engine.PipelineEngine, "cached", "cache lookup")
    recorder.wrap(engine.PipelineEngine, "save", "save run.json")
    recorder.wrap(engine.KernelPool, "_start", "kernel spawn")
    recorder.wrap(engine.KernelPool, "take", "take kernel")
    recorder.wrap(engine.KernelPool, "close", "pool close")
    recorder.wrap(engine, "validate", "validate")
    recorder.wrap(engine._Tracker, "__init__", "mlflow parent run (tracker init)")
    recorder.wrap(engine._Tracker, "step", "mlflow child run", step_of=lambda *a, **k: a[1].name)
    recorder.wrap(engine._Tracker, "finish", "mlflow parent close")
    if hasattr(engine._Tracker, "_open"):  # newer engines do MLflow work on a thread of its own
        recorder.wrap(engine._Tracker, "_open", "mlflow thread: open")
        recorder.wrap(engine._Tracker, "_record", "mlflow thread: child run", step_of=lambda *a, **k: a[1].name)
    from jupyter_mlflow_k8s import tracking

    recorder.wrap(tracking, "client", "mlflow import + open store")


def cell_times(notebook: str) -> dict[str, Any]:
    """From an executed notebook: pure execution (kernel timestamps) and papermill's cell span."""
    document = json.loads(Path(notebook).read_text())
    pure = 0.0
    first: float | None = None
    last: float | None = None
    for cell in document["cells"]:
        if cell.get("cell_type") != "code":
            continue
        execution = cell["metadata"].get("execution", {})
        if "iopub.execute_input" in execution and "shell.execute_reply" in execution:
            pure += stamp(execution["shell.execute_reply"]) - stamp(execution["iopub.execute_input"])
        meta = cell["metadata"].get("papermill", {})
        if meta.get("start_time"):
            started = stamp(meta["start_time"])
            first = started if first is None else min(first, started)
        if meta.get("end_time"):
            ended = stamp(meta["end_time"])
            last = ended if last is None else max(last, ended)
    return {"pure": pure, "first_cell": first, "last_cell": last}


def read_published(path: Path) -> dict[str, Any]:
    """The peer reads a notebook's ``output()`` lines by hand (one JSON object a line)."""
    outputs: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            outputs[record["name"]] = record["value"]
    return outputs


def worker_peer(plan: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    start_wall, start = time.time(), time.perf_counter()
    import papermill

    imported = time.perf_counter()
    recorder = Recorder()
    instrument_papermill(recorder, papermill)
    instrument_jupyter(recorder)
    outputs: dict[str, dict[str, Any]] = {}
    iterations: dict[str, dict[str, float]] = {}
    for step in plan["steps"]:
        name = step["name"]
        began = time.time()
        recorder.local.step = name
        parameters = {}
        for key, spec in step["parameters"].items():
            if "param" in spec:
                parameters[key] = plan["parameters"][spec["param"]]
            else:
                source, output = spec["output"]
                parameters[key] = outputs[source][output]
        published = out_dir / f"{name}.outputs.jsonl"
        os.environ["JMK_STEP_OUTPUTS"] = str(published)
        papermill.execute_notebook(step["notebook"], str(out_dir / f"{name}.ipynb"), parameters=parameters,
                                   kernel_name=KERNEL, progress_bar=False)
        outputs[name] = read_published(published)
        iterations[name] = {"start": began, "end": time.time()}
    total = time.perf_counter() - start
    steps = {}
    for step in plan["steps"]:
        name = step["name"]
        steps[name] = {**iterations[name], **cell_times(str(out_dir / f"{name}.ipynb"))}
    return {"total": total, "import": imported - start, "start_wall": start_wall, "steps": steps,
            "events": recorder.events, "final": outputs[plan["steps"][-1]["name"]].get("value")}


def build_pipeline(plan: Mapping[str, Any]) -> Any:
    from jupyter_mlflow_k8s.pipelines.spec import pipeline

    builder = pipeline(f"bench-{plan['shape']}", plan["parameters"], max_parallel=plan["max_parallel"])
    for step in plan["steps"]:
        parameters = {key: template(spec) for key, spec in step["parameters"].items()}
        builder.step(step["name"], step["notebook"], needs=step["needs"], parameters=parameters)
    return builder.build()


def worker_ours(plan: Mapping[str, Any], runs: Sequence[str]) -> dict[str, Any]:
    results = []
    recorder = Recorder()
    engine: Any = None
    for label in runs:
        recorder.events = []
        start_wall, start = time.time(), time.perf_counter()
        if engine is None:
            from jupyter_mlflow_k8s.pipelines import engine

            instrument_engine(recorder, engine)
        imported = time.perf_counter()
        with recorder.span("build pipeline (validates)"):
            built = build_pipeline(plan)
        run = engine.PipelineEngine().run(built)
        total = time.perf_counter() - start
        steps = {}
        for name, result in run.steps.items():
            entry = {"state": result.state, "started": result.started, "finished": result.finished}
            if result.state == "succeeded" and result.executed_notebook:
                entry.update(cell_times(result.executed_notebook))
            steps[name] = entry
        results.append({
            "label": label, "total": total, "import": imported - start, "start_wall": start_wall,
            "state": run.state, "steps": steps, "events": list(recorder.events),
            "final": run.steps[plan["steps"][-1]["name"]].outputs.get("value"),
            "reasons": {name: r.reason for name, r in run.steps.items() if r.state not in ("succeeded", "cached")},
        })
    return {"runs": results}


def worker_main(args: argparse.Namespace) -> int:
    plan = json.loads(Path(args.plan).read_text())
    if args.worker == "peer":
        out_dir = Path(args.out).with_suffix("")
        out_dir.mkdir(parents=True, exist_ok=True)
        result = worker_peer(plan, out_dir)
    else:
        result = worker_ours(plan, args.runs.split(","))
    Path(args.out).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- analysis


def spans(events: Sequence[Mapping[str, Any]], what: str, step: str | None = None) -> list[tuple[float, float]]:
    return [(e["start"], e["end"]) for e in events
            if e["what"] == what and (step is None or e["step"] == step)]


def total_of(events: Sequence[Mapping[str, Any]], what: str, step: str | None = None) -> float:
    return sum(end - start for start, end in spans(events, what, step))


GAP = "dispatch gap (since the last step ended)"
RESOLVE = "resolve parameters, cache key + lookup"
JOB = "job record for %jobs (create + end)"
IMPORT = "import papermill (the first step only)"
TAKE = "take a kernel (spawn if the pool is empty)"
BEFORE = "papermill until the first cell"
READY = "  of which: kernel ready wait"
SPAWN = "  of which: kernel spawn (start_kernel)"
PURE = "cells: pure execution (kernel timestamps)"
AROUND = "cells: papermill around them (saves, messages)"
AFTER = "papermill after the last cell (write)"
SHUTDOWN = "kernel shutdown"
READ = "read outputs"
CACHE = "cache write"
CHILD = "MLflow child run (what the step waits for)"
OTHER = "other in the step"
OVERHEAD = "= overhead (all but pure execution)"
SUMMED = (GAP, RESOLVE, JOB, IMPORT, TAKE, BEFORE, PURE, AROUND, AFTER, SHUTDOWN, READ, CACHE, CHILD, OTHER)


def analyze_ours(run: Mapping[str, Any]) -> dict[str, Any]:
    """Per-step components (s) of a cold run, and the costs paid once per run."""
    events = run["events"]
    step_spans = {e["step"]: (e["start"], e["end"]) for e in events if e["what"] == "step"}
    ends = sorted(end for _, end in step_spans.values())
    rows: dict[str, dict[str, float]] = {}
    for name, (begin, finish) in step_spans.items():
        info = run["steps"][name]
        earlier = [end for end in ends if end <= begin]
        comp: dict[str, float] = {GAP: begin - max(earlier) if earlier else 0.0}
        if info["state"] == "succeeded":
            call = spans(events, "papermill", name)[0]
            comp[JOB] = total_of(events, "job record: create", name) + total_of(events, "job record: end", name)
            comp[IMPORT] = total_of(events, "import papermill", name)
            comp[TAKE] = total_of(events, "take kernel", name)
            comp[RESOLVE] = call[0] - begin - total_of(events, "job record: create", name) - comp[IMPORT] - comp[TAKE]
            comp[BEFORE] = info["first_cell"] - call[0]
            comp[READY] = total_of(events, "kernel ready wait", name)
            comp[SPAWN] = 0.0  # the pool spawned it earlier (or in TAKE)
            comp[PURE] = info["pure"]
            comp[AROUND] = info["last_cell"] - info["first_cell"] - info["pure"]
            comp[AFTER] = call[1] - info["last_cell"]
            comp[SHUTDOWN] = total_of(events, "kernel shutdown", name)
            comp[READ] = info["finished"] - call[1] - comp[SHUTDOWN]
            comp[CACHE] = total_of(events, "cache write", name)
            comp[CHILD] = total_of(events, "mlflow child run", name)
            comp[OTHER] = (finish - begin) - sum(comp.get(k, 0.0) for k in SUMMED if k not in (GAP, OTHER))
        comp[OVERHEAD] = (finish - begin) - comp.get(PURE, 0.0) + comp[GAP]
        rows[name] = comp
    first_step = min(begin for begin, _ in step_spans.values())
    last_step = max(ends)
    built = total_of(events, "build pipeline (validates)")
    tracker = total_of(events, "mlflow parent run (tracker init)")
    run_start = run["start_wall"] + run["import"] + built
    once = {
        "imports (package, spec, engine)": run["import"],
        "build pipeline (validates)": built,
        "MLflow parent run (tracker init; older engines: import + store + run)": tracker,
        "run start until the first step, besides (validate, saves)": first_step - run_start - tracker,
        "after the last step (pool close, MLflow parent, save)": run["start_wall"] + run["total"] - last_step,
        "  of which: pool close (pre-started kernels not used)": total_of(events, "pool close"),
        "  of which: waiting for MLflow's thread (queued child runs, parent close)":
            total_of(events, "mlflow parent close"),
        "MLflow's own thread, off the steps' path: open (import, store, parent run)":
            total_of(events, "mlflow thread: open"),
        "  of which: import MLflow + open the SQLite store": total_of(events, "mlflow import + open store"),
        "MLflow's own thread: child runs (summed)": total_of(events, "mlflow thread: child run"),
    }
    return {"steps": rows, "once": once, "kernels_started": len(spans(events, "kernel spawn")),
            "pure": sum(info.get("pure", 0.0) for info in run["steps"].values())}


def analyze_peer(result: Mapping[str, Any]) -> dict[str, Any]:
    events = result["events"]
    rows: dict[str, dict[str, float]] = {}
    previous_end = result["start_wall"] + result["import"]
    for name, info in result["steps"].items():
        call = spans(events, "papermill", name)[0]
        shutdown = total_of(events, "kernel shutdown", name)
        comp = {
            GAP: info["start"] - previous_end,
            RESOLVE: call[0] - info["start"],
            BEFORE: info["first_cell"] - call[0],
            READY: total_of(events, "kernel ready wait", name),
            SPAWN: total_of(events, "kernel spawn", name),
            PURE: info["pure"],
            AROUND: info["last_cell"] - info["first_cell"] - info["pure"],
            AFTER: call[1] - info["last_cell"] - shutdown,
            SHUTDOWN: shutdown,
            READ: info["end"] - call[1],
        }
        comp[OVERHEAD] = info["end"] - info["start"] - info["pure"] + comp[GAP]
        rows[name] = comp
        previous_end = info["end"]
    slow = [end - start for start, end in spans(events, "kernel shutdown") if end - start > 1.0]
    return {"steps": rows, "once": {"import papermill": result["import"]},
            "pure": sum(info["pure"] for info in result["steps"].values()),
            "kernels_started": len(spans(events, "kernel spawn")), "slow_shutdowns": slow}


def mean_components(analysis: Mapping[str, Any]) -> dict[str, float]:
    """Each component's mean over the steps (a step without a component counts 0)."""
    order = [GAP, RESOLVE, JOB, IMPORT, TAKE, BEFORE, READY, SPAWN, PURE, AROUND, AFTER, SHUTDOWN, READ, CACHE, CHILD,
             OTHER, OVERHEAD]
    count = len(analysis["steps"])
    return {k: sum(comp.get(k, 0.0) for comp in analysis["steps"].values()) / count for k in order}


def early_dispatches(run: Mapping[str, Any], plan: Mapping[str, Any]) -> int:
    """Steps whose ``_step`` began before a step they need had returned from its ``_step``."""
    spans_by_step = {e["step"]: (e["start"], e["end"]) for e in run["events"] if e["what"] == "step"}
    count = 0
    for step in plan["steps"]:
        if step["name"] in spans_by_step and any(
                spans_by_step[step["name"]][0] < spans_by_step[need][1] for need in step["needs"]
                if need in spans_by_step):
            count += 1
    return count


def analyze_warm(run: Mapping[str, Any]) -> dict[str, float]:
    events = run["events"]
    parts = {
        "imports (package, spec, engine)": run["import"],
        "build pipeline (validates)": total_of(events, "build pipeline (validates)"),
        "engine validate": total_of(events, "validate"),
        "MLflow parent run (tracker init)": total_of(events, "mlflow parent run (tracker init)"),
        "  of which: import MLflow + open the SQLite store": total_of(events, "mlflow import + open store"),
        "MLflow child runs (10, summed)": total_of(events, "mlflow child run"),
        "MLflow thread: open (import, store, parent run)": total_of(events, "mlflow thread: open"),
        "MLflow thread: child runs (10, summed)": total_of(events, "mlflow thread: child run"),
        "cache lookups (summed)": total_of(events, "cache lookup"),
        "run.json saves (summed)": total_of(events, "save run.json"),
        "MLflow parent close": total_of(events, "mlflow parent close"),
    }
    parts["run.json saves"] = len(spans(events, "save run.json"))
    return parts


# ----------------------------------------------------------------------------- the orchestrator


def run_worker(role: str, plan_file: Path, out: Path, env: Mapping[str, str], runs: str = "") -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", role, "--plan", str(plan_file),
               "--out", str(out)]
    if runs:
        command += ["--runs", runs]
    busy, mine = busy_cpu_seconds(), children_cpu_seconds()
    start = time.perf_counter()
    done = subprocess.run(command, env=dict(env), capture_output=True, text=True, cwd=str(out.parent))
    wall = time.perf_counter() - start
    cpu = children_cpu_seconds() - mine
    after = busy_cpu_seconds()
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise RuntimeError(f"worker {role} failed with exit status {done.returncode}")
    result = json.loads(out.read_text())
    result["process_wall"] = wall
    result["cpu"] = cpu
    result["other_cpu"] = None if busy is None or after is None else max(0.0, after - busy - cpu)
    result["stdout"] = [line for line in done.stdout.splitlines() if line.strip()]
    return result


def kernel_start_alone(env: Mapping[str, str], repeat: int = 3) -> list[float]:
    """Seconds from ``start_kernel`` until the kernel answers ``kernel_info``, one kernel at a time."""
    code = (
        "import time, json\nfrom jupyter_client.manager import KernelManager\nout = []\n"
        f"for _ in range({repeat}):\n"
        "    t = time.perf_counter(); km = KernelManager(kernel_name='python3'); km.start_kernel()\n"
        "    kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)\n"
        "    out.append(time.perf_counter() - t); kc.stop_channels(); km.shutdown_kernel(now=True)\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=dict(env), capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def timed_python(code: str, env: Mapping[str, str]) -> float:
    done = subprocess.run([sys.executable, "-c", f"import time; t = time.perf_counter()\n{code}\n"
                           "print(time.perf_counter() - t)"], env=dict(env), capture_output=True, text=True,
                          check=True)
    return float(done.stdout.strip().splitlines()[-1])


def leftover_kernels(tmp: Path) -> list[int]:
    """Processes whose command line names the temporary folder (kernels' connection files live there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(tmp) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(proc.name))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds (each runs every variant of both shapes)")
    parser.add_argument("--work", type=float, default=0.2, help="seconds of computation per notebook")
    parser.add_argument("--max-parallel", type=int, default=None, help="the pipeline's max_parallel (default: 4)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--worker", choices=("peer", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--runs", default="cold,warm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)

    tmp = Path(tempfile.mkdtemp(prefix="jmk-bench-pipeline-"))
    try:
        return orchestrate(args, tmp)
    finally:
        left = leftover_kernels(tmp)
        if left:
            print(f"WARNING: processes left running that name {tmp}: {left}")
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def orchestrate(args: argparse.Namespace, tmp: Path) -> int:
    for label, value in machine_description(tmp):
        print(f"{label}: {value}")
    busy_start, wall_start = busy_cpu_seconds(), time.perf_counter()
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("JMK_STATE_DIR", "MLFLOW_TRACKING_URI", "JMK_STEP_OUTPUTS")}
    base_env["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime")  # kernels' connection files: leftovers findable
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"

    n = calibrate(args.work)
    print(f"\nnotebook loop: n = {n:,} iterations (calibrated to {args.work} s here)")
    store_s = timed_python(
        f"from mlflow.tracking import MlflowClient\nMlflowClient({tracking_uri!r}).search_experiments(max_results=1)",
        base_env)
    print(f"creating the SQLite MLflow store (import + tables, once, not in the rounds): {store_s:.2f} s")
    alone = kernel_start_alone(base_env)
    print("one kernel, start until it answers kernel_info, alone: " + ", ".join(f"{x:.2f}" for x in alone) + " s")
    imports = {
        "import papermill": timed_python("import papermill", base_env),
        "import mlflow": timed_python("import mlflow", base_env),
        "import jupyter_mlflow_k8s.pipelines.engine": timed_python("import jupyter_mlflow_k8s.pipelines.engine",
                                                                   base_env),
    }
    print("imports in a fresh process: " + ", ".join(f"{k} {v:.2f} s" for k, v in imports.items()))

    plans = {}
    for shape in SHAPES:
        plan = make_plan(shape, tmp / "notebooks" / shape, n, args.max_parallel)
        plan_file = tmp / f"plan-{shape}.json"
        plan_file.write_text(json.dumps(plan))
        plans[shape] = (plan, plan_file, expected_final(plan))

    results: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"peer": [], "cold": [], "warm": [], "warm_new": []}
                                                          for s in SHAPES}
    problems: list[str] = []
    for round_no in range(1, args.repeat + 1):
        for shape in SHAPES:
            plan, plan_file, expected = plans[shape]
            work = tmp / f"round{round_no}-{shape}"
            work.mkdir()
            peer = run_worker("peer", plan_file, work / "peer.json", base_env)
            ours_env = {**base_env, "JMK_STATE_DIR": str(work / "state"), "MLFLOW_TRACKING_URI": tracking_uri}
            ours = run_worker("ours", plan_file, work / "ours.json", ours_env, "cold,warm")
            warm_new = run_worker("ours", plan_file, work / "ours-warm.json", ours_env, "warm")
            cold, warm = ours["runs"]
            for run in (cold, warm):
                run.update(process_wall=ours["process_wall"], cpu=ours["cpu"], other_cpu=ours["other_cpu"])
            warm_run = warm_new["runs"][0]
            warm_run.update(process_wall=warm_new["process_wall"], cpu=warm_new["cpu"],
                            other_cpu=warm_new["other_cpu"])
            results[shape]["peer"].append(peer)
            results[shape]["cold"].append(cold)
            results[shape]["warm"].append(warm)
            results[shape]["warm_new"].append(warm_run)
            for label, final in (("peer", peer["final"]), ("ours cold", cold["final"]), ("ours warm", warm["final"]),
                                 ("ours warm (new process)", warm_run["final"])):
                if final != expected:
                    problems.append(f"round {round_no} {shape} {label}: final value {final!r}, expected {expected}")
            for label, run, want in (("cold", cold, {"succeeded"}), ("warm", warm, {"cached"}),
                                     ("warm (new process)", warm_run, {"cached"})):
                states = {step["state"] for step in run["steps"].values()}
                if states != want or run["state"] != "succeeded":
                    problems.append(f"round {round_no} {shape} ours {label}: states {states} {run['reasons']}")
            for line in ours["stdout"] + warm_new["stdout"]:
                problems.append(f"round {round_no} {shape} ours printed: {line}")
            print(f"round {round_no} {shape}: peer {peer['total']:.2f} s, ours cold {cold['total']:.2f} s, "
                  f"warm {warm['total']:.2f} s, warm (new process) {warm_run['total']:.2f} s; "
                  f"CPU of other processes during the round: {peer['other_cpu'] + ours['other_cpu']:.1f} s")
    report(args, plans, results, problems, imports)
    busy_end = busy_cpu_seconds()
    elapsed = time.perf_counter() - wall_start
    if busy_start is not None and busy_end is not None:
        print(f"\nwhole benchmark: {elapsed:.0f} s; machine CPU busy {busy_end - busy_start:.0f} s of "
              f"{elapsed * (os.cpu_count() or 1):.0f} available; load average at the end: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 1 if problems else 0


def clean_rounds(r: Mapping[str, Sequence[Mapping[str, Any]]], limit: float = 1.0) -> list[int]:
    """Rounds in which other processes used under ``limit`` CPU-seconds during every variant."""
    keys = ("peer", "cold", "warm_new")
    return [i for i in range(len(r["peer"]))
            if all((r[k][i]["other_cpu"] or 0.0) < limit for k in keys)]


def summary_rows(results: Mapping[str, Any], pick: Callable[[Mapping[str, Any]], list[int]]) -> list[list[str]]:
    rows = []
    for shape in SHAPES:
        r = results[shape]
        chosen = pick(r)
        if not chosen:
            rows.append([shape, "-", "-", "-", "-", "-", "-", "-", "-", "-", "0"])
            continue

        def med(key: str, value: Callable[[Mapping[str, Any]], float], r: Any = r, chosen: list[int] = chosen) -> float:
            return median([value(r[key][i]) for i in chosen])

        peer = med("peer", lambda x: x["total"])
        cold = med("cold", lambda x: x["total"])
        warm = med("warm", lambda x: x["total"])
        warm_new = med("warm_new", lambda x: x["total"])
        ours_over = med("cold", lambda x: mean_components(analyze_ours(x))[OVERHEAD])
        peer_over = med("peer", lambda x: mean_components(analyze_peer(x))[OVERHEAD])
        rows.append([shape, s(peer), s(cold), s(cold / peer), s(warm, 3), s(warm / peer, 3),
                     s(warm_new), s(warm_new / peer), s(ours_over), s(peer_over), str(len(chosen))])
    return rows


def report(args: argparse.Namespace, plans: Mapping[str, Any], results: Mapping[str, Any], problems: list[str],
           imports: Mapping[str, float]) -> None:
    header = ["shape", "peer (s)", "ours cold (s)", "ratio", "ours warm (s)", "ratio", "warm, new process (s)",
              "ratio", "overhead/step ours", "overhead/step peer", "rounds"]
    print()
    print(table(f"Medians of {args.repeat} rounds (ratio = ours / peer; goals: cold <= {GOAL_COLD}, "
                f"warm <= {GOAL_WARM})", header, summary_rows(results, lambda r: list(range(len(r["peer"]))))))
    print()
    print(table("The same, over the rounds without contention only (other processes used < 1 CPU-s during each "
                "variant)", header, summary_rows(results, clean_rounds)))

    rows = []
    for shape in SHAPES:
        r = results[shape]
        for key, label in (("peer", "peer"), ("cold", "ours cold"), ("warm", "ours warm"),
                           ("warm_new", "ours warm, new process")):
            runs = r[key]
            rows.append([f"{shape} {label}", " ".join(s(x["total"]) for x in runs),
                         " ".join(s(x["process_wall"]) for x in runs),
                         " ".join(s(x["cpu"], 1) for x in runs) if key != "warm" else "(with cold)",
                         " ".join(s(x["other_cpu"], 1) for x in runs) if key != "warm" else "(with cold)"])
    print()
    print(table("Every round: in-process time (from before the imports), process wall time, CPU of the process "
                "tree, CPU used by other processes meanwhile (s; cold and warm share a process)",
                ["variant", "time", "process wall", "CPU ours", "CPU others"], rows))

    for shape in SHAPES:
        r = results[shape]
        peer_mean = [mean_components(analyze_peer(x)) for x in r["peer"]]
        ours_mean = [mean_components(analyze_ours(x)) for x in r["cold"]]
        keys = list(ours_mean[0])
        rows = [[k, s(median([m.get(k, 0.0) for m in peer_mean]), 3),
                 s(median([m.get(k, 0.0) for m in ours_mean]), 3)] for k in keys]
        print()
        print(table(f"{shape}: where one step's time goes (mean over its 10 steps, median over rounds, s)",
                    ["component", "peer", "ours cold"], rows))
        ours_once = [analyze_ours(x)["once"] for x in r["cold"]]
        rows = [[k, "", s(median([o[k] for o in ours_once]), 3)] for k in ours_once[0]]
        rows.insert(0, ["import papermill (before the loop)",
                        s(median([analyze_peer(x)["once"]["import papermill"] for x in r["peer"]]), 3), ""])
        kernels = [analyze_ours(x)["kernels_started"] for x in r["cold"]]
        peer_kernels = [analyze_peer(x)["kernels_started"] for x in r["peer"]]
        rows.append(["kernels started (10 used)", f"{min(peer_kernels)}-{max(peer_kernels)}",
                     f"{min(kernels)}-{max(kernels)}"])
        slow = [d for x in r["peer"] for d in analyze_peer(x)["slow_shutdowns"]]
        rows.append(["peer: graceful kernel shutdowns over 1 s (all rounds)",
                     f"{len(slow)} of {10 * len(r['peer'])}" + (f", {min(slow):.1f}-{max(slow):.1f} s" if slow else ""),
                     ""])
        waits = [c[READY] for x in r["cold"] for name, c in analyze_ours(x)["steps"].items()
                 if name != plans[shape][0]["steps"][0]["name"]]
        peer_waits = [c[READY] for x in r["peer"] for c in analyze_peer(x)["steps"].values()]
        rows.append(["kernel ready wait per step, min / median (ours: not the first step)",
                     f"{min(peer_waits):.3f} / {median(peer_waits):.3f}", f"{min(waits):.3f} / {median(waits):.3f}"])
        pure_peer = median([analyze_peer(x)["pure"] for x in r["peer"]])
        pure_ours = median([analyze_ours(x)["pure"] for x in r["cold"]])
        rows.append(["sum of pure execution, 10 steps", s(pure_peer), s(pure_ours)])
        if shape == "chain":
            wall_peer = median([x["total"] for x in r["peer"]])
            wall_ours = median([x["total"] for x in r["cold"]])
            rows.append(["(wall - sum of pure execution) / 10", s((wall_peer - pure_peer) / 10, 3),
                         s((wall_ours - pure_ours) / 10, 3)])
        print()
        print(table(f"{shape}: paid once per run, and totals (median over rounds, s)", ["what", "peer", "ours cold"],
                    rows))

    for shape in SHAPES:
        for key, label in (("warm", "warm, same process"), ("warm_new", "warm, new process")):
            parts = [analyze_warm(x) for x in results[shape][key]]
            rows = [[k, s(median([p[k] for p in parts]), 3)] for k in parts[0]]
            rows.append(["total", s(median([x["total"] for x in results[shape][key]]), 3)])
            print()
            print(table(f"{shape}: where a {label} run's time goes (median over rounds, s)", ["what", "s"], rows))

    rows = []
    for shape in SHAPES:
        plan = plans[shape][0]
        for key, label in (("cold", "cold"), ("warm", "warm, same process"), ("warm_new", "warm, new process")):
            counts = [early_dispatches(x, plan) for x in results[shape][key]]
            rows.append([f"{shape} {label}", " ".join(str(c) for c in counts)])
    print()
    print(table("Steps whose _step began before a step they need had returned (per round, of 10; the engine's "
                "scheduler reads states the step threads set mid-step)", ["run", "steps"], rows))

    print("\nproblems (wrong outputs, unexpected states, lines printed by the engine): "
          + ("none" if not problems else ""))
    for line in problems:
        print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
