"""What a job uses (CPU, memory, GPUs), read from the system metrics its runner logs to its MLflow run.

Jobs log MLflow's standard ``system/*`` metrics (``system/cpu_utilization_percentage``,
``system/gpu_0_utilization_percentage``, ...) every ``c.JMKSettings.system_metrics_interval`` seconds.
:class:`ResourceReader` turns them into the ``Resources`` wire shape of ``GET /jmk/api/jobs/{id}/resources``
and the ``gpu_percent`` of each listed job, through the tracking facade (never MLflow's client directly).

Each job's answer is cached a few seconds, so that several sidebars and the listing ask MLflow once.
The listing never waits on MLflow: :meth:`ResourceReader.gpu_percent` answers from the cache and asks
for a fresh value in the background. A tracking server that does not answer is a ``message``, never an
error. Everything here blocks (MLflow): call it from worker threads. No tornado here.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .. import tracking
from ..errors import JMKError, translate
from ..models import JobRecord, JobState
from ..tracking import bounds
from ..tracking.store import import_mlflow

PREFIX = "system/"
CPU = "system/cpu_utilization_percentage"
MEMORY_MB = "system/system_memory_usage_megabytes"
MEMORY_PERCENT = "system/system_memory_usage_percentage"
_GPU = re.compile(r"system/gpu_(\d+)_(utilization_percentage|memory_usage_megabytes|memory_usage_percentage)\Z")
GPU_FIELDS = {
    "utilization_percentage": "utilization_percent",
    "memory_usage_megabytes": "memory_mb",
    "memory_usage_percentage": "memory_percent",
}
MAX_POINTS = 300


def gpu_metrics(metrics: dict[str, float]) -> dict[int, dict[str, float]]:
    """``{gpu index: {"utilization_percent"|"memory_mb"|"memory_percent": value}}`` from a run's metric keys."""
    gpus: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        found = _GPU.match(key)
        if found:
            gpus.setdefault(int(found.group(1)), {})[GPU_FIELDS[found.group(2)]] = value
    return gpus


def _series(points: list[Any]) -> list[list[float]]:
    """``[[t seconds, value], ...]`` by time, the newest ``MAX_POINTS``."""
    ordered = sorted(points, key=lambda m: (m.timestamp, m.step))
    return [[m.timestamp / 1000.0, float(m.value)] for m in ordered[-MAX_POINTS:]]


def _mean_series(series: list[list[list[float]]]) -> list[list[float]]:
    """The mean over several GPUs' series, per timestamp (each GPU's sample of one tick shares its time)."""
    if len(series) == 1:
        return series[0]
    sums: dict[float, list[float]] = {}
    for points in series:
        for t, value in points:
            sums.setdefault(round(t, 3), []).append(value)
    return [[t, sum(v) / len(v)] for t, v in sorted(sums.items())][-MAX_POINTS:]


def empty(record: JobRecord, message: str | None) -> dict[str, Any]:
    """A Resources answer with no numbers, and why."""
    return {
        "job_id": record.job_id,
        "run_id": record.run_id,
        "state": record.state.value,
        "cpu_percent": None,
        "memory_mb": None,
        "memory_percent": None,
        "gpus": [],
        "sampled_at": None,
        "history": {"cpu_percent": [], "memory_mb": [], "gpu_percent": []},
        "message": message,
    }


