"""What the sidebar's REST API does, as blocking calls: one object per server, shared by the handlers.

Owns the server's JobService, the endpoint targets (a local one per call; a Kubernetes one sharing
the job service's backend, asked only when a cluster is configured) and the MetricsTracker that
remembers each endpoint's previous scrape. Every method blocks (files, processes, MLflow, HTTP to the
endpoints), so handlers run them in the API's thread pool, never on the event loop. Returns the
wire shapes of ``shapes.py``; raises the package's errors, which ``handlers.py`` maps to statuses.
"""

from __future__ import annotations

import codecs
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..backends.base import BUILTIN_BACKENDS, backends
from ..config import JMKSettings
from ..errors import JMKError
from ..jobs import JobService
from ..models import JobRecord
from ..serving.manager import ServingManager
from ..serving.targets import EndpointSummary, EndpointTarget, get_target
from ..serving.targets.listing import list_all
from ..serving.targets.local import LocalTarget, summary
from ..tracking.store import import_mlflow
from ..version import __version__
from . import shapes
from .metrics_client import MetricsTracker, ScrapeError
from .resources import ResourceReader
from .shapes import Conflict, NotFound, check_job_id


def redact(uri: str) -> str:
    """``uri`` without a user name or password (``http://u:p@host`` -> ``http://host``)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.username and not parts.password:
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _builtins_first(name: str) -> tuple[int, str]:
    order = list(BUILTIN_BACKENDS)
    return (order.index(name) if name in order else len(order), name)


class SidebarService:
    """The blocking side of ``/jmk/api``."""

    def __init__(self, settings: JMKSettings, mlflow_ui_url: str | None = None, backend_config: Any = None,
                 threads: int = 16, metrics_timeout: float = 2.0, kubernetes_timeout: float = 5.0,
                 resources_cache_seconds: float = 3.0) -> None:
        self.settings = settings
        self.mlflow_ui_url = mlflow_ui_url
        self.backend_config = backend_config
        self.kubernetes_timeout = kubernetes_timeout
        self._kubernetes: EndpointTarget | None = None
        self.jobs = JobService(settings, backend_config=backend_config)
        self.tracker = MetricsTracker(timeout=metrics_timeout)
        self.resources = ResourceReader(lambda: self.tracking_uri, ttl=resources_cache_seconds)
        # Long-lived work (log streams) uses threads of its own; this pool is for request-sized calls.
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jmk-api")

    def close(self) -> None:
        """Stop the thread pool (running calls finish)."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI the API reads."""
        return self.settings.tracking_uri

    def status(self) -> dict[str, Any]:
        """Version, tracking URI (without credentials), MLflow UI link and state directory."""
        return {
            "version": __version__,
            "tracking_uri": redact(self.tracking_uri),
            "mlflow_ui_url": self.mlflow_ui_url,
            "state_dir": str(self.settings.state_dir),
        }

    def triggers(self, recent: int = 10) -> dict[str, Any]:
        """The pipeline triggers of this state directory: last check, last fire, next eligible time, recent runs."""
        from ..pipelines.triggers import read_history
        from ..pipelines.triggers.status import trigger_rows

        rows = trigger_rows(self.settings)
        return {"triggers": [shapes.trigger(row, read_history(row["trigger"].name, self.settings, limit=recent))
                             for row in rows]}

    def presets(self) -> dict[str, Any]:
        """What the launch form offers: the configured presets (each with its problem), the backends, the default.

        From the server's own config (``c.KubernetesBackend.presets``), so no backend is built and no
        cluster is asked. Built-in backends first, as the kernel's form lists them; ``pipeline`` is the
        pipelines' internal backend, not one a cell is sent to.
        """
        from ..k8s.presets import configured_presets, preset_summaries  # the k8s package: only when asked

        return {
            "presets": preset_summaries(configured_presets(self.backend_config)),
            "backends": [name for name in sorted(backends.names(), key=_builtins_first) if name != "pipeline"],
            "default_backend": self.settings.default_backend,
        }

    # -- jobs ----------------------------------------------------------------------------------

    def record(self, job_id: str) -> JobRecord:
        """The current record of a job."""
        return self.jobs.get(check_job_id(job_id))

    def list_jobs(self, limit: int) -> dict[str, Any]:
        """The newest ``limit`` jobs, each running one with its last known GPU use (never waiting on MLflow)."""
        return {"jobs": [{**shapes.job(r), "gpu_percent": self.resources.gpu_percent(r, self.executor)}
                         for r in self.jobs.list()[:limit]]}

    def job_resources(self, job_id: str) -> dict[str, Any]:
        """What the job uses (CPU, memory, GPUs) from its run's system metrics; a message when there are none."""
        return self.resources.read(self.record(job_id))

    def job(self, job_id: str) -> dict[str, Any]:
        """One job with its code, resources and log size."""
        record = self.record(job_id)
        return shapes.job_detail(record, self._log_size(record))

    def _log_size(self, record: JobRecord) -> int:
        path = Path(record.log_path) if record.log_path else None
        if path is not None and path.exists():
            return path.stat().st_size
        return len(self.jobs.backend(record.spec.backend).read_log(record))

    def log_tail(self, job_id: str, tail: int) -> dict[str, Any]:
        """The last ``tail`` bytes of a job's log, starting at a line when cut; ``offset`` is where it ends."""
        record = self.record(job_id)
        backend = self.jobs.backend(record.spec.backend)
        path = Path(record.log_path) if record.log_path else None
        if path is not None and path.exists():
            start = max(0, path.stat().st_size - tail)
            data = backend.read_log(record, start)
        else:
            whole = backend.read_log(record)
            start = max(0, len(whole) - tail)
            data = whole[start:]
        end = start + len(data)
        truncated = start > 0
        if truncated:
            newline = data.find(b"\n")
            if 0 <= newline < len(data) - 1:
                data = data[newline + 1:]  # begin at a whole line (and never inside a UTF-8 character)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(data)  # a character the job has not finished writing is left for the stream
        return {"text": text, "offset": end - len(decoder.getstate()[0]), "truncated": truncated}

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask a running job to stop; :class:`Conflict` when it has already ended."""
        record = self.record(job_id)
        if record.state.terminal:
            raise Conflict(f"Job {record.job_id} has already ended ({record.state.value}); there is nothing to cancel.")
        self.jobs.cancel(record.job_id)
        return shapes.job(self.jobs.get(record.job_id))

    # -- runs and models (MLflow) ------------------------------------------------------------

    def search_runs(self, filter_string: str, order_by: list[str], experiment_ids: list[str],
                    page_token: str | None, max_results: int) -> dict[str, Any]:
        """One page of runs."""
        import_mlflow()
        return shapes.search_runs(self.tracking_uri, filter_string, order_by, experiment_ids, page_token,
                                  max_results)

    def run(self, run_id: str) -> dict[str, Any]:
        """One run in full."""
        import_mlflow()
        return shapes.run_detail(self.tracking_uri, run_id)

    def metric_history(self, run_id: str, key: str) -> dict[str, Any]:
        """One metric's history."""
        import_mlflow()
        return shapes.metric_history(self.tracking_uri, run_id, key)

    def artifacts(self, run_id: str, path: str) -> dict[str, Any]:
        """A run's artifacts under ``path``."""
        import_mlflow()
        return shapes.list_artifacts(self.tracking_uri, run_id, path)

    def models(self) -> dict[str, Any]:
        """The registered models."""
        import_mlflow()
        return shapes.list_models(self.tracking_uri)

    def versions(self, name: str) -> dict[str, Any]:
        """A model's versions."""
        import_mlflow()
        return shapes.list_versions(self.tracking_uri, name)

    def set_alias(self, name: str, alias: str, version: str) -> dict[str, Any]:
        """Point an alias at a version."""
        import_mlflow()
        return shapes.set_alias(self.tracking_uri, name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias."""
        import_mlflow()
        shapes.delete_alias(self.tracking_uri, name, alias)

    # -- serving endpoints -------------------------------------------------------------------

    def _targets(self) -> list[EndpointTarget]:
        """The local target, and the Kubernetes one (sharing the job service's backend) when a cluster is configured."""
        local = LocalTarget(self.settings, manager=ServingManager(self.settings))
        if self._kubernetes is None:
            self._kubernetes = get_target("kubernetes", self.settings, self.backend_config, jobs=self.jobs,
                                          timeout=self.kubernetes_timeout)
        return [local, self._kubernetes]

    def _listing(self) -> tuple[list[EndpointSummary], dict[str, str]]:
        """Every endpoint, a Kubernetes one named ``NAME.NAMESPACE`` when a local one has its name."""
        listing = list_all(self._targets())
        local = {e.name for e in listing.endpoints if e.backend == "local"}
        endpoints = [replace(e, name=f"{e.name}.{e.namespace}") if e.backend != "local" and e.name in local else e
                     for e in listing.endpoints]
        return endpoints, listing.unreachable

    def endpoints(self) -> dict[str, Any]:
        """The serving endpoints: local ones newest first, then Kubernetes ones (when a cluster is configured).

        ``unreachable`` names each target that did not answer (the API server down), with why.
        """
        endpoints, unreachable = self._listing()
        return {"endpoints": [shapes.endpoint(e) for e in endpoints],
                "unreachable": [{"backend": name, "message": why} for name, why in unreachable.items()]}

    def running_endpoint(self, name: str) -> EndpointSummary:
        """The endpoint ``name``; :class:`NotFound` if unknown, :class:`Conflict` if not running."""
        found: EndpointSummary | None
        try:
            found = summary(ServingManager(self.settings).get(name))
        except LookupError as exc:
            found = self._kubernetes_endpoint(name)
            if found is None:
                raise NotFound(str(exc)) from exc
        if not found.running:
            if found.backend == "local":
                raise Conflict(f"Endpoint {name!r} is {found.status}: it has no live metrics. Start it again with "
                               f"`jmk serve {found.model_uri} --name {name}`.")
            raise Conflict(f"Endpoint {name!r} is {found.status} ({found.replicas} replicas available): it has no "
                           "live metrics until a replica is ready.")
        return found

    def _kubernetes_endpoint(self, name: str) -> EndpointSummary | None:
        """A Kubernetes endpoint by its listed name (``NAME`` or ``NAME.NAMESPACE``), if a cluster lists it.

        An API server that does not answer is a :class:`ScrapeError` (a 502: a metrics stream goes on
        and tries again), not a 404 that would end it.
        """
        kubernetes = self._targets()[1]
        if not kubernetes.configured:
            return None
        try:
            endpoints = kubernetes.list()
        except JMKError as exc:
            raise ScrapeError(f"Kubernetes endpoints cannot be listed: {exc}") from exc
        return next((e for e in endpoints if name in (e.name, f"{e.name}.{e.namespace}")), None)

    def endpoint_metrics(self, name: str, max_age: float = 0.0) -> dict[str, Any]:
        """A Snapshot of a running endpoint, against the previous scrape of it (or one up to ``max_age`` s old)."""
        found = self.running_endpoint(name)
        if found.backend == "local":
            return self.tracker.snapshot(found.name, found.url, found.identity, started=found.started,
                                         max_age=max_age)
        kubernetes = self._targets()[1]

        def read() -> str:
            try:
                return kubernetes.metrics_text(found.name, self.tracker.timeout)
            except JMKError as exc:
                raise ScrapeError(str(exc)) from exc

        return self.tracker.snapshot(f"{found.name}.{found.namespace}", found.url, found.identity, max_age=max_age,
                                     read=read)
