"""The job side, the same for every backend: ``python -m jupyter_mlflow_k8s.runner PAYLOAD_URL``.

Fetches the staged payload, restores the inputs, points MLflow at the job's run, executes the
cell in a fresh ``__main__``, and stages a result document (assigned names, the final
expression's value, or the error with its traceback). Output goes to stdout/stderr unbuffered;
the launcher keeps the log. Exit status: 0 success, 1 the cell raised, 2 the runner itself
failed, 3 the model was not registered, 4 the job storage did not take the results (they are
kept elsewhere: :class:`ResultWriter`), 143 terminated. MLflow is imported only if the cell
imports it, so that a trivial cell pays no MLflow import; the job's system metrics are recorded by a
process of their own (:mod:`.tracking.system_metrics`), started here and stopped when the cell ends.
Under torchrun (:mod:`.distributed`) it is one rank: its lines carry the rank's prefix, and only
rank 0 stages results (and records the system metrics).
"""

from __future__ import annotations

import ast
import atexit
import json
import linecache
import os
import signal
import sys
import tempfile
import time
import traceback
import types
from typing import Any

from .logchannel import PAYLOAD_ROOT_ENV, LogChannelStorage
from .payload import Payload, UnpicklableValue, load_value, new_main_module, stage_value
from .ranks import GPUS_PER_PROC_ENV, drain_output, note_error_time, prefix_output, rank_prefix, worker_rank
from .storage import LocalStorage, Storage, get_storage, read_url
from .storage.kept import KEEP_DIR_ENV, RETRY_SECONDS_ENV, retry_seconds, with_retries
from .tracking import KEPT_METRICS, fastlog, system_metrics
from .tracking.bounds import final_requests, unreachable

EXIT_OK, EXIT_CELL_ERROR, EXIT_RUNNER_ERROR, EXIT_REGISTER_ERROR, EXIT_TERMINATED = 0, 1, 2, 3, 143
EXIT_RESULTS_KEPT = 4  # the cell ran, but the job storage did not take its results: they are kept elsewhere


class Terminated(BaseException):
    """Raised inside the cell when the job is asked to stop (SIGTERM)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _cell_traceback(exc: BaseException, filename: str) -> str:
    """The traceback from the first frame of the cell on: runner frames are noise to users."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def execute(payload: Payload, namespace: dict[str, Any]) -> tuple[Any, bool]:
    """Run the cell; returns the final expression's value and whether there was one."""
    filename = f"<jmk-cell {payload.job_id}>"
    linecache.cache[filename] = (len(payload.code), None, payload.code.splitlines(True), filename)
    tree = ast.parse(payload.code, filename=filename)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    body = ast.Module(body=tree.body[:-1] if last else tree.body, type_ignores=[])
    exec(compile(body, filename, "exec"), namespace)  # noqa: S102 - running the user's cell is the job
    if last is None:
        return None, False
    return eval(compile(ast.Expression(last.value), filename, "eval"), namespace), True  # noqa: S307


def _finish_mlflow(status: str, storage: Storage, payload: Payload, rank: int | None = None,
                   monitor: system_metrics.SystemMetrics | None = None) -> None:
    """Flush and close the run if the cell used MLflow; otherwise cost nothing.

    The system-metrics ``monitor`` (if any) has sent its last sample first, or been stopped after
    :data:`~.tracking.system_metrics.STOP_SECONDS`.

    A rank other than 0 of a distributed job only flushes what it logged: the run is the job's,
    closed once, by rank 0 and the job's lifecycle.

    Nothing here waits on the tracking server: it is asked once, quickly, whether it answers, and
    from then on each MLflow request gets one short try. The metric points it did not take are kept
    next to the payload; the job's lifecycle closes the run and sends them once the server answers.
    """
    if monitor is not None:
        monitor.stop()
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    final_requests()
    down = unreachable(os.environ.get("MLFLOW_TRACKING_URI"), timeout=1.0)
    try:
        unsent = fastlog.close(timeout=0 if down else 3, send=not down)
        if unsent and rank:  # only rank 0's points are the run's (and kept for its closing)
            print(f"[jmk] {len(unsent)} metric points of rank {rank} were not sent", file=sys.stderr)
        elif unsent:
            storage.put_bytes(f"jobs/{payload.job_id}/{KEPT_METRICS}", json.dumps(unsent).encode())
            print(f"[jmk] {len(unsent)} metric points are kept with the job; they are sent when its run is "
                  "closed", file=sys.stderr)
        if down:
            print(f"[jmk] tracking server unreachable ({down}): the run is closed once it answers", file=sys.stderr)
            _leave_run_open(mlflow)
            return
        if hasattr(mlflow, "flush_async_logging"):
            mlflow.flush_async_logging()
        if rank:
            _leave_run_open(mlflow)
        elif mlflow.active_run() is not None:
            mlflow.end_run(status=status)
    except Exception as exc:  # tracking trouble must not turn a good result into a failure
        print(f"[jmk] could not close the MLflow run cleanly: {str(exc)[:300]}", file=sys.stderr)


