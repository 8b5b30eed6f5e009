"""The local backend: each job is a detached supervisor process that runs the shared runner.

``prepare`` starts ``python -m jupyter_mlflow_k8s.backends.local_supervisor JOB_DIR`` in its
own session, so the job outlives the kernel; the supervisor (see that module) queues for a slot
and GPUs, runs the runner and records the end. This module holds what the notebook side needs:
the configurable traits, the checks made before anything is submitted, cancellation, and
noticing a supervisor that died without recording an end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from typing import Any

import psutil
from traitlets import Float, Int, List, Unicode, default, observe

from ..exceptions import JMKUsageError
from ..gpus import detect_gpus
from ..lifecycle import end_job
from ..models import JobRecord, JobSpec, JobState
from ..util.processes import process_alive, process_started, reap_children, track_child
from .base import Backend
from .local_supervisor import take_ticket

GRACE_SECONDS = 5.0
# A record that has had no supervisor for this long was abandoned mid-submission.
NEVER_LAUNCHED_SECONDS = 300.0


class LocalBackend(Backend):
    """Runs jobs as processes on this machine."""

    name = "local"

    max_concurrent_jobs = Int(
        help="How many local jobs run at once; the rest wait in the queue. "
        "Example: c.LocalBackend.max_concurrent_jobs = 4",
    ).tag(config=True)

    gpu_ids = List(
        Unicode(),
        allow_none=True,
        default_value=None,
        help="GPU indices jobs may use; default: those nvidia-smi lists (and CUDA_VISIBLE_DEVICES "
        "allows). Example: c.LocalBackend.gpu_ids = ['0', '1']",
    ).tag(config=True)

    python = Unicode(
        sys.executable,
        help="Python interpreter that runs the supervisor and the runner. "
        "Example: c.LocalBackend.python = '/opt/conda/envs/train/bin/python'",
    ).tag(config=True)

    kill_grace_seconds = Float(
        GRACE_SECONDS,
        help="Seconds between SIGTERM and SIGKILL when a job is cancelled. "
        "Example: c.LocalBackend.kill_grace_seconds = 30",
    ).tag(config=True)

    system_metrics_after = Float(
        help="No longer used: every job records system metrics from its start, every "
        "c.JMKSettings.system_metrics_interval seconds (0 turns them off).",
    ).tag(config=True)

    system_metrics_interval = Float(
        help="No longer used: c.JMKSettings.system_metrics_interval sets it for every backend.",
    ).tag(config=True)

    @observe("system_metrics_after", "system_metrics_interval")
    def _moved(self, change: Any) -> None:
        warnings.warn(
            f"c.LocalBackend.{change['name']} is no longer used: jobs of every backend record system metrics "
            "every c.JMKSettings.system_metrics_interval seconds (default 5; 0 turns them off). "
            f"Set that instead, e.g. c.JMKSettings.system_metrics_interval = 10.",
            FutureWarning,  # shown by default: a setting of the user's that does nothing now
            stacklevel=2,
        )

    @default("max_concurrent_jobs")
    def _default_slots(self) -> int:
        return max(2, os.cpu_count() or 2)

    def available_gpus(self) -> list[str]:
        """GPU ids this backend hands out."""
        return list(self.gpu_ids) if self.gpu_ids is not None else list(detect_gpus())

    def check(self, spec: JobSpec) -> None:
        """Refuse GPU requests this machine can never satisfy, jobs across several machines, and Indexed Jobs."""
        if spec.batch_shards:
            raise JMKUsageError(
                f"This job runs batch prediction shards {', '.join(map(str, spec.batch_shards))} as one Kubernetes "
                "Indexed Job, which the local backend does not have: run it with --backend kubernetes, or give "
                "jmk batch-predict --backend local, which runs each shard as a job of its own. Nothing was submitted."
            )
        if spec.nodes > 1:
            raise JMKUsageError(
                f"--nodes {spec.nodes} runs the cell on {spec.nodes} pods, which needs a cluster: add --backend "
                f"kubernetes. On this machine alone, --procs {spec.nodes * spec.procs_per_node} runs as many "
                "processes. Nothing was submitted."
            )
        wanted = spec.resources.gpus
        have = self.available_gpus()
        if wanted > len(have):
            raise JMKUsageError(
                f"--gpus {wanted} asks for more GPUs than this machine has ({len(have)}"
                f"{': ' + ', '.join(have) if have else ''}). Ask for at most {len(have)}, or run on a "
                "cluster with --backend kubernetes. Nothing was submitted."
            )

    def launch(self, record: JobRecord) -> JobRecord:
        """Nothing left to do: the supervisor started in :meth:`prepare` sees the payload."""
        return record

    def prepare(self, record: JobRecord) -> JobRecord:
        """Start the supervisor, detached; it waits for the payload and a free slot."""
        folder = self.store.job_dir(record.job_id)
        locks = self.store.root.parent / "locks"
        options = {
            "slots": self.max_concurrent_jobs,
            "gpus": self.available_gpus(),
            "python": self.python,
            "grace": self.kill_grace_seconds,
            "locks": str(locks),
        }
        (folder / "launch.json").write_text(json.dumps(options))
        take_ticket(locks, record.job_id)
        with open(folder / "supervisor.log", "ab") as errors:
            proc = subprocess.Popen(
                [self.python, "-m", "jupyter_mlflow_k8s.backends.local_supervisor", str(folder)],
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
                start_new_session=True,
                close_fds=True,
                env={**os.environ, **self.job_environment},
            )
        track_child(proc)
        return self.store.update(record.job_id, pid=proc.pid, pid_start=process_started(proc.pid))

    def cancel(self, record: JobRecord) -> None:
        """Ask the supervisor to stop the job (it records CANCELLED and closes the run)."""
        (self.store.job_dir(record.job_id) / "cancel").touch()
        if process_alive(record.pid, record.pid_start):
            os.kill(int(record.pid or 0), signal.SIGTERM)

    def refresh(self, record: JobRecord) -> JobRecord:
        """Mark a job FAILED when its supervisor vanished without recording an end."""
        reap_children()
        if record.state.terminal or process_alive(record.pid, record.pid_start):
            return record
        if record.pid is None:
            if record.age < NEVER_LAUNCHED_SECONDS:
                return record  # being submitted right now
            return end_job(self.store, record.job_id, JobState.FAILED, "never started: its submitter exited first")
        message = "the job's supervisor process exited without recording an end (killed?)"
        record = end_job(self.store, record.job_id, JobState.FAILED, message)
        _stop_orphan_runner(record)
        return record


def _stop_orphan_runner(record: JobRecord) -> None:
    """Stop a runner whose supervisor is gone: nobody would record how it ends."""
    if not record.runner_pid:
        return
    try:
        proc = psutil.Process(record.runner_pid)
        if "jupyter_mlflow_k8s.runner" in proc.cmdline() and str(record.payload_uri) in proc.cmdline():
            proc.terminate()
    except psutil.Error:
        pass

