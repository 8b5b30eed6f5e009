"""The supervisor of one local job: ``python -m jupyter_mlflow_k8s.backends.local_supervisor JOB_DIR``.

Started detached by :class:`LocalBackend`. Waits for a slot (at most ``max_concurrent_jobs``
run at once) and its GPUs: both are ``flock``-ed files, which the OS releases even if this
process dies. Then starts the runner with the job's environment and ``CUDA_VISIBLE_DEVICES``,
output to the job's log file (so a killed runner keeps its log), enforces the timeout, records
how the job ended and closes its MLflow run. Imports only what it needs: it is on every job's
critical path.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ..lifecycle import end_job, send_pending
from ..models import JobRecord, JobState
from ..records import JobStore
from ..storage.kept import KEEP_DIR_ENV, KEPT_FOLDER


def _parent_death_signal() -> Callable[[], Any] | None:
    """A pre-exec hook that makes the runner get SIGTERM if its supervisor dies (Linux only).

    ``prctl`` is looked up here, before the fork, so that the child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None).prctl
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _exit_waiter(pid: int) -> Callable[[float], None]:
    """A function that sleeps until process ``pid`` exits or ``timeout`` seconds pass."""
    try:
        fd = os.pidfd_open(pid)  # readable the moment the process exits (Linux 5.3+)
    except (AttributeError, OSError):
        return lambda timeout: time.sleep(min(max(timeout, 0), 0.05))

    def wait(timeout: float) -> None:
        select.select([fd], [], [], max(timeout, 0))

    return wait


# Jobs start in the order they were submitted: each takes a ticket (a file named by its submission
# time) in the locks folder's queue, and a supervisor tries for a slot only when no older ticket's
# job still waits. Without it, whichever waiting supervisor polled first took a freed slot.
QUEUE = "queue"
# A ticket whose job has had no supervisor for this long was abandoned mid-submission.
ABANDONED_TICKET_SECONDS = 300.0


def take_ticket(locks: Path, job_id: str) -> Path:
    """Queue ``job_id`` behind every job submitted before it (called by the submitter, in order)."""
    queue = locks / QUEUE
    queue.mkdir(parents=True, exist_ok=True)
    ticket = queue / f"{time.time_ns():020d}-{job_id}"
    ticket.touch()
    return ticket


def _still_waiting(store: JobStore, ticket: Path) -> bool:
    """Whether the job of an older ticket still waits for a slot (else the ticket is stale)."""
    from ..util.processes import process_alive

    try:
        record = store.load(ticket.name.partition("-")[2])
    except Exception:  # its record is gone or unreadable: nobody waits on it
        return False
    if record.state is not JobState.QUEUED:
        return False
    if record.pid is None:
        return time.time_ns() - int(ticket.name.partition("-")[0]) < ABANDONED_TICKET_SECONDS * 1e9
    return process_alive(record.pid, record.pid_start)


