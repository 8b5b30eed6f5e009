"""The job service: submit, list, follow, cancel and collect jobs, whatever the backend.

Front doors (magics, CLI, REST handlers) call this and render; nothing here imports IPython.
Submission checks everything it can before anything starts: the backend can run the spec,
every input pickles. Then it opens the MLflow run, stages the payload and launches.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import tracking
from .backends.base import Backend, get_backend
from .config import JMKSettings, load_settings
from .errors import translate
from .exceptions import JMKUsageError, JobCancelled, JobFailed, JobNotFound
from .lifecycle import end_job, finalize_tracking
from .models import JobRecord, JobSpec, JobState
from .payload import Payload, ValueEntry, load_value, stage_inputs, write_payload
from .ranks import failed_rank, lines_of_rank, rank_prefix, rank_traceback
from .records import JobStore
from .storage import LocalStorage, Storage, get_storage
from .storage.kept import KEPT_FOLDER
from .tracking import system_metrics

_log = logging.getLogger(__name__)


@dataclass
class JobResult:
    """What a finished job gives back."""

    values: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    display: Any = None
    has_display: bool = False
    registered: dict[str, Any] | None = None
    warning: str | None = None  # why the values came from somewhere else than the job storage


class ResultsKeptWarning(UserWarning):
    """A job's results came back from where they were kept, not from the job storage."""


class RegistrationFailed(JobFailed):
    """The cell ran and its results are back, but its model was not registered."""

    result: JobResult | None = None


