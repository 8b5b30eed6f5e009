"""Job records on disk: one folder per job under ``<state_dir>/jobs``.

A folder holds ``record.json`` (the truth about the job), ``output.log`` (everything the job
printed) and ``claims/`` (one-time duties such as closing the MLflow run, taken by exactly one
process). Updates are atomic (write, then rename) and serialized by a lock file, so kernels,
supervisors, the CLI and the server extension can all read and write the same records.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .exceptions import JMKUsageError, JobNotFound
from .models import JobRecord, JobSpec
from .util.identity import current_user
from .util.processes import pid_exists

RECORD = "record.json"
LOG = "output.log"


class JobStore:
    """Reads and writes job records under ``root``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        """The folder of one job."""
        return self.root / job_id

    def create(self, spec: JobSpec) -> JobRecord:
        """A new record with a fresh, short, collision-free id; its folder is created."""
        while True:
            job_id = secrets.token_hex(4)  # short enough to type; mkdir makes it unique
            try:
                (self.root / job_id).mkdir()
            except FileExistsError:
                continue
            record = JobRecord(job_id=job_id, spec=spec, log_path=str(self.root / job_id / LOG), owner=current_user())
            self.save(record)
            return record

    def save(self, record: JobRecord) -> None:
        """Write the whole record atomically."""
        folder = self.job_dir(record.job_id)
        tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record.to_dict(), indent=1))
        os.replace(tmp, folder / RECORD)

    def load(self, job_id: str) -> JobRecord:
        """The record of ``job_id``; a unique prefix is enough."""
        path = self.job_dir(job_id) / RECORD
        if not path.exists():
            matches = [p.name for p in self.root.iterdir() if p.name.startswith(job_id)] if job_id else []
            if len(matches) > 1:
                raise JMKUsageError(f"Job id {job_id!r} is ambiguous: {', '.join(sorted(matches))}. Type more of it.")
            if not matches:
                raise JobNotFound(job_id, [r.job_id for r in self.list()])
            path = self.job_dir(matches[0]) / RECORD
        return JobRecord.from_dict(json.loads(path.read_text()))

    @contextlib.contextmanager
    def locked(self, job_id: str) -> Iterator[None]:
        """Hold the record's lock (between processes) for a read-modify-write."""
        with open(self.job_dir(job_id) / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Change some fields under the lock; returns the new record."""
        with self.locked(job_id):
            record = self.load(job_id)
            for name, value in changes.items():
                setattr(record, name, value)
            self.save(record)
            return record

    def list(self) -> list[JobRecord]:
        """Every readable record, newest first."""
        records = []
        for folder in self.root.iterdir():
            try:
                records.append(JobRecord.from_dict(json.loads((folder / RECORD).read_text())))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a folder being created, or written by an incompatible version
        return sorted(records, key=lambda r: r.created, reverse=True)

    def claim(self, job_id: str, duty: str) -> bool:
        """True for exactly one caller per job and duty at a time, across processes.

        The claim names its process; one whose process is gone (killed while on duty) is taken over.
        """
        folder = self.job_dir(job_id) / "claims"
        folder.mkdir(exist_ok=True)
        path = folder / duty
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self.claimed(job_id, duty):
                    return False
                path.unlink(missing_ok=True)  # its holder died on duty
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return True
        return False

    def claimed(self, job_id: str, duty: str) -> bool:
        """Whether a live process holds the claim on ``duty``."""
        try:
            holder = (self.job_dir(job_id) / "claims" / duty).read_text().strip()
        except FileNotFoundError:
            return False
        if not holder:
            return True  # being written by its holder right now
        return holder.isdigit() and pid_exists(int(holder))

    def release(self, job_id: str, duty: str) -> None:
        """Give up a claim this process holds (the duty is done, or left for later)."""
        (self.job_dir(job_id) / "claims" / duty).unlink(missing_ok=True)
