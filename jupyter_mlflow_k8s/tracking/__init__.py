"""The tracking facade: the only package that talks to MLflow's client API.

Here: one run per job, opened before the job starts (:func:`start_run`) and closed after it ends
(:func:`close_run`; *when* to close it, exactly once, is the lifecycle's business). The rest of
the facade, re-exported below: :mod:`.refs` (``models:/`` URIs), :mod:`.model_registry` (models,
versions, aliases), :mod:`.experiments` (experiments, runs, the pipeline engine's
:class:`RunWriter`), :mod:`.store` (the client cache and the translation of MLflow's errors into
the package's families). MLflow is imported lazily, and nowhere on a job's critical path.
This package imports neither the job records nor the lifecycle.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from ..errors import UnavailableError
from ..exceptions import JMKUsageError
from ..models import JobRecord, JobSpec
from ..util.identity import current_user
from . import bounds, model_registry
from .experiments import (
    RunWriter,
    ensure_experiment,
    experiment_by_id,
    experiment_by_name,
    experiment_names,
    experiments,
    get_run,
    list_artifacts,
    metric_history,
    search_runs,
)
from .refs import URI_FORMS, ModelRef, check_alias, parse_model_uri
from .store import client, mlflow_errors, translated

DEFAULT_EXPERIMENT = "jmk"
# What closing a job's run sends, in order; each is sent once (the lifecycle records which are done).
CLOSE_STEPS = ("metrics", "artifacts", "status")
# The metric points a job's runner could not send, next to its payload (see ``fastlog``).
KEPT_METRICS = "unsent-metrics.json"
# Closing a run retries transient failures: 0.2 + 0.4 + ... + 3.2 s, about 6 s in all.
SET_TERMINATED_ATTEMPTS = 6
_experiment_ids: dict[tuple[str, str], str] = {}


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`JMKUsageError` naming the URI if an MLflow server does not answer.

    MLflow's own client retries a dead server; this asks once, quickly, before anything is submitted.
    """
    bounds.forget(tracking_uri)
    reason = bounds.unreachable(tracking_uri, timeout)
    if reason:
        raise JMKUsageError(
            f"The MLflow tracking server at {tracking_uri} does not answer ({reason}). "
            "Start it, or point MLFLOW_TRACKING_URI (c.JMKSettings.tracking_uri) at one that runs; "
            "unset it to use the local SQLite default. Nothing was submitted."
        )


def experiment_name(spec: JobSpec) -> str:
    """``--experiment``, else the notebook's name, else ``jmk``."""
    if spec.experiment:
        return spec.experiment
    if spec.notebook:
        return Path(spec.notebook).stem or DEFAULT_EXPERIMENT
    return DEFAULT_EXPERIMENT


def run_tags(job_id: str, spec: JobSpec) -> dict[str, str]:
    """Tags that say where a run came from."""
    tags = {
        "jmk.job_id": job_id,
        "jmk.backend": spec.backend,
        "jmk.cell_sha256": hashlib.sha256(spec.code.encode()).hexdigest()[:16],
        "jmk.host": socket.gethostname(),
        "mlflow.user": current_user(),
        "mlflow.source.type": "NOTEBOOK" if spec.notebook else "LOCAL",
    }
    if spec.notebook:
        tags["mlflow.source.name"] = spec.notebook
    if spec.image:
        tags["jmk.image"] = spec.image
    if spec.run_name:
        tags["mlflow.runName"] = spec.run_name
    return {**tags, **spec.tags}


def git_tags(workdir: str | None) -> dict[str, str]:
    """The commit of the notebook's git checkout and whether its tree has changes."""
    import shutil
    import subprocess

    executable = shutil.which("git")
    if executable is None:
        return {}

    def git(*args: str) -> str:
        return subprocess.run(
            [executable, *args], cwd=workdir or None, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}  # not a git checkout, or no git
    return {"mlflow.source.git.commit": commit, "jmk.git.dirty": str(dirty).lower()}


