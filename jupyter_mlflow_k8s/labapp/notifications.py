"""Tell the browser when a job of this server's user ends: a watcher of the job records and its event.

The watcher lists this server's jobs (the records are files; a Kubernetes job's record is reconciled
from the cluster watch the listing already keeps) every few seconds in the API's thread pool, and
remembers each job's state. A job seen queued or running that is now succeeded, failed or cancelled
(or a job created after the server started that is seen for the first time already ended) is
announced once as a jupyter_events event, which jupyter_server relays to the browser's
``/api/events/subscribe`` websocket. Jobs that had ended before the server started are never
announced; neither are other users' jobs nor the trials of a sweep (its leaderboard tells those).

No tornado handler here and nothing that blocks the event loop: :class:`JobEndWatcher` is plain and
synchronous (tests drive it directly), :func:`watch_jobs` is the asyncio loop around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..models import JobRecord, JobState
from ..tracking import experiment_name
from . import shapes

#: The event's id (jupyter_events needs a URI; it names the event, nothing is fetched from it).
SCHEMA_ID = "https://jupyter-mlflow-k8s.org/events/job-ended"
SCHEMA_VERSION = "1"
SCHEMA: dict[str, Any] = {
    "$id": SCHEMA_ID,
    "version": SCHEMA_VERSION,
    "title": "A job of this server's user ended",
    "personal-data": False,
    "description": "Emitted once when a job of this server's user is seen to reach succeeded, failed or cancelled.",
    "type": "object",
    "required": ["job_id", "name", "state", "backend", "duration"],
    "properties": {
        "job_id": {"type": "string"},
        "name": {"type": "string", "description": "the run name, else the first line of code"},
        "state": {"enum": ["succeeded", "failed", "cancelled"]},
        "backend": {"type": "string"},
        "experiment": {"type": "string"},
        "started": {"type": ["number", "null"]},
        "finished": {"type": ["number", "null"]},
        "duration": {"type": ["number", "null"], "description": "seconds it ran (from its start, else its creation)"},
        "run_id": {"type": ["string", "null"]},
        "experiment_id": {"type": ["string", "null"]},
        "exit_code": {"type": ["integer", "null"]},
        "message": {"type": "string"},
    },
}

_log = logging.getLogger(__name__)


def is_sweep_trial(record: JobRecord) -> bool:
    """Whether the job is one trial of a sweep (the sweep's controller tags its trials ``jmk.sweep``)."""
    return "jmk.sweep" in record.spec.tags


def ended_event(record: JobRecord) -> dict[str, Any]:
    """The event's data for an ended job."""
    begin = record.started if record.started is not None else record.created
    duration = record.finished - begin if record.finished is not None and begin is not None else None
    return {
        "job_id": record.job_id,
        "name": shapes.job_name(record),
        "state": record.state.value,
        "backend": record.spec.backend,
        "experiment": experiment_name(record.spec),
        "started": record.started,
        "finished": record.finished,
        "duration": max(0.0, duration) if duration is not None else None,
        "run_id": record.run_id,
        "experiment_id": record.experiment_id,
        "exit_code": record.exit_code,
        "message": record.message[:500],
    }


class JobEndWatcher:
    """Which jobs have ended since the last look: states remembered between two listings.

    ``user`` is the server's user; a record whose ``owner`` is another user is never announced (a record
    without an owner, written before owners were kept, lives in this user's state directory: it is theirs).
    """

    def __init__(self, list_jobs: Callable[[], Iterable[JobRecord]], user: str, since: float | None = None) -> None:
        self.list_jobs = list_jobs
        self.user = user
        self.since = time.time() if since is None else since
        self._states: dict[str, JobState] | None = None

    def mine(self, record: JobRecord) -> bool:
        """Whether the job is this user's (and not a sweep's trial)."""
        return record.owner in ("", self.user) and not is_sweep_trial(record)

    def check(self) -> list[dict[str, Any]]:
        """The events of the jobs that ended since the previous call (none on the first: it only looks)."""
        records = list(self.list_jobs())
        previous, self._states = self._states, {r.job_id: r.state for r in records}
        if previous is None:
            return []
        events = []
        for record in records:
            if not record.state.terminal or not self.mine(record):
                continue
            before = previous.get(record.job_id)
            if before is None:
                new = record.created >= self.since  # ended between two looks; older ones ended before we started
                if new:
                    events.append(ended_event(record))
            elif not before.terminal:
                events.append(ended_event(record))
        return events


async def watch_events(
    check: Callable[[], list[dict[str, Any]]],
    emit: Callable[[dict[str, Any]], None],
    interval: float,
    executor: Any,
    log: logging.Logger,
    what: str,
    describe: Callable[[dict[str, Any]], str],
) -> None:
    """Run ``check`` in ``executor`` every ``interval`` seconds and ``emit`` each event, until cancelled.

    A look that fails is logged (once per distinct error while it keeps failing, saying it could not
    ``what``) and tried again; ``describe`` names an event in the log.
    """
    loop = asyncio.get_running_loop()
    failing = ""
    while True:
        try:
            events = await loop.run_in_executor(executor, check)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next look tries again
            text = f"{type(exc).__name__}: {exc}"
            if text != failing:
                log.warning("jupyter_mlflow_k8s: cannot %s: %s", what, text)
            failing = text
        else:
            failing = ""
            for event in events:
                try:
                    emit(event)
                    log.info("jupyter_mlflow_k8s: %s: announced", describe(event))
                except Exception:  # a bad event must not stop the watcher
                    log.warning("jupyter_mlflow_k8s: could not announce %s", describe(event), exc_info=True)
        await asyncio.sleep(interval)


async def watch_jobs(
    watcher: JobEndWatcher,
    emit: Callable[[dict[str, Any]], None],
    interval: float,
    executor: Any,
    log: logging.Logger | None = None,
) -> None:
    """Run ``watcher.check`` in ``executor`` every ``interval`` seconds and ``emit`` each event, until cancelled."""
    await watch_events(
        watcher.check,
        emit,
        interval,
        executor,
        log or _log,
        "list jobs to announce their ends",
        lambda event: f"job {event.get('job_id')} {event.get('state')}",
    )
