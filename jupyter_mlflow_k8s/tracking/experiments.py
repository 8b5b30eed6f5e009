"""Reading experiments and runs, for ``%runs`` and the sidebar; writing the runs of a pipeline.

Functions return MLflow's own entities (``Experiment``, ``Run``, ``Metric``, ``FileInfo``),
read-only. An unknown run is a :class:`~jupyter_mlflow_k8s.errors.NotFoundError`, a malformed
filter or page token a usage error with MLflow's words, a tracking server that does not answer an
:class:`~jupyter_mlflow_k8s.errors.UnavailableError`. :class:`RunWriter` is what the pipeline
engine records its parent and child runs with; a job's own run is opened and closed by the
package's ``start_run``/``close_run``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import NotFoundError
from .store import client, mlflow_errors, pages

# -- experiments -----------------------------------------------------------------------------------


def experiments(tracking_uri: str | None, active_only: bool = True) -> list[Any]:
    """Every active experiment (every one, deleted included, with ``active_only=False``)."""
    from mlflow.entities import ViewType

    view = ViewType.ACTIVE_ONLY if active_only else ViewType.ALL
    mlflow_client = client(tracking_uri)
    with mlflow_errors(tracking_uri):
        return list(pages(mlflow_client.search_experiments, view_type=view, max_results=1000))


def experiment_names(tracking_uri: str | None) -> dict[str, str]:
    """Every experiment's name by id, deleted ones included (their runs can still be asked for)."""
    return {e.experiment_id: e.name for e in experiments(tracking_uri, active_only=False)}


def experiment_by_name(tracking_uri: str | None, name: str) -> Any | None:
    """Experiment ``name`` (active or deleted), or ``None``."""
    mlflow_client = client(tracking_uri)
    with mlflow_errors(tracking_uri):
        return mlflow_client.get_experiment_by_name(name)


def experiment_by_id(tracking_uri: str | None, experiment_id: str) -> Any | None:
    """Experiment ``experiment_id``, or ``None``."""
    mlflow_client = client(tracking_uri)
    try:
        with mlflow_errors(tracking_uri):
            return mlflow_client.get_experiment(experiment_id)
    except NotFoundError:
        return None


def ensure_experiment(tracking_uri: str | None, name: str, artifact_root: str | None) -> str:
    """The id of experiment ``name``, created (with artifacts under ``artifact_root``) if new."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    with mlflow_errors(tracking_uri):
        found = mlflow_client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "experiment"
        location = f"{artifact_root.rstrip('/')}/{slug}" if artifact_root else None
        try:
            return str(mlflow_client.create_experiment(name, artifact_location=location))
        except MlflowException:  # created meanwhile by another process
            found = mlflow_client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)


# -- runs ------------------------------------------------------------------------------------------


def search_runs(tracking_uri: str | None, experiment_ids: list[str], filter_string: str = "",
                order_by: list[str] | None = None, max_results: int = 1000,
                page_token: str | None = None) -> tuple[list[Any], str | None]:
    """One page of the active runs of ``experiment_ids``: ``(runs, next page token or None)``."""
    from mlflow.entities import ViewType

    mlflow_client = client(tracking_uri)
    with mlflow_errors(tracking_uri):
        page = mlflow_client.search_runs(
            experiment_ids=experiment_ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
            max_results=max_results, order_by=order_by or None, page_token=page_token,
        )
    token = page.token or None
    if isinstance(token, bytes):  # the SQL store's tokens are base64 bytes
        token = token.decode()
    return list(page), token


def get_run(tracking_uri: str | None, run_id: str) -> Any:
    """Run ``run_id``; :class:`NotFoundError` if there is none."""
    mlflow_client = client(tracking_uri)
    try:
        with mlflow_errors(tracking_uri):
            return mlflow_client.get_run(run_id)
    except NotFoundError:
        pass  # said below
    raise NotFoundError(f"No MLflow run {run_id!r} in {tracking_uri or 'the tracking store'}. "
                        "%runs (or GET /jmk/api/runs) lists the runs.") from None


def metric_history(tracking_uri: str | None, run_id: str, key: str) -> list[Any]:
    """Every logged value of metric ``key`` of a run (MLflow's order)."""
    mlflow_client = client(tracking_uri)
    with mlflow_errors(tracking_uri):
        return list(mlflow_client.get_metric_history(run_id, key))


def list_artifacts(tracking_uri: str | None, run_id: str, path: str | None) -> list[Any]:
    """The files and folders directly under ``path`` in a run's artifacts (an unknown run is a NotFoundError)."""
    get_run(tracking_uri, run_id)
    with mlflow_errors(tracking_uri):
        return list(client(tracking_uri).list_artifacts(run_id, path))


# -- writing runs ----------------------------------------------------------------------------------


class RunWriter:
    """Creates, annotates and closes runs on one tracking URI (the pipeline engine's parent and child runs)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client = client(tracking_uri)

    def experiment(self, name: str, artifact_root: str | None) -> str:
        """The id of experiment ``name``, created if new."""
        return ensure_experiment(self.tracking_uri, name, artifact_root)

    def create_run(self, experiment_id: str, run_name: str, start_time: int, tags: Mapping[str, str]) -> str:
        """A new RUNNING run; returns its id."""
        with mlflow_errors(self.tracking_uri):
            run = self._client.create_run(experiment_id, run_name=run_name, start_time=start_time, tags=dict(tags))
        return str(run.info.run_id)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set each tag, in order."""
        with mlflow_errors(self.tracking_uri):
            for key, value in tags.items():
                self._client.set_tag(run_id, key, value)

    def log_params(self, run_id: str, params: Mapping[str, Any], limit: int = 6000) -> None:
        """Log each param as text (cut at ``limit`` characters), in order."""
        with mlflow_errors(self.tracking_uri):
            for name, value in params.items():
                self._client.log_param(run_id, name, str(value)[:limit])

    def log_dict(self, run_id: str, data: Any, path: str) -> None:
        """Store ``data`` as a JSON artifact at ``path``."""
        with mlflow_errors(self.tracking_uri):
            self._client.log_dict(run_id, data, path)

    def log_artifact(self, run_id: str, local_path: str) -> None:
        """Store a local file with the run."""
        with mlflow_errors(self.tracking_uri):
            self._client.log_artifact(run_id, local_path)

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        """Log one metric value."""
        with mlflow_errors(self.tracking_uri):
            self._client.log_metric(run_id, key, value)

    def terminate(self, run_id: str, status: str, end_time: int) -> None:
        """Close the run with ``status`` (``FINISHED``, ``FAILED``, ``KILLED``)."""
        with mlflow_errors(self.tracking_uri):
            self._client.set_terminated(run_id, status=status, end_time=end_time)
