"""The REST API's wire shapes (openapi.yaml) and the blocking reads that fill them.

Owns: Job, RunRow, model and version dicts, built from job records and MLflow entities, and the
reads behind ``/jmk/api/runs`` and ``/jmk/api/models``, all through the tracking facade (never
MLflow's client). Everything here blocks (files, MLflow): handlers call it from worker threads,
never on the event loop. No tornado here.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath
from typing import Any

from .. import tracking
from ..errors import ConflictError, NotFoundError
from ..exceptions import JMKUsageError
from ..models import JobRecord
from ..tracking import experiment_name, model_registry

#: Tags a RunRow carries (the detail view carries all of them).
ROW_TAGS = ("mlflow.runName",)
ROW_TAG_PREFIX = "jmk."
ROW_PARAMS = 10
MAX_RESULTS = 50_000  # MLflow's own ceiling for one search page
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


# The families under the names the REST service and handlers import (404 and 409).
NotFound = NotFoundError
Conflict = ConflictError


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def _seconds(millis: int | None) -> float | None:
    return None if millis is None else millis / 1000.0


# -- jobs ------------------------------------------------------------------------------------------


def check_job_id(job_id: str) -> str:
    """``job_id`` if it can name a job folder; :class:`NotFound` otherwise (no path tricks)."""
    if not _JOB_ID.match(job_id or "") or ".." in job_id or len(job_id) > 64:
        raise NotFound(f"No job {job_id!r}. GET /jmk/api/jobs lists the jobs.")
    return job_id


def job_name(record: JobRecord) -> str:
    """The run name, else the first line of code that says something."""
    if record.spec.run_name:
        return record.spec.run_name
    for line in record.spec.code.splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            return text[:120]
    return record.job_id


def job(record: JobRecord) -> dict[str, Any]:
    """A Job, as listed."""
    return {
        "id": record.job_id,
        "state": record.state.value,
        "backend": record.spec.backend,
        "name": job_name(record),
        "experiment": experiment_name(record.spec),
        "created": record.created,
        "started": record.started,
        "finished": record.finished,
        "run_id": record.run_id,
        "experiment_id": record.experiment_id,
        "gpus": record.spec.resources.gpus,
        "message": record.message,
        "notes": record.notes,
        "exit_code": record.exit_code,
    }


def job_detail(record: JobRecord, log_size: int) -> dict[str, Any]:
    """A Job with its code, resources and the size of its log so far."""
    resources = record.spec.resources
    return {
        **job(record),
        "code": record.spec.code,
        "resources": {"cpu": resources.cpu, "memory": resources.memory, "gpus": resources.gpus},
        "gpu_ids": list(record.gpu_ids),
        "params": dict(record.spec.params),
        "tags": dict(record.spec.tags),
        "image": record.spec.image,
        "notebook": record.spec.notebook,
        "tracking_uri": record.tracking_uri,
        "log_size": log_size,
    }


# -- runs ------------------------------------------------------------------------------------------


def run_row(run: Any, experiment_names: dict[str, str]) -> dict[str, Any]:
    """A RunRow: latest metrics, the first params, and the jmk.* and run-name tags."""
    info, data = run.info, run.data
    params = dict(sorted(data.params.items())[:ROW_PARAMS])
    tags = {k: v for k, v in data.tags.items() if k in ROW_TAGS or k.startswith(ROW_TAG_PREFIX)}
    return {
        "run_id": info.run_id,
        "run_name": info.run_name or data.tags.get("mlflow.runName") or "",
        "experiment_id": info.experiment_id,
        "experiment_name": experiment_names.get(info.experiment_id, info.experiment_id),
        "status": info.status,
        "start_time": _seconds(info.start_time),
        "end_time": _seconds(info.end_time),
        "user": info.user_id or "",
        "metrics": finite(dict(sorted(data.metrics.items()))),
        "params": params,
        "tags": tags,
    }


def search_runs(tracking_uri: str, filter_string: str, order_by: list[str], experiment_ids: list[str],
                page_token: str | None, max_results: int) -> dict[str, Any]:
    """One page of runs across ``experiment_ids`` (every active experiment when empty)."""
    names = tracking.experiment_names(tracking_uri)
    unknown = [e for e in experiment_ids if e not in names]
    if unknown:
        raise NotFound(f"No experiment with id {', '.join(unknown)}. Known ids: {', '.join(sorted(names)) or 'none'}.")
    ids = experiment_ids or [e.experiment_id for e in tracking.experiments(tracking_uri)]
    if not ids:
        return {"runs": [], "next_page_token": None, "total": 0}
    found, next_token = tracking.search_runs(tracking_uri, ids, filter_string, order_by or None, max_results,
                                             page_token)
    runs = [run_row(run, names) for run in found]
    # MLflow does not count matches; the total is known only when one page holds them all.
    total = len(runs) if not page_token and not next_token else None
    return {"runs": runs, "next_page_token": next_token, "total": total}


def run_detail(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """A RunRow with every param and tag, and the keys of its metrics."""
    run = tracking.get_run(tracking_uri, run_id)
    experiment = tracking.experiment_by_id(tracking_uri, run.info.experiment_id)
    names = {experiment.experiment_id: experiment.name} if experiment is not None else {}
    row = run_row(run, names)
    row.update(params=dict(sorted(run.data.params.items())), tags=dict(sorted(run.data.tags.items())),
               metric_keys=sorted(run.data.metrics))
    return row


def metric_history(tracking_uri: str, run_id: str, key: str) -> dict[str, Any]:
    """Every logged value of one metric of a run, by step then time."""
    run = tracking.get_run(tracking_uri, run_id)
    if key not in run.data.metrics:
        known = ", ".join(sorted(run.data.metrics)) or "none"
        raise NotFound(f"Run {run_id} has no metric {key!r}. Its metrics: {known}.")
    points = sorted(tracking.metric_history(tracking_uri, run_id, key), key=lambda m: (m.step, m.timestamp))
    history = [{"step": m.step, "value": m.value, "timestamp": _seconds(m.timestamp)} for m in points]
    return {"key": key, "history": finite(history)}


def check_artifact_path(path: str) -> str:
    """A relative artifact path without ``..``; :class:`JMKUsageError` otherwise."""
    if path.startswith("/") or ".." in PurePosixPath(path).parts or "\\" in path:
        raise JMKUsageError(f"Artifact path {path!r} must be relative to the run's artifacts, without '..'.")
    return path.strip("/")


def list_artifacts(tracking_uri: str, run_id: str, path: str) -> dict[str, Any]:
    """The files and folders directly under ``path`` in a run's artifacts."""
    files = tracking.list_artifacts(tracking_uri, run_id, check_artifact_path(path) or None)
    return {"files": [{"path": f.path, "is_dir": f.is_dir, "file_size": f.file_size} for f in files]}


