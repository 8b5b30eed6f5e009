"""How a job's end is recorded, by whichever process sees it: supervisor, kernel, CLI, server.

Kept apart from the backends so that a supervisor process can import it without traitlets.
"""

from __future__ import annotations

import time

from .models import JobRecord, JobState
from .records import JobStore


def end_job(
    store: JobStore,
    job_id: str,
    state: JobState,
    message: str,
    exit_code: int | None = None,
    defer_to_watcher: bool = False,
) -> JobRecord:
    """Record how a job ended (once: a terminal record is never changed) and close its run."""
    from .tracking import finalize_tracking

    with store.locked(job_id):
        record = store.load(job_id)
        if not record.state.terminal:
            record.state, record.message, record.exit_code = state, message, exit_code
            record.finished = time.time()
            store.save(record)
    return finalize_tracking(store, record, defer_to_watcher=defer_to_watcher)
