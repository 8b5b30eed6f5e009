"""Cheap ``mlflow.log_metric`` inside a job: buffered in memory, sent in batches.

Plain ``mlflow.log_metric`` makes one store round trip per call (3 ms against SQLite here;
a network round trip against a server), which a training loop pays at every step. Inside a
job the runner patches ``mlflow.log_metric`` and ``mlflow.log_metrics`` for the job's run so
that a call only appends to a list; a thread sends the points with ``log_batch`` every
``interval`` seconds, and :meth:`MetricBuffer.close` sends the rest when the cell ends, fails
or is terminated. A crash (SIGKILL) loses at most the last interval. Calls that name another
run, a model or a dataset go to MLflow unchanged.

The patch is installed when the cell imports MLflow (an import hook), so a cell that never
does pays nothing. At that moment the job's run becomes the process's active run and
``MLFLOW_RUN_ID`` is removed from the environment (it would make ``start_run(nested=True)``
resume the job's run instead of opening a child).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

MAX_BATCH = 1000  # MLflow's limit for metrics in one log_batch call


class MetricBuffer:
    """Points for one run, flushed by a background thread.

    A batch the tracking server does not take stays queued, in order, and is sent again at the
    next flush: an outage of the server costs no point. What is still unsent when the job ends is
    handed back by :meth:`close` (the runner keeps it with the job, and the run's closing sends it).
    """

    def __init__(self, send: Callable[[list[Any]], object], make_metric: Callable[..., Any], interval: float = 1.0):
        self._send = send
        self._make_metric = make_metric
        self._interval = interval
        self._points: list[Any] = []
        self._inflight: list[Any] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._closed = threading.Event()
        self.sent = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="jmk-metrics", daemon=True)
        self._thread.start()

    def add(self, key: str, value: float, step: int | None, timestamp: int | None) -> None:
        """Queue one point (validated now, so a bad call fails where it is made)."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric name must be a non-empty string, got {key!r}")
        number = float(value)
        point = self._make_metric(key, number, timestamp or int(time.time() * 1000), int(step or 0))
        with self._lock:
            self._points.append(point)

    def _loop(self) -> None:
        while not self._closed.wait(self._interval):
            self.flush()

    def flush(self) -> bool:
        """Send everything queued so far; False if the server did not take it (it stays queued)."""
        with self._flushing:
            while True:
                with self._lock:
                    chunk, self._points = self._points[:MAX_BATCH], self._points[MAX_BATCH:]
                    self._inflight = chunk
                if not chunk:
                    return True
                try:
                    self._send(chunk)
                except Exception as exc:  # keep training; the points wait for the server
                    with self._lock:
                        self._points[:0] = chunk
                        self._inflight = []
                        waiting = len(self._points)
                    if not self.errors:
                        print(f"[jmk] MLflow did not take {len(chunk)} metric points ({exc}); "
                              "they are kept and sent again", file=sys.stderr)
                    self.errors.append(f"{waiting} metric points waiting: {exc}")
                    return False
                with self._lock:
                    self._inflight = []
                self.sent += len(chunk)
                if self.errors:
                    print(f"[jmk] MLflow answers again: metric points sent ({self.sent} in all)", file=sys.stderr)
                    self.errors.clear()

    def unsent(self) -> list[Any]:
        """The points not known to be sent (a batch still in flight counts: the server dedups a repeat)."""
        with self._lock:
            return self._inflight + self._points

    def close(self, timeout: float = 5.0, send: bool = True) -> list[Any]:
        """Stop the thread, try once more (``send``) within ``timeout`` seconds, return what is still unsent."""
        self._closed.set()
        self._thread.join(timeout=timeout)
        if send:
            last = threading.Thread(target=self.flush, name="jmk-metrics-last", daemon=True)
            last.start()
            last.join(timeout=timeout)
        return self.unsent()


_buffer: MetricBuffer | None = None


def install(mlflow: ModuleType, run_id: str, interval: float = 1.0) -> MetricBuffer:
    """Patch ``mlflow.log_metric``/``log_metrics`` to buffer points for ``run_id``."""
    global _buffer
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    buffer = MetricBuffer(lambda points: client.log_batch(run_id, metrics=points), Metric, interval)
    original_metric, original_metrics = mlflow.log_metric, mlflow.log_metrics

    def ours(explicit: str | None, extra: Sequence[Any]) -> bool:
        if any(value is not None for value in extra):
            return False  # model or dataset links: MLflow's own path
        if explicit is not None:
            return explicit == run_id
        active = mlflow.active_run()
        return active is None or active.info.run_id == run_id

    def log_metric(key: str, value: float, step: int | None = None, synchronous: bool | None = None,
                   timestamp: int | None = None, run_id: str | None = None, model_id: str | None = None,
                   dataset: Any = None) -> None:
        if not ours(run_id, (model_id, dataset)):
            return original_metric(key, value, step, synchronous, timestamp, run_id, model_id, dataset)  # type: ignore[no-any-return]
        buffer.add(key, value, step, timestamp)
        return None

    def log_metrics(metrics: dict[str, float], step: int | None = None, synchronous: bool | None = None,
                    run_id: str | None = None, timestamp: int | None = None, model_id: str | None = None,
                    dataset: Any = None) -> None:
        if not ours(run_id, (model_id, dataset)):
            return original_metrics(metrics, step, synchronous, run_id, timestamp, model_id, dataset)  # type: ignore[no-any-return]
        for key, value in metrics.items():
            buffer.add(key, value, step, timestamp)
        return None

    log_metric.__doc__ = original_metric.__doc__
    log_metrics.__doc__ = original_metrics.__doc__
    setattr(mlflow, "log_metric", log_metric)  # noqa: B010 - a module attribute mypy cannot see
    setattr(mlflow, "log_metrics", log_metrics)  # noqa: B010
    _buffer = buffer
    if mlflow.active_run() is None:
        mlflow.start_run(run_id=run_id)
    # The job's run is now the active run of this process. MLFLOW_RUN_ID would make every
    # start_run() resume it, so that ``start_run(nested=True)`` could never open a child run.
    os.environ.pop("MLFLOW_RUN_ID", None)
    return buffer


def close(timeout: float = 5.0, send: bool = True) -> list[dict[str, Any]]:
    """Send what is buffered (end of the cell, failure, termination); returns the points still unsent."""
    if _buffer is None:
        return []
    return [{"key": p.key, "value": p.value, "timestamp": p.timestamp, "step": p.step}
            for p in _buffer.close(timeout, send)]


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after ``name`` is first imported."""

    def __init__(self, name: str, callback: Callable[[ModuleType], object]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            self.callback(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install_on_import(run_id: str, interval: float = 1.0) -> None:
    """Patch MLflow for ``run_id`` if and when the cell imports it."""
    if "mlflow" in sys.modules:
        install(sys.modules["mlflow"], run_id, interval)
    else:
        sys.meta_path.insert(0, _AfterImport("mlflow", lambda module: install(module, run_id, interval)))
