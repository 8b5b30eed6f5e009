"""Running a pipeline: steps in dependency order, independent ones in parallel, cached by content.

Each local step runs its notebook with papermill in a kernel of its own. Kernels are started ahead
of time (a small pool per working directory), so a chain of short notebooks does not pay a kernel
start per step. A step's notebook publishes outputs with ``jupyter_mlflow_k8s.output(name, value)``;
they reach the kernel's ``JMK_STEP_OUTPUTS`` file and then the steps downstream as papermill
parameters.

A run lives under ``<state dir>/pipelines/runs/<run id>/``: ``run.json`` (every step's state,
parameters, outputs, cache key, why it ran or not) and the executed notebooks. A failed step stops
the steps that need it while independent branches finish; ``resume`` continues a run from its failed
steps. The cache (``<state dir>/pipelines/cache/``) maps a step's content key (notebook cells,
resolved parameters, upstream outputs, image) to its outputs. MLflow gets a parent run per pipeline
run and a child run per step.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import JMKSettings, load_settings
from ..exceptions import JMKUsageError
from ..jobs import JobService
from ..lifecycle import end_job
from ..models import JobRecord, JobSpec, JobState
from ..util.processes import process_started
from .model import Pipeline, PipelineRun, Step, StepResult
from .spec import resolve_parameters, topological_order, upstream, validate

if TYPE_CHECKING:
    from ..tracking import RunWriter

Event = Callable[[PipelineRun, StepResult], None]
RUN_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
DONE = ("succeeded", "cached")
# A kernel that dies before it answers once ran nothing: the step gets a new one, this many times in all.
KERNEL_START_ATTEMPTS = 3
_log = logging.getLogger(__name__)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def notebook_fingerprint(path: Path) -> str:
    """What of a notebook decides its results: cell types and sources (not outputs, not metadata)."""
    document = json.loads(path.read_text())
    cells = [(c.get("cell_type"), "".join(c.get("source", ""))) for c in document.get("cells", [])]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


class KernelPool:
    """Kernels started ahead of use, one per step, per (kernel name, working directory).

    Starting and stopping kernels happens on background threads; ``close`` waits for all of them, so
    no kernel outlives the run.
    """

    def __init__(self, root: Path, size: int, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.size = size
        self.env = dict(env or {})
        self._ready: dict[tuple[str, str], list[tuple[Any, Path]]] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._lock = threading.Lock()

    def _start(self, kernel_name: str, cwd: str) -> tuple[Any, Path]:
        from jupyter_client.manager import KernelManager

        from .kernel import CLIENT_CLASS

        outputs = self.root / f"outputs-{secrets.token_hex(6)}.jsonl"
        manager = KernelManager(kernel_name=kernel_name, client_class=CLIENT_CLASS)
        manager.start_kernel(cwd=cwd, env={**os.environ, **self.env, "JMK_STEP_OUTPUTS": str(outputs)})
        return manager, outputs

    def _background(self, target: Callable[..., Any], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def prefill(self, kernel_name: str, cwd: str, count: int = 1) -> None:
        """Start ``count`` kernels for ``cwd`` now, before any step asks."""
        for _ in range(min(count, self.size)):
            self._background(self._refill, (kernel_name, cwd))

    def take(self, kernel_name: str, cwd: str) -> tuple[Any, Path]:
        """A started kernel and the file its ``output()`` calls go to; the pool refills behind it."""
        key = (kernel_name, cwd)
        with self._lock:
            ready = self._ready.setdefault(key, [])
            taken = ready.pop(0) if ready else None
        if taken is None:
            taken = self._start(kernel_name, cwd)
        self._background(self._refill, key)
        return taken

    def release(self, manager: Any) -> None:
        """Stop a used kernel without making the next step wait for it."""
        self._background(manager.shutdown_kernel, True)

    def _refill(self, key: tuple[str, str]) -> None:
        with self._lock:
            if self._closed or len(self._ready.get(key, [])) >= self.size:
                return
        kernel = self._start(*key)
        with self._lock:
            if not self._closed:
                self._ready.setdefault(key, []).append(kernel)
                return
        kernel[0].shutdown_kernel(now=True)

    def close(self) -> None:
        """Wait for kernels starting or stopping, then shut down those nobody took."""
        with self._lock:
            self._closed = True
        while True:
            with self._lock:
                pending = [t for t in self._threads if t.is_alive()]
            if not pending:
                break
            for thread in pending:
                thread.join()
        with self._lock:
            kernels = [k for ready in self._ready.values() for k in ready]
            self._ready.clear()
        stopping = [threading.Thread(target=manager.shutdown_kernel, args=(True,)) for manager, _ in kernels]
        for thread in stopping:  # each stop polls for the process's exit: in parallel, not one after another
            thread.start()
        for thread in stopping:
            thread.join()


class PipelineEngine:
    """Runs pipelines under one state directory."""

    def __init__(self, settings: JMKSettings | None = None, *, kernel_name: str = "python3",
                 service: JobService | None = None) -> None:
        self.settings = settings or (service.settings if service else load_settings())
        self.root = self.settings.state_path / "pipelines"
        self.kernel_name = kernel_name
        self._service = service
        self._lock = threading.Lock()

    @property
    def service(self) -> JobService:
        """The job service that runs steps on other backends (Kubernetes), and lists them in %jobs."""
        if self._service is None:
            self._service = JobService(self.settings)
        return self._service

    # -- runs on disk -------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        """Where a run's record and executed notebooks are kept."""
        return self.root / "runs" / run_id

    def save(self, run: PipelineRun) -> None:
        """Write the run's record atomically."""
        with self._lock:
            _atomic_write(self.run_dir(run.run_id) / "run.json", json.dumps(asdict(run), indent=1, default=str))

    def load(self, run_id: str) -> PipelineRun:
        """A run's record (a unique prefix of its id is enough)."""
        folder = self.root / "runs"
        matches = sorted(p.name for p in folder.glob(f"{run_id}*")) if folder.exists() else []
        if len(matches) != 1:
            known = ", ".join(r.run_id for r in self.list()[:5]) or "none"
            raise JMKUsageError(f"No single pipeline run matches {run_id!r}. Recent runs: {known}.")
        data = json.loads((folder / matches[0] / "run.json").read_text())
        data["steps"] = {name: StepResult(**step) for name, step in data["steps"].items()}
        return PipelineRun(**data)

    def list(self) -> list[PipelineRun]:
        """Every run, newest first."""
        folder = self.root / "runs"
        runs = [self.load(p.name) for p in folder.iterdir() if (p / "run.json").exists()] if folder.exists() else []
        return sorted(runs, key=lambda r: r.created, reverse=True)

    # -- the cache ----------------------------------------------------------------------------

    def cache_key(self, pipeline: Pipeline, step: Step, parameters: Mapping[str, Any],
                  upstream_outputs: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
        """The content key of a step, and what went into it (for --explain)."""
        parts = {
            "notebook": notebook_fingerprint(step.notebook),
            "parameters": parameters,
            "upstream": {name: upstream_outputs[name] for name in sorted(step.needs)},
            "image": step.image or "",
        }
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest(), parts

    def cached(self, key: str) -> dict[str, Any] | None:
        """The cache entry for ``key``, if any."""
        path = self.root / "cache" / f"{key}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None

    def explain(self, pipeline: Pipeline, step: Step, parts: Mapping[str, Any]) -> str:
        """Why a step runs: what changed since its last cached result."""
        previous_path = self.root / "cache" / "last" / pipeline.name / f"{step.name}.json"
        try:
            previous = json.loads(previous_path.read_text())
        except (OSError, ValueError):
            return "ran: no earlier result of this step"
        changes = []
        if previous["notebook"] != parts["notebook"]:
            changes.append("the notebook changed")
        before, after = previous["parameters"], parts["parameters"]
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                changes.append(f"parameter {name}: {before.get(name)!r} -> {after.get(name)!r}")
        for name in sorted(set(previous["upstream"]) | set(parts["upstream"])):
            if previous["upstream"].get(name) != parts["upstream"].get(name):
                changes.append(f"the outputs of {name} changed")
        if previous["image"] != parts["image"]:
            changes.append(f"image: {previous['image']!r} -> {parts['image']!r}")
        return "ran: " + ("; ".join(changes) if changes else "its cached result is gone")

    def remember(self, pipeline: Pipeline, step: Step, key: str, parts: Mapping[str, Any],
                 result: StepResult, run_id: str) -> None:
        """Keep a succeeded step's outputs under its key."""
        entry = {"outputs": result.outputs, "run": run_id, "step": step.name,
                 "executed_notebook": result.executed_notebook, "created": time.time()}
        _atomic_write(self.root / "cache" / f"{key}.json", json.dumps(entry, default=str))
        _atomic_write(self.root / "cache" / "last" / pipeline.name / f"{step.name}.json",
                      json.dumps(parts, sort_keys=True, default=str))

    # -- running --------------------------------------------------------------------------------

    def run(self, pipeline: Pipeline, *, resume: str | None = None, on_event: Event | None = None,
            run_id: str | None = None) -> PipelineRun:
        """Run ``pipeline`` as a new run (``run_id``, or a fresh id) or continue run ``resume``; return its record."""
        validate(pipeline)
        if resume:
            run = self._resumed(pipeline, resume)
        else:
            run_id = run_id or secrets.token_hex(4)
            if not RUN_ID.fullmatch(run_id) or self.run_dir(run_id).exists():
                raise JMKUsageError(f"Run id {run_id!r} is taken or not 1-40 of a-z, 0-9 and '-'. Leave it out.")
            run = PipelineRun(
                run_id=run_id, pipeline=pipeline.name, parameters=dict(pipeline.parameters),
                steps={name: StepResult(name) for name in topological_order(pipeline)}, created=time.time(),
                source=str(pipeline.source or ""),
            )
        self.run_dir(run.run_id).mkdir(parents=True, exist_ok=True)
        # Imported here, before the threads below start, so that no two of them import at once (MLflow loads on one).
        from .. import tracking  # noqa: F401 - the steps' threads close their jobs' runs through it (lifecycle)
        if any(s.backend == "local" for s in pipeline.steps.values()):
            import papermill  # noqa: F401
        # Steps log to the same MLflow as the engine, the embedded default included (no variable set).
        pool = KernelPool(self.run_dir(run.run_id), size=min(pipeline.max_parallel, 2),
                          env={"MLFLOW_TRACKING_URI": self.settings.tracking_uri})
        roots = [s for s in pipeline.steps.values() if not s.needs and s.backend == "local"]
        for folder in {str(s.notebook.parent) for s in roots}:
            pool.prefill(self.kernel_name, folder, count=sum(str(s.notebook.parent) == folder for s in roots))
        tracker = _Tracker(self.settings, pipeline, run)  # MLflow loads on its own thread while the steps run
        self.save(run)
        notify = on_event or (lambda run, step: None)
        try:
            self._execute(pipeline, run, pool, tracker, notify)
        finally:
            pool.close()
        run.state = "succeeded" if all(s.state in DONE for s in run.steps.values()) else "failed"
        run.finished = time.time()
        tracker.finish(run)
        self.save(run)
        return run

    def _resumed(self, pipeline: Pipeline, run_id: str) -> PipelineRun:
        run = self.load(run_id)
        if run.pipeline != pipeline.name:
            raise JMKUsageError(f"Run {run.run_id} is of pipeline {run.pipeline!r}, not {pipeline.name!r}.")
        for step in run.steps.values():
            if step.state not in DONE:
                step.state, step.reason, step.attempts = "pending", "", 0
        run.state, run.finished = "running", None
        return run

    def _execute(self, pipeline: Pipeline, run: PipelineRun, pool: KernelPool, tracker: _Tracker,
                 notify: Event) -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=pipeline.max_parallel) as executor:
            running: dict[concurrent.futures.Future[None], str] = {}
            # Steps whose thread has returned (or that ended in an earlier run being resumed). A step's thread
            # sets its state before it is done (outputs, cache, MLflow), so readiness goes by this set only.
            ended = {name for name, result in run.steps.items() if result.state in DONE}
            while True:
                for name in topological_order(pipeline):
                    result = run.steps[name]
                    if result.state != "pending" or name in running.values():
                        continue
                    if not all(n in ended for n in pipeline.steps[name].needs):
                        continue
                    needs = [run.steps[n] for n in pipeline.steps[name].needs]
                    broken = [n.name for n in needs if n.state in ("failed", "skipped")]
                    if broken:
                        result.state, result.reason = "skipped", f"not run: {', '.join(broken)} did not succeed"
                        ended.add(name)
                        self.save(run)
                        notify(run, result)
                        continue
                    result.state = "running"
                    self.save(run)
                    notify(run, result)
                    future = executor.submit(self._step, pipeline, run, pipeline.steps[name], pool, tracker)
                    running[future] = name
                if not running:
                    return
                done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    ended.add(name)
                    error = future.exception()
                    if error is not None:
                        result = run.steps[name]
                        result.state, result.reason = "failed", f"{type(error).__name__}: {error}"
                    self.save(run)
                    notify(run, run.steps[name])

    def _step(self, pipeline: Pipeline, run: PipelineRun, step: Step, pool: KernelPool, tracker: _Tracker) -> None:
        result = run.steps[step.name]
        outputs = {name: run.steps[name].outputs for name in upstream(pipeline, step.name)}
        result.parameters = resolve_parameters(step, pipeline.parameters, outputs)
        key, parts = self.cache_key(pipeline, step, result.parameters, outputs)
        result.cache_key = key
        hit = self.cached(key) if step.cache else None
        if hit is not None:
            result.state, result.outputs = "cached", dict(hit["outputs"])
            result.executed_notebook = hit.get("executed_notebook", "")
            result.reason = f"cached: same notebook, parameters, upstream outputs and image as run {hit['run']}"
            result.started = result.finished = time.time()
            tracker.step(result, cache_hit=True)
            return
        result.reason = self.explain(pipeline, step, parts) if step.cache else "ran: caching is off for this step"
        result.started = time.time()
        job = self._step_record(run, step) if step.backend == "local" else None
        if step.backend != "local":
            tracker.wait_opened()  # the job's own MLflow run becomes a child of the parent run
        for attempt in range(1, step.retries + 2):
            result.attempts = attempt
            try:
                result.outputs = self._run_notebook(run, step, result.parameters, pool, job)
                break
            except Exception as exc:
                if attempt > step.retries:
                    result.state = "failed"
                    result.reason = f"failed after {attempt} attempt{'s' if attempt > 1 else ''}: {_short(exc)}"
                    break
        result.finished = time.time()
        if result.state != "failed":
            result.state = "succeeded"
            if step.cache:
                self.remember(pipeline, step, key, parts, result, run.run_id)
        if job is None:
            tracker.step(result, cache_hit=False)
            return
        state = JobState.SUCCEEDED if result.state == "succeeded" else JobState.FAILED
        end_job(self.service.store, job.job_id, state, result.reason, 0 if state is JobState.SUCCEEDED else 1)
        tracker.step(result, cache_hit=False, then=functools.partial(self._link_step_record, job, result, tracker))

    def _step_record(self, run: PipelineRun, step: Step) -> JobRecord:
        """A job record for a local step, so that %jobs lists it; its log is the kernel's output."""
        store = self.service.store
        spec = JobSpec(code=f"# pipeline {run.pipeline}, run {run.run_id}: step {step.name}\n"
                            f"# papermill {step.notebook}\n",
                       backend="pipeline", resources=step.resources, notebook=str(step.notebook),
                       experiment=f"pipeline-{run.pipeline}", run_name=step.name)
        record = store.create(spec)
        run.steps[step.name].job_id = record.job_id
        return store.update(record.job_id, state=JobState.RUNNING, started=time.time(), pid=os.getpid(),
                            pid_start=process_started(os.getpid()), tracking_final=True)

    def _link_step_record(self, job: JobRecord, result: StepResult, tracker: _Tracker) -> None:
        """Point a step's job record at its MLflow child run, once the tracker has made it."""
        self.service.store.update(job.job_id, run_id=result.run_id or None,
                                  experiment_id=tracker.experiment_id or None, tracking_uri=tracker.uri)

    def _run_notebook(
        self, run: PipelineRun, step: Step, parameters: Mapping[str, Any], pool: KernelPool, job: JobRecord | None
    ) -> dict[str, Any]:
        """Execute the step's notebook with papermill in a kernel of its own; return what it published."""
        if step.backend != "local":
            return self._run_as_job(run, step, parameters)
        import papermill

        from .kernel import KernelStartFailed
        from .outputs import read_outputs

        executed = self.run_dir(run.run_id) / f"{step.name}.ipynb"
        for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
            manager, outputs_file = pool.take(self.kernel_name, str(step.notebook.parent))
            log = open(job.log_path, "a") if job is not None and job.log_path else None  # noqa: SIM115
            try:
                papermill.execute_notebook(
                    str(step.notebook), str(executed), parameters=dict(parameters), kernel_name=self.kernel_name,
                    km=manager, progress_bar=False, execution_timeout=step.timeout, stdout_file=log, stderr_file=log,
                )
                break
            except KernelStartFailed:
                if attempt == KERNEL_START_ATTEMPTS:
                    raise
                _log.warning("step %s: its kernel died while starting (attempt %d); running it in a new kernel",
                             step.name, attempt)
            finally:
                if log is not None:
                    log.close()
                pool.release(manager)
                run.steps[step.name].executed_notebook = str(executed)
        outputs = read_outputs(outputs_file) if outputs_file.exists() else {}
        outputs_file.unlink(missing_ok=True)
        return outputs


    def _run_as_job(self, run: PipelineRun, step: Step, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Run the step as a job of its backend (a Kubernetes Job running papermill in the runner image)."""
        spec = JobSpec(
            code=STEP_CODE, inputs=("jmk_notebook", "jmk_parameters"), outputs=("jmk_executed", "jmk_outputs"),
            assigns=("jmk_executed", "jmk_outputs"), resources=step.resources, backend=step.backend, image=step.image,
            timeout=step.timeout, experiment=f"pipeline-{run.pipeline}", run_name=step.name,
            tags={"mlflow.parentRunId": run.mlflow_run_id, "jmk.step": step.name, "jmk.pipeline_run": run.run_id}
            if run.mlflow_run_id else {"jmk.step": step.name},
            notebook=str(step.notebook), retries=0,
        )
        values = {"jmk_notebook": step.notebook.read_text(), "jmk_parameters": dict(parameters)}
        record = self.service.submit(spec, values)
        result = run.steps[step.name]
        result.job_id, result.run_id = record.job_id, record.run_id or ""
        final = record
        for item in self.service.follow(record.job_id):
            if isinstance(item, JobRecord):
                final = item
        returned = self.service.result(final).values  # raises JobFailed with the job's error
        executed = self.run_dir(run.run_id) / f"{step.name}.ipynb"
        executed.write_text(returned["jmk_executed"])
        result.executed_notebook = str(executed)
        return dict(returned["jmk_outputs"])


# What a step runs as a job: papermill on the notebook text it was sent, outputs and the executed notebook back.
STEP_CODE = """\
import os
import tempfile
from pathlib import Path

import papermill

from jupyter_mlflow_k8s.pipelines.outputs import read_outputs

work = Path(tempfile.mkdtemp(prefix="jmk-step-"))
(work / "step.ipynb").write_text(jmk_notebook)
os.environ["JMK_STEP_OUTPUTS"] = str(work / "outputs.jsonl")
try:
    papermill.execute_notebook(str(work / "step.ipynb"), str(work / "executed.ipynb"), parameters=jmk_parameters,
                               kernel_name="python3", cwd=str(work), progress_bar=False, log_output=True)
finally:
    jmk_executed = (work / "executed.ipynb").read_text() if (work / "executed.ipynb").exists() else ""
jmk_outputs = read_outputs(work / "outputs.jsonl") if (work / "outputs.jsonl").exists() else {}
"""


def _short(exc: BaseException) -> str:
    """The last line of an error (papermill's carry the whole traceback)."""
    text = str(exc).strip().splitlines()
    lines = [line for line in text if line.strip()]
    return lines[-1][:500] if lines else type(exc).__name__


class _Tracker:
    """The parent MLflow run of a pipeline run and a child run per step (best effort: never fails a run).

    All MLflow work happens in order on one thread of its own, so importing MLflow and opening the
    store (1.5 s or more) overlaps the first steps instead of coming before them, and a step's
    thread is free as soon as its notebook has run. ``finish`` waits for everything queued.
    ``papermill`` is imported before this thread starts (``PipelineEngine.run``), so the steps'
    threads import nothing while MLflow is imported here.
    """

    def __init__(self, settings: JMKSettings, pipeline: Pipeline, run: PipelineRun) -> None:
        self.uri = settings.tracking_uri
        self.settings = settings
        self.pipeline, self.run = pipeline, run
        self.client: RunWriter | None = None
        self.experiment_id = ""
        self.opened = threading.Event()
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"jmk-mlflow-{run.run_id}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        self._open()
        while (task := self._tasks.get()) is not None:
            task()

    def _open(self) -> None:
        pipeline, run = self.pipeline, self.run
        try:
            from ..tracking import RunWriter

            self.client = RunWriter(self.uri)
            experiment = f"pipeline-{pipeline.name}"
            # Artifacts under the state directory with a SQLite store, as a job's (not ./mlruns beside the notebooks).
            root = self.settings.artifact_root if self.uri.startswith("sqlite:") else None
            self.experiment_id = self.client.experiment(experiment, root)
            if not run.mlflow_run_id:
                run.mlflow_run_id = self.client.create_run(
                    self.experiment_id, run_name=f"{pipeline.name} {run.run_id}", start_time=int(run.created * 1000),
                    tags={"jmk.pipeline": pipeline.name, "jmk.pipeline_run": run.run_id})
                self.client.log_params(run.mlflow_run_id, pipeline.parameters)
        except Exception as exc:
            print(f"[jmk] pipeline {pipeline.name}: not tracked in MLflow ({exc})")
            self.client = None
        finally:
            self.opened.set()

    def wait_opened(self) -> None:
        """Block until the parent run exists (a step run as a job is tagged with its id)."""
        self.opened.wait()

    def step(self, result: StepResult, cache_hit: bool, then: Callable[[], None] | None = None) -> None:
        """Queue a child run for a finished (or cached) step; ``then`` runs after it is recorded."""
        self._tasks.put(functools.partial(self._step, result, cache_hit, then))

    def _step(self, result: StepResult, cache_hit: bool, then: Callable[[], None] | None) -> None:
        try:
            self._record(result, cache_hit)
        finally:
            if then is not None:
                then()

    def _record(self, result: StepResult, cache_hit: bool) -> None:
        """The child run: parameters, outputs, duration, the executed notebook."""
        if self.client is None:
            return
        try:
            tags = {"mlflow.parentRunId": self.run.mlflow_run_id, "jmk.step": result.name,
                    "jmk.cache_hit": str(cache_hit).lower(), "jmk.reason": result.reason[:5000]}
            if result.run_id:  # the step ran as a job: its own run is the child
                self.client.set_tags(result.run_id, tags)
            else:
                start = int((result.started or time.time()) * 1000)
                result.run_id = self.client.create_run(self.experiment_id, run_name=result.name, start_time=start,
                                                       tags=tags)
            self.client.log_params(result.run_id, result.parameters)
            self.client.log_dict(result.run_id, result.outputs, "outputs.json")
            if result.executed_notebook and Path(result.executed_notebook).exists():
                self.client.log_artifact(result.run_id, result.executed_notebook)
            duration = (result.finished or time.time()) - (result.started or time.time())
            self.client.log_metric(result.run_id, "duration_seconds", duration)
            status = "FINISHED" if result.state in DONE else "FAILED"
            end = int((result.finished or time.time()) * 1000)
            self.client.terminate(result.run_id, status=status, end_time=end)
        except Exception as exc:
            print(f"[jmk] step {result.name}: MLflow child run incomplete ({exc})")

    def finish(self, run: PipelineRun) -> None:
        """Close the parent run with the pipeline run's outcome, after every queued child run."""
        self._tasks.put(functools.partial(self._finish, run))
        self._tasks.put(None)
        self._thread.join()

    def _finish(self, run: PipelineRun) -> None:
        if self.client is None:
            return
        try:
            status = "FINISHED" if run.state == "succeeded" else "FAILED"
            end = int((run.finished or time.time()) * 1000)
            self.client.terminate(run.mlflow_run_id, status=status, end_time=end)
        except Exception as exc:
            print(f"[jmk] pipeline run {run.run_id}: MLflow parent run not closed ({exc})")