def _leave_run_open(mlflow: Any) -> None:
    """Keep MLflow from ending the run at exit (a request to a server that does not answer)."""
    fluent = getattr(getattr(mlflow, "tracking", None), "fluent", None)
    safe_end_run = getattr(fluent, "_safe_end_run", None)
    if safe_end_run is not None:
        atexit.unregister(safe_end_run)


class ResultWriter:
    """Stages the job's values and its result document, so that a store that is down loses nothing.

    Each write to the job storage is retried for up to ``JMK_STORAGE_RETRY_SECONDS``. If the store
    still fails, every value (those it took too) and the document go under the same keys into a
    folder the job's owner can reach: ``JMK_RESULTS_KEEP_DIR`` for a local job; otherwise (a pod,
    no shared disk) a scratch folder printed into the log as frames, which the notebook side keeps
    (:class:`~.logchannel.FrameCollector`).
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        local = storage.is_local  # a local disk that fails is no blip: no waiting on it
        self.seconds = 0.0 if local else retry_seconds()
        self.target = storage if local else storage.fail_fast()
        self.staged: list[tuple[str, Any]] = []
        self.kept: Storage | None = None
        self.reason = ""

    def stage(self, name: str, value: Any) -> dict[str, Any]:
        """Stage one value (raises :class:`UnpicklableValue` if it does not pickle); returns its entry."""
        entry: dict[str, Any] | None = None
        if self.kept is None:
            try:
                entry = with_retries(lambda: stage_value(self.target, name, value).__dict__, self.seconds,
                                     f"{name!r} to {self.storage.url}")
            except UnpicklableValue:
                raise
            except Exception as exc:
                self._keep(exc)
        if self.kept is not None:
            entry = stage_value(self.kept, name, value).__dict__
        assert entry is not None
        self.staged.append((name, value))
        return entry

    def finish(self, key: str, document: dict[str, Any]) -> None:
        """Write the result document, last: a reader that finds it finds every value it names."""
        if self.kept is None:
            data = json.dumps(document).encode()
            try:
                with_retries(lambda: self.target.put_bytes(key, data), self.seconds,
                             f"the result to {self.storage.url}")
            except Exception as exc:
                self._keep(exc)
        if self.kept is not None:
            self.kept.put_bytes(key, json.dumps({**document, "kept": self.reason}).encode())
        for storage in (self.storage, self.kept):
            if isinstance(storage, LogChannelStorage):
                storage.emit(last=key)

    def _keep(self, exc: BaseException) -> None:
        """Switch to the fallback folder and stage there again what the store already took."""
        folder = os.environ.get(KEEP_DIR_ENV)
        self.kept = LocalStorage(folder) if folder else LogChannelStorage(tempfile.mkdtemp(prefix="jmk-payload-"))
        where = f"in {folder}" if folder else "in this job's log, for the notebook server to collect"
        self.reason = (
            f"the job storage {self.storage.url} was unreachable for {self.seconds:g} s "
            f"({type(exc).__name__}: {exc}); the results are kept {where}. `%job attach` (or "
            f"JobService.result) still brings them back; set {RETRY_SECONDS_ENV} to wait longer."
        )
        print(f"[jmk] {self.reason}", file=sys.stderr, flush=True)
        for name, value in self.staged:
            stage_value(self.kept, name, value)


def _register(payload: Payload, namespace: dict[str, Any]) -> dict[str, Any]:
    """Log and register the cell's model (``--register``); imports MLflow."""
    from .tracking.registry import pick_model, register

    spec = payload.register or {}
    name = spec["name"]
    variable, model = pick_model(namespace, payload.assigns, name, spec.get("model_var") or None)
    example = namespace.get(spec["input_example"]) if spec.get("input_example") else None
    registered = register(name, variable, model, example, payload.tracking["MLFLOW_RUN_ID"])
    print(f"[jmk] registered {variable} as {name} version {registered['version']} ({registered['flavor']})")
    return registered


def _use_own_gpus() -> None:
    """A rank of a job with GPUs makes the first of its share of the node's GPUs its default CUDA device.

    Every rank sees all the node's GPUs (so ``cuda:LOCAL_RANK`` is its own, as under torchrun), and
    ``torch.device("cuda")`` or ``init_process_group("nccl")`` without a device work too.
    """
    share = int(os.environ.get(GPUS_PER_PROC_ENV) or 0)
    if not share:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) * share)


def run(payload_url: str) -> int:
    """Execute one payload; returns the process exit status.

    As a rank of a distributed job (under :mod:`.distributed`), only rank 0 stages results and
    registers the model; every rank runs the cell with the same inputs.
    """
    rank = worker_rank()
    if rank is not None:
        _use_own_gpus()
    payload = Payload.from_json(read_url(payload_url))
    root = os.environ.get(PAYLOAD_ROOT_ENV)  # a mounted payload: results leave through the log
    storage = LogChannelStorage(root) if root else get_storage(payload.storage_url)
    os.environ.update(payload.tracking)
    monitor = _start_system_metrics(payload, rank)
    try:
        return _run(payload, storage, rank, monitor)
    finally:
        if monitor is not None:
            monitor.stop()