def scalar_params(values: Mapping[str, Any]) -> dict[str, str]:
    """Inputs worth recording as params: numbers, booleans and short strings."""
    return {
        name: str(value)
        for name, value in values.items()
        if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 250)
    }


def run_params(spec: JobSpec, scalars: Mapping[str, str] | None = None) -> dict[str, str]:
    """Params recorded for a run: scalar inputs, the ``--param``s, the flags asked for."""
    params = dict(scalars or {})
    params.update({key: str(value) for key, value in spec.params.items()})
    res = spec.resources
    flags = {"jmk.gpus": str(res.gpus), "jmk.cpu": res.cpu, "jmk.memory": res.memory, "jmk.timeout": spec.timeout}
    if spec.distributed:
        flags.update({"jmk.nodes": spec.nodes, "jmk.procs": spec.procs_per_node, "jmk.world_size": spec.world_size})
    params.update({k: str(v) for k, v in flags.items() if v not in (None, "")})
    return params


def start_run(
    tracking_uri: str,
    artifact_root: str | None,
    job_id: str,
    spec: JobSpec,
    inputs: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """Open the job's run (status RUNNING); returns ``(experiment_id, run_id)``.

    MLflow's errors arrive as the package's families (a server that does not answer: unavailable).
    """
    from mlflow.entities import Param

    mlflow_client = client(tracking_uri)
    key = (tracking_uri, experiment_name(spec))
    if key not in _experiment_ids:
        _experiment_ids[key] = ensure_experiment(tracking_uri, key[1], artifact_root)
    experiment_id = _experiment_ids[key]
    tags = {**run_tags(job_id, spec), **git_tags(spec.workdir)}
    with mlflow_errors(tracking_uri):
        run = mlflow_client.create_run(experiment_id, tags=tags, run_name=spec.run_name)
        params = [Param(k, v) for k, v in run_params(spec, scalar_params(inputs or {})).items()]
        if params:
            mlflow_client.log_batch(run.info.run_id, params=params)
    return experiment_id, run.info.run_id


def close_run(
    record: JobRecord, done: Collection[str] = (), on_done: Callable[[str], object] = lambda step: None
) -> None:
    """Close the job's run: its kept metric points, its artifacts (cell, inputs, log), then its status.

    Each of :data:`CLOSE_STEPS` not in ``done`` runs in order, and ``on_done(step)`` is called as
    soon as it has been sent, so that a step is never sent twice. A tracking server that does not
    answer raises :class:`UnavailableError` (``"tracking server unreachable: ..."``) after one quick
    probe, not after MLflow's retries; what is left is then the caller's to keep as pending.
    """
    if not record.run_id or not record.tracking_uri:
        return
    uri = record.tracking_uri
    reason = bounds.unreachable(uri)
    if reason:
        raise UnavailableError(f"tracking server unreachable: {uri} ({reason})")
    steps = {"metrics": _send_kept_metrics, "artifacts": _store_artifacts, "status": _set_status}
    try:
        for step in CLOSE_STEPS:
            if step not in done:
                steps[step](client(uri), record)
                on_done(step)
    except Exception as exc:
        bounds.forget(uri)
        family = translated(exc, uri)
        if isinstance(family, UnavailableError):
            raise UnavailableError(f"tracking server unreachable: {uri} ({_first_line(exc)})") from exc
        raise


def annotate_run(
    tracking_uri: str,
    run_id: str,
    tags: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    status: str | None = None,
) -> None:
    """Put tags and metrics on a run, and end it with ``status`` (``FINISHED``, ``FAILED``, ``KILLED``) if given.

    A sweep's parent run is not a job: its controller opens it, tags its best trial, and closes it.
    """
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    with mlflow_errors(tracking_uri):
        mlflow_client = client(tracking_uri)
        mlflow_client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )
        if status:
            mlflow_client.set_terminated(run_id, status=status, end_time=now)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def kept_metrics_url(record: JobRecord) -> str | None:
    """Where the runner keeps the metric points MLflow did not take (next to the job's payload)."""
    uri = str(record.payload_uri or "")
    return uri[: -len("payload.json")] + KEPT_METRICS if uri.endswith("/payload.json") else None


