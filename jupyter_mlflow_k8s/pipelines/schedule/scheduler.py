"""The embedded scheduler: fires each due schedule as a ``jmk pipeline run`` subprocess; one per state directory."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from ...config import JMKSettings, load_settings
from ...exceptions import JMKError
from ...util.processes import process_alive, process_started
from ...util.times import iso
from .cron import UTC, _following, _slot_within, _utc, next_fire
from .store import SKIP_GRACE_SECONDS, Schedule, _path, _save, get_schedule, list_schedules, schedules_dir

log = logging.getLogger(__name__)


class SchedulerRunning(JMKError):
    """Another scheduler already holds the state directory's lock."""

    def __init__(self, lock: Path, pid: str) -> None:
        who = f" (pid {pid})" if pid else ""
        super().__init__(
            f"A scheduler is already running for this state directory{who}: it holds {lock}. "
            "One scheduler per state directory fires every schedule; stop it before starting another."
        )
        self.pid = pid


class Ticker(Protocol):
    """Something the scheduler also ticks, after its schedules (the triggers' evaluator)."""

    def tick(self, now: datetime | None = None) -> list[str]:
        """Act on what is due at ``now``; the names of what fired."""
        ...


# -- the embedded scheduler ------------------------------------------------------------------

@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    log: str


def lock_path(settings: JMKSettings | None = None) -> Path:
    """The scheduler's lock file: ``<state dir>/pipelines/scheduler.lock``."""
    return (settings or load_settings()).state_path / "pipelines" / "scheduler.lock"


def scheduler_pid(settings: JMKSettings | None = None) -> str | None:
    """The pid of the scheduler running for this state directory (``""`` if it wrote none), else None."""
    import fcntl

    try:
        handle = lock_path(settings).open(encoding="utf-8")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


