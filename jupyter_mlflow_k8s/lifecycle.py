"""How a job's end is recorded, by whichever process sees it: supervisor, kernel, CLI, server.

Owns the record side of a job's end: its terminal state (written once), and closing its MLflow
run exactly once (a claim on the record decides who closes it, ``tracking_final`` says that it
is closed). The MLflow side of closing is :func:`jupyter_mlflow_k8s.tracking.close_run`, imported
only when a run is to be closed. Kept apart from the backends so that a supervisor process can
import it without traitlets or MLflow.
"""

from __future__ import annotations

import os
import time

from .models import JobRecord, JobState
from .records import JobStore
from .util.processes import pid_exists

# How long a supervisor leaves closing the MLflow run to a kernel that is watching the job.
WATCHER_GRACE_SECONDS = 5.0
# How long a process that lost the race to close a run waits for the winner to finish.
CLOSE_WAIT_SECONDS = 60.0
CLOSE_RUN_DUTY = "close-run"


def end_job(
    store: JobStore,
    job_id: str,
    state: JobState,
    message: str,
    exit_code: int | None = None,
    defer_to_watcher: bool = False,
) -> JobRecord:
    """Record how a job ended (once: a terminal record is never changed) and close its run."""
    with store.locked(job_id):
        record = store.load(job_id)
        if not record.state.terminal:
            record.state, record.message, record.exit_code = state, message, exit_code
            record.finished = time.time()
            store.save(record)
    return finalize_tracking(store, record, defer_to_watcher=defer_to_watcher)


def finalize_tracking(store: JobStore, record: JobRecord, defer_to_watcher: bool = False) -> JobRecord:
    """Close the job's MLflow run exactly once, by whichever process gets there first.

    A kernel that is watching the job has MLflow imported already and closes the run in
    milliseconds; the supervisor (``defer_to_watcher``) gives it a few seconds before doing it
    itself, so that a job nobody watches (kernel gone) still ends with the right status.
    """
    if not record.state.terminal or record.tracking_final:
        return record
    if defer_to_watcher and record.watcher_pid and record.watcher_pid != os.getpid() and pid_exists(record.watcher_pid):
        deadline = time.time() + WATCHER_GRACE_SECONDS
        while time.time() < deadline:
            record = store.load(record.job_id)
            if record.tracking_final or not record.watcher_pid:
                break
            time.sleep(0.05)
        if record.tracking_final:
            return record
    if not store.claim(record.job_id, CLOSE_RUN_DUTY):
        # Another process is closing the run: wait for it, so that "ended" means "closed".
        deadline = time.time() + CLOSE_WAIT_SECONDS
        while not record.tracking_final and time.time() < deadline:
            time.sleep(0.02)
            record = store.load(record.job_id)
        return record
    try:
        from .tracking import close_run

        close_run(record)
    finally:
        record = store.update(record.job_id, tracking_final=True)
    return record