# -- registry --------------------------------------------------------------------------------------


def _aliases_by_version(model: Any) -> dict[str, list[str]]:
    """``{version: [alias, ...]}`` from a registered model (searches leave versions' aliases empty)."""
    found: dict[str, list[str]] = {}
    for alias, version in sorted((model.aliases or {}).items()):
        found.setdefault(str(version), []).append(alias)
    return found


def _version(version: Any, aliases: dict[str, list[str]] | None = None) -> dict[str, Any]:
    own = list(getattr(version, "aliases", []) or [])
    return {
        "version": str(version.version),
        "run_id": version.run_id,
        "status": version.status,
        "creation_timestamp": _seconds(version.creation_timestamp),
        "last_updated_timestamp": _seconds(version.last_updated_timestamp),
        "aliases": sorted(set(own) | set((aliases or {}).get(str(version.version), []))),
        "tags": dict(version.tags or {}),
        "source": version.source,
        "description": version.description or "",
    }


def list_models(tracking_uri: str) -> dict[str, Any]:
    """Every registered model with its latest versions, aliases and tags."""
    models = []
    for model in model_registry.registered_models(tracking_uri):
        models.append({
            "name": model.name,
            "description": model.description or "",
            "latest_versions": [_version(v, _aliases_by_version(model)) for v in model.latest_versions or []],
            "aliases": {alias: str(version) for alias, version in sorted((model.aliases or {}).items())},
            "tags": dict(model.tags or {}),
            "last_updated_timestamp": _seconds(model.last_updated_timestamp),
        })
    return {"models": sorted(models, key=lambda m: m["name"].lower())}


def list_versions(tracking_uri: str, name: str) -> dict[str, Any]:
    """Every version of a registered model, newest first."""
    aliases = _aliases_by_version(model_registry.registered_model(tracking_uri, name))  # 404 for an unknown model
    found = model_registry.model_versions(tracking_uri, name)
    versions = sorted((_version(v, aliases) for v in found), key=lambda v: int(v["version"]), reverse=True)
    return {"versions": versions}


def parse_version(body: Any) -> str:
    """The version number of a set-alias body ``{"version": "3"}`` (or 3)."""
    version = body.get("version") if isinstance(body, dict) else None
    text = str(version).strip() if isinstance(version, (str, int)) and not isinstance(version, bool) else ""
    if not (text.isascii() and text.isdigit() and len(text) <= 18):  # "²" is a digit to isdigit(), not to int()
        raise JMKUsageError('The body must be JSON like {"version": "3"}: the model version the alias points to.')
    return str(int(text))


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> dict[str, Any]:
    """Point ``alias`` of model ``name`` at ``version`` (404 for an unknown model or version)."""
    model_registry.set_alias(tracking_uri, name, alias, version)
    return {"name": name, "alias": alias, "version": version}


def delete_alias(tracking_uri: str, name: str, alias: str) -> None:
    """Remove ``alias`` from model ``name``; :class:`NotFound` when it has no such alias."""
    model_registry.delete_alias(tracking_uri, name, alias)


# -- endpoints -------------------------------------------------------------------------------------


def endpoint(found: Any) -> dict[str, Any]:
    """An Endpoint of any target (an ``EndpointSummary``, or a local ``Endpoint`` record); ``started`` may be None."""
    return {
        "name": found.name,
        "model_uri": found.model_uri,
        "url": found.url,
        "status": found.status,
        "pid": found.pid,
        "started": found.started,
        "stopped": found.stopped,
        "backend": found.backend,
        "flags": dict(found.flags),
    }


def _epoch(moment: Any) -> float | None:
    return None if moment is None else float(moment.timestamp())


def trigger(row: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """A Trigger: a row of ``pipelines.triggers.status.trigger_rows`` and its recent history (times: epoch seconds)."""
    found, cursor = row["trigger"], row["cursor"]
    return {
        "name": found.name,
        "kind": found.kind,
        "mode": found.mode,
        "pipeline": found.pipeline,
        "condition": found.condition,
        "cooldown": found.cooldown,
        "state": row["state"],
        "last_check": _epoch(cursor.last_check),
        "last_fire": _epoch(cursor.last_fire),
        "next_eligible": _epoch(row["next_eligible"]),
        "last_run_id": cursor.last_run_id,
        "last_error": cursor.last_error,
        "last_value": cursor.last_value,
        "pending": len(cursor.pending),
        "recent": [
            {"time": entry.get("time"), "event": entry.get("event"), "run_id": entry.get("run_id"),
             "exit": entry.get("exit"), "objects": len(entry.get("objects") or []), "psi": entry.get("psi")}
            for entry in reversed(history)
        ],
    }