class Scheduler:
    """Fires due schedules of one state directory as ``jmk pipeline run`` subprocesses.

    :meth:`serve` holds the state directory's lock (one scheduler per state directory) and calls
    :meth:`tick` every few seconds until SIGTERM or SIGINT. A fired run is a subprocess in a
    session of its own: stopping the scheduler leaves it running, and a scheduler started later
    still sees it (by its pid and start time) before firing the schedule again.
    """

    def __init__(self, settings: JMKSettings | None = None, *, grace_seconds: float = SKIP_GRACE_SECONDS,
                 tickers: Sequence[Ticker] = ()) -> None:
        self.settings = settings or load_settings()
        self.grace_seconds = grace_seconds
        self.tickers = tuple(tickers)
        self._children: dict[str, list[_Child]] = {}
        self._waiting: set[tuple[str, str | None]] = set()
        self._lock: IO[str] | None = None

    # -- one scheduler per state directory ------------------------------------------------------

    def acquire(self) -> None:
        """Take the state directory's scheduler lock.

        Raises:
            SchedulerRunning: Another scheduler holds it.
        """
        import fcntl

        if self._lock is not None:
            return
        path = lock_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            pid = handle.read().strip()
            handle.close()
            raise SchedulerRunning(path, pid) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Let go of the lock (closing the file releases it)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Scheduler:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _take_lock(self, *, said: bool) -> bool:
        """Take the lock for a replica that holds the Lease; False while another still holds it (said once)."""
        try:
            self.acquire()
        except SchedulerRunning as exc:
            if not said:
                log.info("this replica holds the lease but waits: %s", exc)
            return False
        return True

    # -- runs -----------------------------------------------------------------------------------

    def command(self, schedule: Schedule, run_id: str) -> list[str]:
        """The command line of one run of ``schedule``, as pipeline run ``run_id``."""
        parameters = [item for key, value in schedule.overrides.items() for item in ("-p", f"{key}={value}")]
        return [sys.executable, "-m", "jupyter_mlflow_k8s.cli", "pipeline", "run", schedule.pipeline, *parameters,
                "--run-id", run_id]

    def _env(self) -> dict[str, str]:
        """The environment of a run: this scheduler's state directory, tracking and storage (however configured)."""
        return {
            **os.environ,
            "JMK_STATE_DIR": str(self.settings.state_dir),
            "MLFLOW_TRACKING_URI": str(self.settings.tracking_uri),
            "JMK_STORAGE_URL": str(self.settings.storage_url),
            "PYTHONUNBUFFERED": "1",
        }

    def running(self, schedule: Schedule) -> bool:
        """Whether a run of ``schedule`` is still running (one this scheduler started, or an earlier one)."""
        if any(child.process.poll() is None for child in self._children.get(schedule.name, [])):
            return True
        return process_alive(schedule.pid, schedule.pid_started)

    def _fire(self, schedule: Schedule, now: datetime) -> None:
        logs = schedules_dir(self.settings) / "logs" / schedule.name
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{now:%Y%m%dT%H%M%S}Z.log"
        folder = Path(schedule.pipeline).parent
        run_id = secrets.token_hex(4)
        with log_path.open("ab") as output:
            process = subprocess.Popen(
                self.command(schedule, run_id), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=folder if folder.is_dir() else None, env=self._env(), start_new_session=True,
            )
        self._children.setdefault(schedule.name, []).append(_Child(process, str(log_path)))
        schedule.pid, schedule.pid_started = process.pid, process_started(process.pid)
        schedule.log, schedule.last_fire, schedule.last_run_id, schedule.last_exit = str(log_path), now, run_id, None
        log.info("fired %s: pipeline %s (pid %d, log %s)", schedule.name, schedule.pipeline, process.pid, log_path)

    def reap(self) -> None:
        """Notice runs that ended (their exit status, their pipeline run id) and record them."""
        for name, children in list(self._children.items()):
            for child in list(children):
                code = child.process.poll()
                if code is None:
                    continue
                children.remove(child)
                outcome = "succeeded" if code == 0 else f"failed (exit {code})"
                log.info("%s: run %s, log %s", name, outcome, child.log)
                path = _path(name, self.settings)
                if not path.exists():
                    continue
                schedule = get_schedule(name, self.settings)
                if schedule.log == child.log:  # the latest fire of the schedule
                    schedule.pid, schedule.pid_started, schedule.last_exit = None, None, code
                    _save(schedule, self.settings)
            if not children:
                del self._children[name]

    def _refresh(self, schedule: Schedule) -> bool:
        """Forget an earlier fire's process once it ended unwatched (its exit status is unknown). True if changed."""
        if schedule.pid and not self.running(schedule) and schedule.name not in self._children:
            schedule.pid, schedule.pid_started = None, None
            return True
        return False

    def tick(self, now: datetime | None = None) -> list[str]:
        """Fire every schedule that is due at ``now`` (default: now), by its policies; then tick the tickers.

        A due schedule whose previous run still runs waits (unless it allows overlap); under
        ``missed="skip"`` a slot older than :attr:`grace_seconds` is dropped. Each schedule that is
        not waiting gets its ``next_fire`` after ``now``.

        Returns:
            The names of the schedules fired, then of what the tickers fired (triggers).
        """
        now = _utc(now or datetime.now(UTC))
        self.reap()
        fired: list[str] = []
        for schedule in list_schedules(self.settings):
            changed = self._refresh(schedule)
            due = schedule.next_fire
            try:
                if due is None:  # written by hand, or its schedule stopped firing
                    schedule.next_fire, changed = next_fire(schedule.cron, now), True
                elif due <= now:
                    changed = self._due(schedule, due, now, fired) or changed
            except (JMKError, OSError) as exc:
                log.error("schedule %s: %s", schedule.name, exc)
                schedule.next_fire, changed = None, True
            if changed:
                _save(schedule, self.settings)
        for ticker in self.tickers:
            try:
                fired += ticker.tick(now)
            except Exception:  # one broken part must not stop the schedules
                log.exception("%s failed; trying again next tick", type(ticker).__name__)
        return fired

    def _due(self, schedule: Schedule, due: datetime, now: datetime, fired: list[str]) -> bool:
        if not schedule.overlap and self.running(schedule):
            if (schedule.name, schedule.log) not in self._waiting:
                self._waiting.add((schedule.name, schedule.log))
                log.info("%s: due since %s, waits: its previous run (pid %s) is still running",
                         schedule.name, iso(due), schedule.pid or "?")
            return False
        upcoming = _following(schedule.cron, due, now)
        if schedule.missed == "skip" and not _slot_within(schedule.cron, due, now, self.grace_seconds):
            log.info("%s: missed its slots since %s, skipped (missed=skip); next at %s",
                     schedule.name, iso(due), iso(upcoming))
        else:
            self._fire(schedule, now)
            fired.append(schedule.name)
        schedule.next_fire = upcoming
        return True

    def serve(self, poll_seconds: float = 15.0, *, stop: threading.Event | None = None,
              gate: Callable[[], bool] | None = None) -> None:
        """Tick every ``poll_seconds`` until SIGTERM or SIGINT (or ``stop`` is set), holding the lock.

        ``gate`` is asked before each tick (on a cluster: whether this replica holds the Lease); a tick
        it refuses is skipped. With a gate the lock is taken only while the gate holds, and let go when
        it stops holding: replicas sharing one claim take turns (a replica that took over waits, without
        evaluating, until one still stopping has let go of the lock).

        Raises:
            SchedulerRunning: Another scheduler runs for this state directory (without a gate).
        """
        stop = stop or threading.Event()
        if gate is None:
            self.acquire()
        previous: dict[int, Any] = {}
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                try:
                    previous[signum] = signal.signal(signum, lambda *_: stop.set())
                except ValueError:  # not the main thread: only `stop` stops it
                    break
            names = ", ".join(s.name for s in list_schedules(self.settings)) or "none yet"
            log.info("scheduler started (pid %d, state dir %s, every %g s); schedules: %s",
                     os.getpid(), self.settings.state_dir, poll_seconds, names)
            leading: bool | None = None
            waiting = False  # leading, but another replica (still stopping) holds the lock
            while not stop.is_set():
                try:
                    held = gate() if gate is not None else None
                    if gate is not None and held != leading:
                        leading = held
                        log.info("this replica %s", "evaluates now" if leading else "waits: another holds the lease")
                    locked_now = False
                    if gate is not None and leading:
                        locked_now = self._take_lock(said=waiting)
                        waiting = not locked_now
                    elif gate is not None:
                        self.release()
                        waiting = False
                    if gate is None or locked_now:
                        self.tick()
                except Exception:
                    log.exception("scheduler tick failed; trying again in %g s", poll_seconds)
                stop.wait(poll_seconds)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.release()
            running = [str(c.process.pid) for children in self._children.values() for c in children
                       if c.process.poll() is None]
            left = f"; runs still running carry on (pids {', '.join(running)})" if running else ""
            log.info("scheduler stopped%s", left)