def read_resources(record: JobRecord, tracking_uri: str) -> dict[str, Any]:
    """The job's resource use from its run's system metrics (blocks on MLflow; a server down is a message)."""
    if not record.run_id:
        return empty(record, "This job has no MLflow run yet: its resource use shows once it runs.")
    uri = record.tracking_uri or tracking_uri
    down = bounds.unreachable(uri)
    if down:
        return empty(record, f"The tracking server does not answer ({down}); resource use shows once it does.")
    import_mlflow()
    try:
        run = tracking.get_run(uri, record.run_id)
        latest = {k: float(v) for k, v in run.data.metrics.items() if k.startswith(PREFIX)}
        if not latest:
            return empty(record, _no_metrics_yet(record))
        history = {
            key: _series(tracking.metric_history(uri, record.run_id, key))
            for key in latest
            if key in (CPU, MEMORY_MB) or key.endswith("_utilization_percentage")
        }
    except JMKError as exc:
        return empty(record, f"The job's MLflow run cannot be read now: {exc}")
    except Exception as exc:
        family = translate(exc)
        if family is None:
            raise
        return empty(record, f"The job's MLflow run cannot be read now: {family}")
    gpus = gpu_metrics(latest)
    gpu_series = [
        history[f"system/gpu_{i}_utilization_percentage"]
        for i in sorted(gpus)
        if f"system/gpu_{i}_utilization_percentage" in history
    ]
    newest = [points[-1][0] for points in history.values() if points]
    return {
        "job_id": record.job_id,
        "run_id": record.run_id,
        "state": record.state.value,
        "cpu_percent": latest.get(CPU),
        "memory_mb": latest.get(MEMORY_MB),
        "memory_percent": latest.get(MEMORY_PERCENT),
        "gpus": [
            {
                "index": i,
                "utilization_percent": gpus[i].get("utilization_percent"),
                "memory_mb": gpus[i].get("memory_mb"),
                "memory_percent": gpus[i].get("memory_percent"),
            }
            for i in sorted(gpus)
        ],
        "sampled_at": max(newest) if newest else None,
        "history": {
            "cpu_percent": history.get(CPU, []),
            "memory_mb": history.get(MEMORY_MB, []),
            "gpu_percent": _mean_series(gpu_series) if gpu_series else [],
        },
        "message": None,
    }


def _no_metrics_yet(record: JobRecord) -> str:
    if record.state is JobState.QUEUED:
        return "The job has not started: its resource use shows once it runs."
    if record.state.terminal:
        return "This job's run has no system metrics (they are off, or the job ended before the first sample)."
    return (
        "No system metrics yet: the job logs them every c.JMKSettings.system_metrics_interval seconds "
        "(0 turns them off)."
    )


class ResourceReader:
    """Each job's resource use, cached ``ttl`` seconds per job."""

    def __init__(self, tracking_uri: Callable[[], str], ttl: float = 3.0) -> None:
        self.tracking_uri = tracking_uri
        self.ttl = ttl
        self._cache: dict[str, tuple[float, tuple[str, str | None], dict[str, Any]]] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def _fresh(self, record: JobRecord) -> dict[str, Any] | None:
        """The cached answer if it is recent and about the same state and run."""
        with self._lock:
            seen = self._cache.get(record.job_id)
        if seen is None or seen[1] != (record.state.value, record.run_id) or time.monotonic() - seen[0] > self.ttl:
            return None
        return seen[2]

    def read(self, record: JobRecord) -> dict[str, Any]:
        """The job's Resources, from the cache when fresh (blocks on MLflow otherwise)."""
        found = self._fresh(record)
        if found is not None:
            return found
        answer = read_resources(record, self.tracking_uri())
        with self._lock:
            self._cache[record.job_id] = (time.monotonic(), (record.state.value, record.run_id), answer)
            if len(self._cache) > 1000:  # forget the oldest answers of a long-lived server
                for job_id, _ in sorted(self._cache.items(), key=lambda item: item[1][0])[:500]:
                    self._cache.pop(job_id, None)
        return answer

    def gpu_percent(self, record: JobRecord, executor: Executor) -> float | None:
        """A running job's mean GPU use as last read; never waits (a stale value is re-read in ``executor``)."""
        if record.state is not JobState.RUNNING or not record.run_id:
            return None
        with self._lock:
            seen = self._cache.get(record.job_id)
        stale = self._fresh(record) is None
        if stale:
            self._refresh_later(record, executor)
        if seen is None or seen[1] != (record.state.value, record.run_id):
            return None
        gpus = [g["utilization_percent"] for g in seen[2]["gpus"] if g["utilization_percent"] is not None]
        return sum(gpus) / len(gpus) if gpus else None

    def _refresh_later(self, record: JobRecord, executor: Executor) -> None:
        with self._lock:
            if record.job_id in self._refreshing:
                return
            self._refreshing.add(record.job_id)

        def refresh() -> None:
            try:
                self.read(record)
            except Exception:  # noqa: S110 (a listing's background read: the job view says why)
                pass
            finally:
                with self._lock:
                    self._refreshing.discard(record.job_id)

        try:
            executor.submit(refresh)
        except RuntimeError:  # the pool is shut down: the server is stopping
            with self._lock:
                self._refreshing.discard(record.job_id)
