"""The backend extension point: an ABC that owns the job lifecycle, and the registry.

The base class does what every backend shares (checking a spec before anything is submitted,
following logs, recording the end of a job); subclasses fill in ``check``, ``launch``,
``cancel`` and ``refresh``. Backends are traitlets configurables, so
``c.LocalBackend.max_concurrent_jobs = 4`` in a config file reaches them.
"""

from __future__ import annotations

import time
from abc import ABCMeta, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

from traitlets import MetaHasTraits
from traitlets.config import LoggingConfigurable

from ..models import JobRecord, JobSpec
from ..records import JobStore
from ..registry import Registry

HEARTBEAT_SECONDS = 0.5


class _ConfigurableABCMeta(MetaHasTraits, ABCMeta):
    """Lets a traitlets configurable have abstract methods."""


class Backend(LoggingConfigurable, metaclass=_ConfigurableABCMeta):
    """Runs jobs somewhere and keeps their records current."""

    name: ClassVar[str] = ""

    def __init__(self, store: JobStore, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.store = store
        # Variables a job needs beyond the submitter's environment, e.g. storage credentials
        # configured in traitlets; never written into the job record.
        self.job_environment: dict[str, str] = {}

    # -- hooks ------------------------------------------------------------------------------

    @abstractmethod
    def check(self, spec: JobSpec) -> None:
        """Raise :class:`JMKUsageError` if this backend cannot run ``spec`` (before staging)."""

    def check_environment(self, storage_url: str, tracking_uri: str) -> None:
        """Raise :class:`JMKUsageError` if jobs could not reach the storage or tracking store."""

    def prepare(self, record: JobRecord) -> JobRecord:
        """Start what can start before the payload is staged and the MLflow run is open.

        Runs after every check has passed. The default does nothing; the local backend starts
        the job's supervisor here, so that its interpreter starts while the run is opened.
        """
        return record

    @abstractmethod
    def launch(self, record: JobRecord) -> JobRecord:
        """Start the job whose payload is staged; return the updated record."""

    @abstractmethod
    def cancel(self, record: JobRecord) -> None:
        """Ask the job to stop; its record ends CANCELLED."""

    def discover(self) -> list[JobRecord]:
        """Records for this user's jobs that run on the backend but have none here (a new notebook pod)."""
        return []

    def refresh(self, record: JobRecord) -> JobRecord:
        """Reconcile the record with reality (a vanished process, a deleted pod)."""
        return record

    # -- shared lifecycle -------------------------------------------------------------------

    def read_log(self, record: JobRecord, offset: int = 0) -> bytes:
        """Log bytes from ``offset`` on (empty when there are none yet)."""
        if not record.log_path:
            return b""
        try:
            with open(record.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read()
        except FileNotFoundError:
            return b""

    def follow_log(self, job_id: str, offset: int = 0, poll: float = 0.02) -> Iterator[bytes | JobRecord]:
        """Yield log chunks as they arrive, then the final record once the job has ended.

        While the job is quiet an empty chunk comes every half second, so that a caller can
        refresh what it shows (elapsed time, live metrics). Polls every ``poll`` seconds (a poll
        reads one small file and stats another: ~0.1 ms) and only slows to 0.25 s after 10 s
        without output; subclasses with a push stream (Kubernetes) override this.
        """
        quiet_since = last_yield = time.monotonic()
        while True:
            record = self.refresh(self.store.load(job_id))
            chunk = self.read_log(record, offset)
            now = time.monotonic()
            if chunk or now - last_yield >= HEARTBEAT_SECONDS:
                offset += len(chunk)
                if chunk:
                    quiet_since = now
                last_yield = now
                yield chunk
                continue
            if record.state.terminal:
                yield record
                return
            time.sleep(poll if now - quiet_since < 10 else 0.25)


# Built-ins by name: this module never imports its implementations (they import it).
BUILTIN_BACKENDS = {
    "local": "jupyter_mlflow_k8s.backends.local:LocalBackend",
    "kubernetes": "jupyter_mlflow_k8s.backends.kubernetes:KubernetesBackend",
    "pipeline": "jupyter_mlflow_k8s.backends.pipeline:PipelineStepBackend",
}
backends: Registry[type[Backend]] = Registry("backend", "jupyter_mlflow_k8s.backends", BUILTIN_BACKENDS)


def get_backend(name: str, store: JobStore, **kwargs: object) -> Backend:
    """An instance of the backend registered as ``name``."""
    return backends.get(name)(store, **kwargs)