def _send_kept_metrics(mlflow_client: Any, record: JobRecord) -> None:
    import json

    from mlflow.entities import Metric

    from ..storage import read_url

    url = kept_metrics_url(record)
    try:
        points = json.loads(read_url(url)) if url else []
    except (OSError, ValueError):
        return  # none kept (the usual case)
    metrics = [Metric(p["key"], float(p["value"]), int(p["timestamp"]), int(p["step"])) for p in points]
    with mlflow_errors(record.tracking_uri):
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            mlflow_client.log_batch(record.run_id, metrics=metrics[start : start + 1000])


def _store_artifacts(mlflow_client: Any, record: JobRecord) -> None:
    try:
        with mlflow_errors(record.tracking_uri):
            mlflow_client.log_text(record.run_id, record.spec.code, "jmk/cell.py")
            manifest = _input_manifest(record)
            if manifest is not None:
                mlflow_client.log_dict(record.run_id, manifest, "jmk/inputs.json")
            if record.log_path and Path(record.log_path).exists() and Path(record.log_path).stat().st_size:
                mlflow_client.log_artifact(record.run_id, record.log_path, artifact_path="jmk")
    except UnavailableError:
        raise  # sent later
    except Exception as exc:  # refused for good (permissions, say): the log is still kept with the job
        print(f"[jmk] could not store the artifacts of job {record.job_id} in MLflow: {exc}")


def _set_status(mlflow_client: Any, record: JobRecord) -> None:
    end = int((record.finished or time.time()) * 1000)
    for attempt in range(SET_TERMINATED_ATTEMPTS):
        try:
            with mlflow_errors(record.tracking_uri):
                mlflow_client.set_terminated(record.run_id, status=record.state.mlflow_status, end_time=end)
            return
        except UnavailableError:
            raise  # kept as pending by the caller; retrying here would only hold it
        except Exception:  # SQLite says "database is locked" while other processes write
            if attempt == SET_TERMINATED_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def _input_manifest(record: JobRecord) -> dict[str, Any] | None:
    """Name, type, size and hash of every input, from the staged payload."""
    if not record.payload_uri:
        return None
    import json

    from ..storage import read_url

    try:
        payload = json.loads(read_url(record.payload_uri))
    except (OSError, ValueError):
        return None
    fields = ("name", "type", "size", "sha256")
    return {"inputs": [{f: entry[f] for f in fields} for entry in payload["inputs"]], "params": payload["params"]}


def live_metrics(
    tracking_uri: str, run_id: str, plotted: int = 3
) -> tuple[dict[str, float], dict[str, list[tuple[float, float]]]]:
    """A run's latest metric values, and the history of the first ``plotted`` (not ``system/``)."""
    latest = dict(sorted(get_run(tracking_uri, run_id).data.metrics.items()))
    keys = [k for k in latest if not k.startswith("system/")][:plotted]
    history = {k: [(float(m.step), float(m.value)) for m in metric_history(tracking_uri, run_id, k)] for k in keys}
    return latest, history


def run_url(record: JobRecord) -> str:
    """Where a user finds the run: the MLflow UI link for a server, else URI and run id."""
    uri = record.tracking_uri or ""
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{record.experiment_id}/runs/{record.run_id}"
    return f"run {record.run_id} in {uri}"


__all__ = [
    "annotate_run", "CLOSE_STEPS", "DEFAULT_EXPERIMENT", "KEPT_METRICS", "ModelRef", "RunWriter", "URI_FORMS", "bounds",
    "check_alias", "check_reachable", "client", "close_run", "ensure_experiment", "experiment_by_id",
    "experiment_by_name", "experiment_name", "experiment_names", "experiments", "get_run", "git_tags",
    "kept_metrics_url", "list_artifacts", "live_metrics", "metric_history", "mlflow_errors", "model_registry",
    "parse_model_uri", "run_params", "run_tags", "run_url", "scalar_params", "search_runs", "start_run",
    "translated",
]
