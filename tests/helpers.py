"""Helpers the tests share (imported as ``from helpers import ...``; fixtures live in conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path

import psutil


def stop_jobs(state_dir: Path, config: object = None) -> None:
    """Leave no job processes behind: cancel what is still running under this state dir."""
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.jobs import JobService

    if not (state_dir / "jobs").exists():
        return
    service = JobService(load_settings(state_dir=str(state_dir)), backend_config=config)
    if (state_dir / "sweeps").exists():  # their controllers first, or they launch the next trials
        from jupyter_mlflow_k8s.sweeps import SweepService

        sweeps = SweepService(service)
        for sweep in sweeps.list():
            sweeps.cancel(sweep["sweep_id"], timeout=30)
    for record in service.list():
        if not record.state.terminal:
            service.cancel_and_wait(record.job_id, timeout=15)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def process_gone(pid: int | None) -> bool:
    """Whether ``pid`` has exited (zombies count as gone)."""
    if not pid:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