class _Supervisor:
    """Runs one job to its end. Lives in its own process and session."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.store = JobStore(folder.parent.parent)
        self.job_id = folder.name
        self.options: dict[str, Any] = json.loads((folder / "launch.json").read_text())
        self.locks = Path(self.options["locks"])
        self.locks.mkdir(parents=True, exist_ok=True)
        self.held: list[IO[str]] = []
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_reason: str | None = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_reason = self.stop_reason or "cancelled"
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    def _try_lock(self, name: str) -> bool:
        handle = open(self.locks / name, "a")  # noqa: SIM115 - held for the job's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self.held.append(handle)
        return True

    def _release(self) -> None:
        for handle in self.held:
            handle.close()
        self.held.clear()

    def _my_turn(self) -> bool:
        """Whether no job submitted before this one still waits for a slot; stale tickets are dropped."""
        queue = self.locks / QUEUE
        mine = next(iter(queue.glob(f"*-{self.job_id}")), None) if queue.is_dir() else None
        if mine is None:  # submitted without a ticket: no place in the queue to keep
            return True
        for ticket in sorted(queue.iterdir()):
            if ticket.name >= mine.name:
                return True
            if _still_waiting(self.store, ticket):
                return False
            ticket.unlink(missing_ok=True)
        return True

    def _leave_queue(self) -> None:
        for ticket in (self.locks / QUEUE).glob(f"*-{self.job_id}"):
            ticket.unlink(missing_ok=True)

    def _acquire(self, gpus_wanted: int) -> list[str] | None:
        """Wait for this job's turn, then for a slot and the GPUs; None if cancelled while waiting."""
        delay = 0.05
        while True:
            if self.stop_reason or (self.folder / "cancel").exists():
                self._leave_queue()
                return None
            if self._my_turn() and any(self._try_lock(f"slot-{i}") for i in range(int(self.options["slots"]))):
                gpu_ids: list[str] = []
                for gpu in self.options["gpus"]:
                    if len(gpu_ids) < gpus_wanted and self._try_lock(f"gpu-{gpu}"):
                        gpu_ids.append(gpu)
                if len(gpu_ids) == gpus_wanted:
                    self._leave_queue()
                    return gpu_ids
                self._release()
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _wait_for_payload(self) -> JobRecord | None:
        """The record once the submitter has staged the payload; None if it gave up."""
        started = time.monotonic()
        while True:
            record = self.store.load(self.job_id)
            if record.state.terminal or self.stop_reason or (self.folder / "cancel").exists():
                return None
            if record.payload_uri:
                return record
            # The payload normally follows within tens of ms: poll tightly (a poll reads one
            # small file), and slowly only if the submitter takes long (a slow tracking server).
            time.sleep(0.002 if time.monotonic() - started < 2 else 0.1)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        spec = self.store.load(self.job_id).spec
        gpu_ids = self._acquire(spec.resources.gpus)
        record = self._wait_for_payload() if gpu_ids is not None else None
        if gpu_ids is None or record is None:
            self._finish(JobState.CANCELLED, None, "cancelled while queued")
            return
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1", "JMK_JOB_ID": self.job_id}
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        env[KEEP_DIR_ENV] = str(self.folder / KEPT_FOLDER)  # results the job storage would not take
        command = [self.options["python"], "-m", "jupyter_mlflow_k8s.runner", str(record.payload_uri)]
        if spec.distributed:  # torchrun's agent runs the runner as --procs ranks
            command[2:3] = ["jupyter_mlflow_k8s.distributed"]
            command += ["--nodes", "1", "--procs", str(spec.procs_per_node),
                        "--rendezvous-timeout", f"{spec.rendezvous_timeout:g}"]
        with open(self.folder / "output.log", "ab") as log:
            self.child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=spec.workdir or None,
                preexec_fn=_parent_death_signal(),
            )
        self.store.update(
            self.job_id, state=JobState.RUNNING, started=time.time(), runner_pid=self.child.pid, gpu_ids=gpu_ids
        )
        code = self._wait(spec.timeout, record)
        self._release()
        state, message = self._outcome(code)
        if spec.distributed and state is JobState.FAILED and not self.stop_reason:
            message = _rank_failure(self.folder / "output.log") or message
        self._finish(state, code, message)

    def _wait(self, timeout: float | None, record: JobRecord) -> int:
        """The runner's exit status; stops it on timeout or SIGTERM (SIGKILL after the grace).

        System metrics are the runner's business (:mod:`..tracking.system_metrics`), as on Kubernetes.
        """
        assert self.child is not None
        sleep_until_exit = _exit_waiter(self.child.pid)
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        kill_at: float | None = None
        while True:
            now = time.monotonic()
            wake = min(t for t in (deadline, kill_at, now + 0.5) if t is not None)
            sleep_until_exit(wake - now)
            code = self.child.poll()
            if code is not None:
                return code
            now = time.monotonic()
            if deadline and now >= deadline and not self.stop_reason:
                self.stop_reason = f"timed out after {timeout:g} s (--timeout)"
                self.child.terminate()
            if self.stop_reason and kill_at is None:
                kill_at = now + float(self.options["grace"])
            if kill_at is not None and now >= kill_at:
                self.child.kill()

    def _outcome(self, code: int) -> tuple[JobState, str]:
        if self.stop_reason == "cancelled":
            return JobState.CANCELLED, "cancelled"
        if self.stop_reason:
            return JobState.FAILED, self.stop_reason
        if code == 0:
            return JobState.SUCCEEDED, ""
        if code == 1:
            return JobState.FAILED, "the cell raised an exception"
        if code == 3:
            return JobState.FAILED, "the cell ran, but its model could not be registered"
        if code == 4:
            return JobState.FAILED, (f"the cell ran, but the job storage was unreachable: its results are kept in "
                                     f"{self.folder / KEPT_FOLDER} (see the log)")
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (the machine may have run out of memory)" if name == "SIGKILL" else ""
            return JobState.FAILED, f"the job's process was killed by {name}{hint}"
        return JobState.FAILED, f"the runner exited with status {code}; see the log"

    def _finish(self, state: JobState, code: int | None, message: str) -> None:
        record = end_job(self.store, self.job_id, state, message, code, defer_to_watcher=True)
        if record.tracking_error and not record.tracking_final:
            send_pending(self.store, self.job_id)  # the tracking server did not answer: try again for a while


def _rank_failure(log: Path) -> str:
    """Which rank of a distributed job failed, with its last lines (from the end of the log)."""
    from ..ranks import failure_summary

    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 256 * 1024))
            return failure_summary(handle.read().decode(errors="replace"))
    except OSError:
        return ""


def main() -> None:
    """Entry point of the supervisor process."""
    _Supervisor(Path(sys.argv[1])).run()


if __name__ == "__main__":
    main()
