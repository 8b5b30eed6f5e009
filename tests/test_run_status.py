"""The MLflow status of a job's run right after it ends, on a real ``mlflow server`` and on SQLite."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.exceptions import JobFailed
from jupyter_mlflow_k8s.magics.common import service_for

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "server"])
def tracking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, state_dir: Path) -> str:
    """The tracking URI jobs use: the SQLite default, or a real mlflow server."""
    if request.param == "server":
        uri = str(request.getfixturevalue("mlflow_server"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        return uri
    return os.environ["MLFLOW_TRACKING_URI"]


@pytest.fixture
def tracked_shell(tracking: str, shell: Any) -> Any:
    shell.__dict__.pop("_jmk_service", None)  # pick up the tracking URI of this parameter
    return shell


def _status(shell: Any) -> tuple[Any, str]:
    (record,) = service_for(shell).list()
    return record, MlflowClient(record.tracking_uri).get_run(record.run_id).info.status


def test_success_is_finished_right_after(tracked_shell: Any, tracking: str) -> None:
    tracked_shell.run_cell_magic("train", "", "import mlflow\nmlflow.log_metric('m', 1.0)\nx = 1")
    record, status = _status(tracked_shell)
    assert record.tracking_uri == tracking and status == "FINISHED"
    assert MlflowClient(tracking).get_run(record.run_id).data.metrics["m"] == 1.0


def test_exception_is_failed_right_after(tracked_shell: Any) -> None:
    with pytest.raises(JobFailed):
        tracked_shell.run_cell_magic("train", "", "raise RuntimeError('boom')")
    assert _status(tracked_shell)[1] == "FAILED"


def test_cancel_is_killed_right_after(tracked_shell: Any) -> None:
    handle = tracked_shell.run_cell_magic("train", "--async", "import time\ntime.sleep(60)")
    wait_for(lambda: service_for(tracked_shell).get(handle.job_id).state.value == "running")
    tracked_shell.run_line_magic("job", f"cancel {handle.job_id}")
    assert _status(tracked_shell)[1] == "KILLED"


def test_sigkill_is_failed(tracked_shell: Any) -> None:
    handle = tracked_shell.run_cell_magic("train", "--async", "import time\ntime.sleep(60)")
    record = wait_for(lambda: (r := service_for(tracked_shell).get(handle.job_id)).runner_pid and r)
    os.kill(record.runner_pid, signal.SIGKILL)
    wait_for(lambda: service_for(tracked_shell).get(handle.job_id).tracking_final)
    assert _status(tracked_shell)[1] == "FAILED"


def test_kernel_restart_during_the_job(tracking: str, state_dir: Path) -> None:
    from test_kernels import Kernel

    kernel = Kernel()
    try:
        kernel.kc.execute("%%train\nimport time\nprint('started', flush=True)\ntime.sleep(3)\nanswer = 42")
        jobs = state_dir / "jobs"
        wait_for(lambda: jobs.exists() and any((p / "output.log").exists() for p in jobs.iterdir()), timeout=60)
        (folder,) = list(jobs.iterdir())
        wait_for(lambda: "started" in (folder / "output.log").read_text(), timeout=60)
        kernel.restart()  # the watching kernel is gone while the job runs
    finally:
        kernel.stop()
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.jobs import JobService

    service = JobService(load_settings(state_dir=str(state_dir)))
    record = wait_for(lambda: (r := service.get(folder.name)).tracking_final and r, timeout=60)
    assert record.state.value == "succeeded"
    assert MlflowClient(record.tracking_uri).get_run(record.run_id).info.status == "FINISHED"