def _start_system_metrics(payload: Payload, rank: int | None) -> system_metrics.SystemMetrics | None:
    """The job's system-metrics process (rank 0's for a distributed job), if the job has a run and an interval."""
    run_id = payload.tracking.get("MLFLOW_RUN_ID")
    interval = system_metrics.interval_from(os.environ)
    if not run_id or not interval or rank:
        return None
    # That process records them: a run the cell resumes (start_run) starts no second monitor of MLflow's.
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    return system_metrics.start(run_id, interval)


def _run(payload: Payload, storage: Storage, rank: int | None, monitor: system_metrics.SystemMetrics | None) -> int:
    """Restore the inputs, execute the cell, stage what it made; ``monitor`` is told to stop when the cell ends."""
    if payload.tracking.get("MLFLOW_RUN_ID"):
        interval = float(os.environ.get("JMK_METRICS_FLUSH_SECONDS", "1"))
        fastlog.install_on_import(payload.tracking["MLFLOW_RUN_ID"], interval)
    # The cell runs as ``__main__`` (like a notebook), so what it defines pickles by value.
    main_module = new_main_module()
    sys.modules["__main__"] = main_module
    namespace = main_module.__dict__
    for entry in payload.inputs:
        namespace[entry.name] = load_value(storage, entry.__dict__)
    namespace.update(payload.params)

    result: dict[str, Any] = {"ok": False, "outputs": [], "skipped": {}, "display": None, "error": None}
    status = EXIT_OK
    writer = ResultWriter(storage)
    started = time.time()
    try:
        try:
            value, has_value = execute(payload, namespace)
        finally:
            if monitor is not None:
                monitor.stop_soon()  # its last sample is sent while the results are staged
    except (Terminated, KeyboardInterrupt):
        print(f"[jmk] job {payload.job_id} terminated", file=sys.stderr)
        _finish_mlflow("KILLED", storage, payload, rank, monitor)
        return EXIT_TERMINATED
    except BaseException as exc:  # the user's exception, reported back with its traceback
        if rank is not None:
            note_error_time(rank)
        text = _cell_traceback(exc, f"<jmk-cell {payload.job_id}>")
        sys.stderr.write(text)
        result["error"] = {"type": type(exc).__name__, "message": str(exc), "traceback": text}
        status = EXIT_CELL_ERROR
    else:
        if rank:  # the results are rank 0's
            sys.stdout.flush()
            _finish_mlflow("FINISHED", storage, payload, rank)
            return EXIT_OK
        result["ok"] = True
        for name in payload.outputs:
            if name not in namespace or isinstance(namespace[name], types.ModuleType):
                continue  # modules the cell imported: the notebook imports its own
            try:
                result["outputs"].append(writer.stage(name, namespace[name]))
            except UnpicklableValue as exc:
                result["skipped"][name] = str(exc)
                print(f"[jmk] not returning {name!r}: cannot pickle it", file=sys.stderr)
        if payload.register:
            try:
                result["registered"] = _register(payload, namespace)
            except Exception as exc:  # the results are staged; say why the model is not registered
                text = _cell_traceback(exc, "")
                sys.stderr.write(text)
                result["register_error"] = {"type": type(exc).__name__, "message": str(exc), "traceback": text}
                status = EXIT_REGISTER_ERROR
        if has_value and value is not None:
            try:
                result["display"] = writer.stage("_", value)
            except UnpicklableValue:
                result["display"] = {"repr": repr(value)}
    result["duration"] = time.time() - started
    sys.stdout.flush()
    sys.stderr.flush()
    _finish_mlflow("FINISHED" if status == EXIT_OK else "FAILED", storage, payload, rank, monitor)
    if rank:
        return status  # rank 0 writes the job's result; this rank's error is in the log, under its prefix
    writer.finish(payload.result_key, result)
    if writer.kept is not None and status == EXIT_OK:
        return EXIT_RESULTS_KEPT
    return status


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jupyter_mlflow_k8s.runner PAYLOAD_URL", file=sys.stderr)
        return EXIT_RUNNER_ERROR
    rank = worker_rank()
    prefixer = prefix_output(rank_prefix(rank)) if rank is not None else 0  # first, before any thread: it forks
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        status = run(args[0])
    except Terminated:
        status = EXIT_TERMINATED
    except Exception:
        print("[jmk] the runner failed before or after the cell ran:", file=sys.stderr)
        traceback.print_exc()
        status = EXIT_RUNNER_ERROR
    if rank is not None:
        # A rank leaves without the interpreter's teardown: a process group the cell left open
        # (no destroy_process_group) can abort there ("terminate called without an active
        # exception") and turn a good end into a crash. Its results and run are closed already;
        # its last lines are let out of the prefixing pipe first.
        sys.stdout.flush()
        sys.stderr.flush()
        drain_output(prefixer)
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
