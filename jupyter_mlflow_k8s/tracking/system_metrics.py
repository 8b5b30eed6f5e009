"""A job's MLflow system metrics, recorded by a process of their own beside the runner.

The runner (rank 0 of a distributed job) starts ``python -m jupyter_mlflow_k8s.tracking.system_metrics
RUN_ID INTERVAL`` with :func:`start` and stops it with :meth:`SystemMetrics.stop` when the cell has run.
That process waits one interval (a job shorter than that costs it nothing but its start), then imports
MLflow and logs one sample every interval to the job's run under MLflow's names
(:mod:`.system_monitor`), and a last one when told to stop. It is a process, not a thread of the runner,
so that it never slows or breaks the job: MLflow's import (1-2 s of CPU) and its requests hold no lock
of the cell's process, a cell that forks (DataLoader workers) forks no thread of ours, it runs at a
lower priority than the cell, and it can be killed.

Stopping never waits on MLflow for more than :data:`STOP_SECONDS`: a process that has not yet started
sampling is killed at once; one that has gets SIGTERM, sends its last sample within that bound (its
requests get one short try) and is killed if it has not exited by then. The runner's death closes the
process's stdin, which stops it the same way, so it never outlives the job for long.

Setting: ``c.JMKSettings.system_metrics_interval`` (seconds; 0: none), passed to the job in
:data:`INTERVAL_ENV` by :func:`job_environment`. This module imports nothing heavy.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping

INTERVAL_ENV = "JMK_SYSTEM_METRICS_INTERVAL"
STOP_SECONDS = 4.0  # the longest a job's end waits for its last sample (one 3 s request, and slack)
READY = b"r"  # written by the process once it samples: from then on, it has something to send at the end
NICENESS = 10  # the cell comes first when the job's CPUs are all busy


def job_environment(interval: float) -> dict[str, str]:
    """The variable that tells a job's runner how often to record system metrics (0: never)."""
    return {INTERVAL_ENV: f"{interval:g}"}


def interval_from(environ: Mapping[str, str]) -> float:
    """The job's sampling interval in seconds; 0 when unset, off or not a positive number."""
    try:
        value = float(environ.get(INTERVAL_ENV, "") or 0)
    except ValueError:
        print(
            f"[jmk] ignoring {INTERVAL_ENV}={environ.get(INTERVAL_ENV)!r} (not a number of seconds): no system metrics",
            file=sys.stderr,
        )
        return 0.0
    return value if value > 0 else 0.0


class SystemMetrics:
    """The runner's handle on the system-metrics process of its job."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._stopping = False

    def _ready(self) -> bool:
        out = self.process.stdout
        if out is None:
            return False
        readable, _, _ = select.select([out], [], [], 0)
        return bool(readable) and os.read(out.fileno(), 1) == READY

    def stop_soon(self) -> None:
        """Tell the process to send its last sample and exit; kill it if it has not started sampling."""
        if self._stopping:
            return
        self._stopping = True
        if self._ready():
            self.process.terminate()  # not only the pipe: a process the cell forked may hold it open
        else:  # still starting or importing MLflow: nothing to send, no reason to wait
            self.process.kill()
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop the process: its last sample within ``timeout`` seconds, then it is killed."""
        self.stop_soon()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"[jmk] the last system metrics were not sent within {timeout:g} s", file=sys.stderr)
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start(run_id: str, interval: float) -> SystemMetrics | None:
    """Start recording system metrics for ``run_id`` every ``interval`` seconds; None if it cannot start."""
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, run_id, f"{interval:g}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
    except OSError as exc:  # system metrics are a bonus: the job goes on
        print(f"[jmk] no system metrics for this job: {exc}", file=sys.stderr)
        return None
    return SystemMetrics(process)


class _Stop:
    """When to stop: the runner closed the pipe (or died), or a signal came; a bounded end from then on."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.sampling = False

    def now(self, *_: object) -> None:
        """Stop: at once if nothing was sampled yet, else after the last sample or :data:`STOP_SECONDS`."""
        if not self.sampling:
            os._exit(0)
        if not self.event.is_set():
            self.event.set()
            timer = threading.Timer(STOP_SECONDS, os._exit, (0,))
            timer.daemon = True
            timer.start()

    def watch_stdin(self) -> None:
        """Stop when the runner closes the pipe, or exits."""
        try:
            while os.read(0, 64):
                pass
        except OSError:
            pass
        self.now()


def main(argv: list[str] | None = None) -> int:
    """The system-metrics process: ``python -m jupyter_mlflow_k8s.tracking.system_metrics RUN_ID INTERVAL``."""
    run_id, interval_text = (sys.argv[1:] if argv is None else argv)[:2]
    interval = float(interval_text)
    ready = os.dup(1)  # the pipe to the runner; anything printed goes nowhere, never into it
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop.now)  # a job's process group being stopped
    signal.signal(signal.SIGINT, stop.now)
    threading.Thread(target=stop.watch_stdin, name="jmk-stop", daemon=True).start()
    from .cgroup import CgroupUsage

    usage = CgroupUsage()  # the first CPU sample covers the time from here
    if stop.event.wait(interval):
        return 0
    from .bounds import bound_requests, final_requests

    bound_requests()
    import logging

    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)  # it logs at INFO what it starts
    try:
        from .system_monitor import JobSystemMetricsMonitor

        monitor = JobSystemMetricsMonitor(run_id, interval, usage, os.environ.get("MLFLOW_TRACKING_URI"))
    except Exception as exc:  # system metrics are a bonus: the job goes on
        print(f"[jmk] no system metrics for this job: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
        return 0
    stop.sampling = True
    os.write(ready, READY)
    if not stop.event.is_set():
        monitor.log_sample()  # its first interval passed while MLflow was imported
        while not stop.event.wait(interval):
            monitor.log_sample()
    final_requests()  # the job has ended: one short try
    monitor.log_sample()
    sys.stderr.flush()
    os._exit(0)  # MLflow's exit handlers take most of a second and have nothing to do here


if __name__ == "__main__":
    sys.exit(main())
