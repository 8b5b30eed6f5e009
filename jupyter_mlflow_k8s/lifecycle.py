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

from .errors import UnavailableError
from .models import JobRecord, JobState
from .records import JobStore
from .util.processes import pid_exists

# How long a supervisor leaves closing the MLflow run to a kernel that is watching the job.
WATCHER_GRACE_SECONDS = 5.0
# How long a process that lost the race to close a run waits for the winner to finish.
CLOSE_WAIT_SECONDS = 30.0
CLOSE_RUN_DUTY = "close-run"
# How long a supervisor goes on sending what its job's tracking server did not take.
PENDING_RETRY_SECONDS = 600.0


def end_job(
    store: JobStore,
    job_id: str,
    state: JobState,
    message: str,
    exit_code: int | None = None,
    defer_to_watcher: bool = False,
) -> JobRecord:
    """Record how a job ended (once: a terminal record is never changed) and close its run."""
    record = record_end(store, job_id, state, message, exit_code)
    return finalize_tracking(store, record, defer_to_watcher=defer_to_watcher)


def record_end(store: JobStore, job_id: str, state: JobState, message: str, exit_code: int | None = None) -> JobRecord:
    """Record how a job ended, at once and whatever MLflow does (once: a terminal record never changes)."""
    with store.locked(job_id):
        record = store.load(job_id)
        if not record.state.terminal:
            record.state, record.message, record.exit_code = state, message, exit_code
            record.finished = time.time()
            store.save(record)
    return record


def finalize_tracking(
    store: JobStore, record: JobRecord, defer_to_watcher: bool = False, wait: bool = True
) -> JobRecord:
    """Close the job's MLflow run exactly once, by whichever process gets there first.

    A kernel that is watching the job has MLflow imported already and closes the run in
    milliseconds; the supervisor (``defer_to_watcher``) gives it a few seconds before doing it
    itself, so that a job nobody watches (kernel gone) still ends with the right status.

    Never waits on tracking and never raises for it: when the tracking server cannot be reached,
    what was not sent stays pending on the record (``tracking_sent`` says what was, and
    ``tracking_error`` why the rest was not), and the next process that gets here once the server
    answers sends it. A process that finds another one closing the run waits for it (``wait``) or not.
    """
    if not record.state.terminal or record.tracking_final:
        return record
    if defer_to_watcher and record.watcher_pid and record.watcher_pid != os.getpid() and pid_exists(record.watcher_pid):
        deadline = time.time() + WATCHER_GRACE_SECONDS
        while time.time() < deadline:
            record = store.load(record.job_id)
            if record.tracking_final or record.tracking_error or not record.watcher_pid:
                break
            time.sleep(0.05)
        if record.tracking_final:
            return record
    if not store.claim(record.job_id, CLOSE_RUN_DUTY):
        if not wait:
            return record
        # Another process is closing the run: wait until it has closed it or left it pending.
        deadline = time.time() + CLOSE_WAIT_SECONDS
        while store.claimed(record.job_id, CLOSE_RUN_DUTY) and time.time() < deadline:
            time.sleep(0.02)
        return store.load(record.job_id)
    try:
        return _close(store, store.load(record.job_id))
    finally:
        store.release(record.job_id, CLOSE_RUN_DUTY)


def _close(store: JobStore, record: JobRecord) -> JobRecord:
    """Send what is left of closing the run (the claim is held); keep the rest pending if it fails."""
    if record.tracking_final:
        return record
    from .tracking import close_run

    done = list(record.tracking_sent)

    def sent(step: str) -> None:
        done.append(step)
        store.update(record.job_id, tracking_sent=list(done))

    try:
        close_run(record, done, sent)
    except UnavailableError as exc:  # the job's end stands; the rest is sent once the server answers
        return store.update(record.job_id, tracking_error=str(exc))
    except Exception as exc:  # refused for good (the run was deleted, say): trying again would not help
        print(f"[jmk] the MLflow run of job {record.job_id} could not be closed: {type(exc).__name__}: {exc}")
        return store.update(record.job_id, tracking_final=True, tracking_error=f"not closed: {exc}")
    return store.update(record.job_id, tracking_final=True, tracking_error="")


def send_pending(store: JobStore, job_id: str, give_up_after: float = PENDING_RETRY_SECONDS) -> JobRecord:
    """Keep trying to close a run left pending, with a growing pause, for ``give_up_after`` seconds.

    The supervisor does this after a job whose tracking server did not answer; whatever is still
    pending afterwards is sent by the next ``%jobs``, ``%job attach``, ``jmk jobs`` or sidebar
    listing once the server answers.
    """
    deadline = time.monotonic() + give_up_after
    pause = 2.0
    record = store.load(job_id)
    while not record.tracking_final and record.tracking_error and time.monotonic() + pause < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 60.0)
        record = finalize_tracking(store, store.load(job_id), wait=False)
    return record
