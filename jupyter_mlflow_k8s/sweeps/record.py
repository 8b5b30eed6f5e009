"""Sweep records on disk: one folder per sweep under ``<state_dir>/sweeps``.

A folder holds ``config.json`` (what was asked: the trials' job spec, the staged inputs, the search;
written once), ``sweep.json`` (where it stands: every trial's params, job, state and objective; the
truth the leaderboard, ``%jobs`` and ``%job attach`` read), ``controller.log`` and, when asked,
``cancel``. ``sweep.json`` is written atomically by one controller process at a time.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import IO, Any

from ..exceptions import JMKUsageError, JobNotFound

PREFIX = "s-"
CONFIG = "config.json"
RECORD = "sweep.json"
CANCEL = "cancel"
LOG = "controller.log"
LOCK = "controller.lock"
# Trial states: a job's, plus pruned (stopped by the pruner for poor intermediate values).
ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "pruned", "cancelled")


def is_sweep_id(text: str) -> bool:
    """Whether an id names a sweep (``s-1a2b3c4d``) rather than a job."""
    return text.startswith(PREFIX)


class SweepStore:
    """Reads and writes sweep folders under ``<state_dir>/sweeps``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / "sweeps"
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, sweep_id: str) -> Path:
        """The folder of one sweep."""
        return self.root / sweep_id

    def create(self, config: dict[str, Any], record: dict[str, Any]) -> str:
        """A new sweep folder with its config and first record; returns the sweep id."""
        while True:
            sweep_id = PREFIX + secrets.token_hex(4)
            try:
                self.folder(sweep_id).mkdir()
            except FileExistsError:
                continue
            _write(self.folder(sweep_id) / CONFIG, config)
            self.save({**record, "sweep_id": sweep_id, "created": time.time()})
            return sweep_id

    def resolve(self, sweep_id: str) -> str:
        """The full id of a sweep; a unique prefix is enough."""
        if (self.folder(sweep_id) / RECORD).exists():
            return sweep_id
        matches = sorted(p.name for p in self.root.iterdir() if p.name.startswith(sweep_id)) if sweep_id else []
        if len(matches) > 1:
            raise JMKUsageError(f"Sweep id {sweep_id!r} is ambiguous: {', '.join(matches)}. Type more of it.")
        if not matches:
            raise JobNotFound(sweep_id, [s["sweep_id"] for s in self.list()])
        return matches[0]

    def load(self, sweep_id: str) -> dict[str, Any]:
        """The current record of a sweep."""
        return dict(json.loads((self.folder(self.resolve(sweep_id)) / RECORD).read_text()))

    def config(self, sweep_id: str) -> dict[str, Any]:
        """What the sweep was asked to do."""
        return dict(json.loads((self.folder(self.resolve(sweep_id)) / CONFIG).read_text()))

    def save(self, record: dict[str, Any]) -> None:
        """Write a record atomically."""
        _write(self.folder(record["sweep_id"]) / RECORD, record)

    def list(self) -> list[dict[str, Any]]:
        """Every readable sweep record, newest first."""
        records = []
        for folder in self.root.iterdir():
            try:
                records.append(json.loads((folder / RECORD).read_text()))
            except (OSError, ValueError):
                continue  # being created
        return sorted(records, key=lambda r: r.get("created", 0), reverse=True)

    def request_cancel(self, sweep_id: str) -> None:
        """Ask the sweep's controller to stop every trial."""
        (self.folder(sweep_id) / CANCEL).touch()

    def cancel_requested(self, sweep_id: str) -> bool:
        """Whether someone asked the sweep to stop."""
        return (self.folder(sweep_id) / CANCEL).exists()

    def hold_controller(self, sweep_id: str) -> IO[str] | None:
        """The lock a controller holds while it drives the sweep (so that one drives it); None if another has it."""
        handle = open(self.folder(sweep_id) / LOCK, "a")  # noqa: SIM115 (held until the process ends)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def controller_alive(self, record: dict[str, Any]) -> bool:
        """Whether a controller process drives the sweep now (holds its lock; a dead one holds nothing)."""
        handle = self.hold_controller(record["sweep_id"])
        if handle is None:
            return True
        handle.close()  # closing lets the lock go
        return False


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