class JobService:
    """Jobs under one state directory, on any registered backend."""

    def __init__(self, settings: JMKSettings | None = None, backend_config: Any = None) -> None:
        self.settings = settings or load_settings()
        self.store = JobStore(self.settings.state_path)
        self._backend_config = backend_config
        self._backends: dict[str, Backend] = {}
        self._storage: Storage | None = None

    @property
    def storage(self) -> Storage:
        """Where payloads and results are staged."""
        if self._storage is None:
            self._storage = get_storage(self.settings.storage_url, **self.settings.storage_options)
        return self._storage

    def backend(self, name: str | None = None) -> Backend:
        """The backend instance for ``name`` (default: the configured one)."""
        name = name or self.settings.default_backend
        if name not in self._backends:
            kwargs = {"config": self._backend_config} if self._backend_config is not None else {}
            self._backends[name] = get_backend(name, self.store, **kwargs)
        return self._backends[name]

    # -- submit -------------------------------------------------------------------------------

    def submit(
        self, spec: JobSpec, values: Mapping[str, Any], staged: Sequence[ValueEntry] | None = None
    ) -> JobRecord:
        """Check, stage and launch one job; returns its record (QUEUED or later).

        ``staged``: inputs staged once already (the trials of a sweep share them); ``values`` then only
        gives the scalar inputs recorded as MLflow params.
        """
        backend = self.backend(spec.backend)
        backend.check(spec)
        backend.check_environment(self.storage.url, self.settings.tracking_uri)
        self.storage.check()
        backend.job_environment = self.storage.job_environment()
        tracking.check_reachable(self.settings.tracking_uri)
        record = self.store.create(spec)
        try:
            entries = list(staged) if staged is not None else stage_inputs(self.storage, values)
        except Exception:
            self._discard(record)  # nothing started: leave no trace but the error
            raise
        try:
            record = backend.prepare(record)  # e.g. a process that starts while the run is opened
            experiment_id, run_id = tracking.start_run(
                self.settings.tracking_uri, self._artifact_root(), record.job_id, spec, values
            )
            record = self.store.update(
                record.job_id, run_id=run_id, experiment_id=experiment_id, tracking_uri=self.settings.tracking_uri
            )
            tracking_env = {"MLFLOW_TRACKING_URI": self.settings.tracking_uri, "MLFLOW_RUN_ID": run_id,
                            **tracking.bounds.bounded_environment(),
                            **system_metrics.job_environment(self.settings.system_metrics_interval)}
            register = None
            if spec.register:
                register = {
                    "name": spec.register,
                    "model_var": spec.model_var or "",
                    "input_example": spec.input_example or "",
                }
            payload = Payload(
                record.job_id, spec.code, self.storage.url, entries, dict(spec.params), list(spec.outputs),
                tracking_env, register, list(spec.assigns),
            )
            result_uri = self.storage.url_of(payload.result_key)
            payload_uri = write_payload(self.storage, payload)
            record = self.store.update(record.job_id, payload_uri=payload_uri, result_uri=result_uri)
            return backend.launch(record)
        except Exception as exc:
            end_job(self.store, record.job_id, JobState.FAILED, f"could not start: {exc}")
            raise

    def _artifact_root(self) -> str | None:
        uri = self.settings.tracking_uri
        return self.settings.artifact_root if uri.startswith("sqlite:") else None

    def _discard(self, record: JobRecord) -> None:
        shutil.rmtree(self.store.job_dir(record.job_id), ignore_errors=True)

    # -- look -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        """The current record of a job (a unique id prefix is enough)."""
        try:
            record = self.store.load(job_id)
        except JobNotFound:
            if not self._discover(self.store.list()):
                raise
            record = self.store.load(job_id)
        return self._refreshed(record)

    def list(self) -> list[JobRecord]:
        """Every job, newest first, reconciled with its backend (found on the cluster too, by label).

        One job whose cluster or tracking server cannot be reached never fails the listing: it is
        listed as last known, with what could not be reached in its ``notes``.
        """
        records = self.store.list()
        if self._discover(records):
            records = self.store.list()
        return [self._refreshed(r) for r in records]

    def _refreshed(self, record: JobRecord) -> JobRecord:
        """The record reconciled with its backend, and its run's closing sent if it was left pending."""
        try:
            record = self.backend(record.spec.backend).refresh(record)
        except Exception as exc:  # the backend cannot be asked now: say so, list what is known
            family = translate(exc)
            if family is None:  # not a dependency's error: a bug, kept in the log with its traceback
                _log.warning("could not refresh job %s", record.job_id, exc_info=True)
            record.unreachable = f"{record.spec.backend} backend unreachable: {family or exc}"
            return record
        if record.state.terminal and not record.tracking_final and record.tracking_error:
            record = finalize_tracking(self.store, record, wait=False)  # sent now if the server answers
        return record

    def _discover(self, records: Sequence[JobRecord]) -> Sequence[JobRecord]:
        """Ask the cluster backend in use for jobs this state directory has no record of."""
        in_use = {self.settings.default_backend, *(r.spec.backend for r in records)}
        if "kubernetes" not in in_use:
            return []
        try:
            return self.backend("kubernetes").discover()
        except Exception as exc:  # no cluster configured or reachable: the records here still list
            self.backend("kubernetes").log.warning("could not look for jobs on the cluster: %s", exc)
            return []

    def read_log(self, job_id: str, rank: int | None = None) -> str:
        """The whole log so far; with ``rank``, only the lines that rank of a distributed job wrote."""
        record = self.get(job_id)
        if rank is not None:
            check_rank(record, rank)
        text = self.backend(record.spec.backend).read_log(record).decode(errors="replace")
        return text if rank is None else lines_of_rank(text, rank)

    def follow(self, job_id: str, offset: int = 0, rank: int | None = None) -> Iterator[bytes | JobRecord]:
        """Log chunks as they arrive (with ``rank``: that rank's lines), then the final record.

        Registers this process as the job's watcher.
        """
        record = self.get(job_id)
        if rank is not None:
            check_rank(record, rank)
        prefix, pending = rank_prefix(rank).encode() if rank is not None else b"", b""
        self.store.update(record.job_id, watcher_pid=os.getpid())
        try:
            for item in self.backend(record.spec.backend).follow_log(record.job_id, offset):
                if isinstance(item, JobRecord):
                    item = finalize_tracking(self.store, item)
                elif prefix:  # whole lines of the rank only; the rest of a line waits for its end
                    *lines, pending = (pending + item).split(b"\n")
                    item = b"".join(line[len(prefix):] + b"\n" for line in lines if line.startswith(prefix))
                yield item
        finally:
            self.store.update(record.job_id, watcher_pid=None)

    def watch(self, job_id: str) -> None:
        """Register this process as the job's watcher: it closes the job's run (:meth:`closed`) when it ends."""
        self.store.update(job_id, watcher_pid=os.getpid())

    def closed(self, record: JobRecord) -> JobRecord:
        """A terminal job with its MLflow run closed, by this process if no other has done it yet."""
        return finalize_tracking(self.store, record)

    # -- act ------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobRecord:
        """Ask a job to stop; returns its record (terminal jobs are left alone)."""
        record = self.get(job_id)
        if not record.state.terminal:
            self.backend(record.spec.backend).cancel(record)
        return record

    def cancel_and_wait(self, job_id: str, timeout: float = 30.0) -> JobRecord:
        """Stop a job and wait until it has ended and its MLflow run is closed (KILLED).

        This process registers as the job's watcher first, so that it closes the run itself
        (MLflow is imported here already) instead of waiting for the supervisor to import it.
        """
        record = self.get(job_id)
        if record.state.terminal:
            return finalize_tracking(self.store, record)
        self.store.update(record.job_id, watcher_pid=os.getpid())
        try:
            self.backend(record.spec.backend).cancel(record)
            deadline = time.time() + timeout
            while not record.state.terminal and time.time() < deadline:
                time.sleep(0.02)
                record = self.get(job_id)
            return finalize_tracking(self.store, record)
        finally:
            self.store.update(record.job_id, watcher_pid=None)

    def result(self, record: JobRecord) -> JobResult:
        """The values a succeeded job returned; raises :class:`JobFailed` otherwise.

        A job whose storage was unreachable when it wrote its results failed, but its values are
        kept in its folder (see :mod:`.storage.kept`): they come back from there, with a
        :class:`ResultsKeptWarning` that says so.
        """
        document, storage = self._result_document(record)
        if record.state is JobState.CANCELLED:
            raise JobCancelled(record.job_id, record.message or "cancelled")
        if document and document.get("register_error") and document.get("ok"):
            error = document["register_error"]
            failure = RegistrationFailed(record.job_id, error["message"], error.get("traceback", ""))
            failure.result = self._load_result(record, document, storage)
            raise failure
        if document and document.get("ok") and document.get("kept"):
            result = self._load_result(record, document, storage)
            result.warning = f"Job {record.job_id} failed, but its results came back: {document['kept']}"
            warnings.warn(result.warning, ResultsKeptWarning, stacklevel=2)
            return result
        if record.state is JobState.FAILED and record.spec.distributed:
            self._raise_rank_failure(record)
        if record.state is not JobState.SUCCEEDED:
            error = (document or {}).get("error") or {}
            message = f"{error['type']}: {error['message']}" if error else record.message
            raise JobFailed(record.job_id, message or "unknown failure; see %job logs", error.get("traceback", ""))
        if document is None:
            raise JobFailed(record.job_id, "the job succeeded but stored no result document")
        return self._load_result(record, document, storage)

    def result_value(self, record: JobRecord, name: str) -> Any:
        """One value a succeeded job returned, loaded alone (a sweep's objective); KeyError if it did not."""
        document, storage = self._result_document(record)
        if record.state is not JobState.SUCCEEDED or not document or not document.get("ok"):
            raise KeyError(name)
        for entry in document.get("outputs", []):
            if entry["name"] == name:
                return load_value(storage or self.storage, entry)
        raise KeyError(name)

    def _raise_rank_failure(self, record: JobRecord) -> None:
        """Raise the error of the rank whose failure stopped a distributed job (not what it did to the others)."""
        try:
            text = self.read_log(record.job_id)
        except Exception:  # the log cannot be read: the record's message and rank 0's document still tell
            return
        failed = failed_rank(text)
        if failed is None:
            return
        rank, code = failed
        last, traceback = rank_traceback(text, rank)
        raise JobFailed(record.job_id, f"rank {rank} failed (exit code {code}): {last or 'see %job logs'}", traceback)

    def _load_result(self, record: JobRecord, document: dict[str, Any], storage: Storage | None = None) -> JobResult:
        job_storage = get_storage(self._storage_url_of(record), **self.settings.storage_options)
        storage = storage or job_storage

        def load(entry: dict[str, Any]) -> Any:
            try:
                return load_value(storage, entry)
            except FileNotFoundError:  # kept results: a value the store took before it went down is there
                if storage is job_storage:
                    raise
                return load_value(job_storage, entry)

        result = JobResult(
            values={e["name"]: load(e) for e in document["outputs"]},
            skipped=dict(document.get("skipped", {})),
            registered=document.get("registered"),
        )
        display = document.get("display")
        if display:
            result.has_display = True
            result.display = load(display) if "key" in display else _Repr(display["repr"])
        return result

    def _storage_url_of(self, record: JobRecord) -> str:
        suffix = f"/jobs/{record.job_id}/payload.json"
        uri = str(record.payload_uri or "")
        return uri[: -len(suffix)] if uri.endswith(suffix) else self.settings.storage_url

    def _result_document(self, record: JobRecord) -> tuple[dict[str, Any] | None, Storage | None]:
        """The job's result document and the storage holding its values (None, None if there is none).

        The job's folder is looked at first: results kept there (the job storage did not take them)
        are the job's only results, and reading them needs no network.
        """
        if not record.result_uri:
            return None, None
        key = f"jobs/{record.job_id}/result.json"
        kept = LocalStorage(str(self.store.job_dir(record.job_id) / KEPT_FOLDER))
        for where in (kept, None):
            storage = where or get_storage(self._storage_url_of(record), **self.settings.storage_options)
            try:
                return json.loads(storage.get_bytes(key)), storage
            except (FileNotFoundError, OSError, ValueError):
                continue
        return None, None


def check_rank(record: JobRecord, rank: int) -> None:
    """Refuse a rank the job does not have (:class:`JMKUsageError` saying which it has)."""
    if not record.spec.distributed:
        raise JMKUsageError(f"Job {record.job_id} ran as one process: it has no ranks. Leave out --rank.")
    if not 0 <= rank < record.spec.world_size:
        raise JMKUsageError(
            f"Job {record.job_id} has ranks 0 to {record.spec.world_size - 1} "
            f"({record.spec.nodes} node(s) x {record.spec.procs_per_node} process(es)); there is no rank {rank}."
        )


class _Repr:
    """Stands for a final value that could not be pickled: shows its repr."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text
