"""Helpers the tests share (imported as ``from helpers import ...``; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def mlflow_tracking(uri: str) -> Iterator[None]:
    """Point this process's MLflow at ``uri`` for a while, then back to exactly what it was.

    ``mlflow.set_tracking_uri(mlflow.get_tracking_uri())`` is no way back: when nothing was set,
    ``get_tracking_uri()`` answers the default (``sqlite:///mlflow.db``, in the current folder), and
    setting it pins that default over ``$MLFLOW_TRACKING_URI`` for every later test of the process.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before, environment = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None: unset, so the environment decides again
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment


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


def run_with_system_metrics(uri: str, experiment: str, gpus: int, run_name: str | None = None) -> str:
    """A real MLflow run holding system metrics as MLflow's SystemMetricsMonitor logs them: 3 samples, 5 s apart.

    CPU 10/20/30 %, memory 1000/1100/1200 MB (12.5 %), GPU ``i`` at 40 + 20 i + step % with 2048 (i + 1) MB
    (25 %), and one metric of the job's own (``loss``) that resource views must leave out.
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    start = int(time.time() * 1000) - 15_000
    metrics = []
    for step in range(3):
        at = start + step * 5000
        metrics += [
            Metric("system/cpu_utilization_percentage", 10.0 + step * 10, at, step),
            Metric("system/system_memory_usage_megabytes", 1000.0 + step * 100, at, step),
            Metric("system/system_memory_usage_percentage", 12.5, at, step),
            Metric("loss", 1.0 / (step + 1), at, step),
        ]
        for gpu in range(gpus):
            metrics += [
                Metric(f"system/gpu_{gpu}_utilization_percentage", 40.0 + 20 * gpu + step, at, step),
                Metric(f"system/gpu_{gpu}_memory_usage_megabytes", 2048.0 * (gpu + 1), at, step),
                Metric(f"system/gpu_{gpu}_memory_usage_percentage", 25.0, at, step),
            ]
    client.log_batch(run_id, metrics=metrics)
    return run_id


@contextlib.contextmanager
def kernel_client() -> Iterator[Any]:
    """A real ``python3`` kernel (this process's environment) and its ready blocking client; shut down after."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=dict(os.environ))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
