"""What a job's MLflow run records: params, tags, artifacts, metrics (fast path), on a real store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.exceptions import JobFailed
from jupyter_mlflow_k8s.magics.common import service_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _record(shell: Any) -> Any:
    (record,) = service_for(shell).list()
    return wait_for(lambda: (r := service_for(shell).get(record.job_id)).tracking_final and r)


def test_run_records_params_tags_and_artifacts(shell: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    shell.run_cell("epochs = 3\nlr = 0.5\nname = 'adam'\ndata = list(range(100))")
    cell = "total = sum(data) * lr * epochs\nprint(name, total)"
    shell.run_cell_magic("train", "--param seed=7 --gpus 0 --memory 1Gi --tag team=vision", cell)
    record = _record(shell)
    client = MlflowClient(record.tracking_uri)
    run = client.get_run(record.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["epochs"] == "3" and params["lr"] == "0.5" and params["name"] == "adam" and "data" not in params
    assert params["seed"] == "7" and params["jmk.memory"] == "1Gi" and params["jmk.gpus"] == "0"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and tags["jmk.git.dirty"] in ("true", "false")
    assert tags["jmk.job_id"] == record.job_id and tags["jmk.backend"] == "local" and tags["team"] == "vision"
    assert {"jmk.host", "jmk.cell_sha256", "mlflow.user"} <= set(tags)
    artifacts = Path(client.download_artifacts(record.run_id, "jmk", str(Path(record.log_path).parent / "dl")))
    assert (artifacts / "cell.py").read_text().strip() == cell
    manifest = json.loads((artifacts / "inputs.json").read_text())
    assert {e["name"] for e in manifest["inputs"]} == {"data", "lr", "epochs", "name"}
    assert all(len(e["sha256"]) == 64 and e["size"] > 0 for e in manifest["inputs"])
    assert (artifacts / "output.log").read_text() == "adam 7425.0\n"


def test_many_metrics_are_buffered_and_all_arrive(shell: Any) -> None:
    cell = (
        "import mlflow, time\n"
        "start = time.perf_counter()\n"
        "for i in range(5000):\n    mlflow.log_metric('loss', 1 / (i + 1), step=i)\n"
        "mlflow.log_metrics({'acc': 0.5, 'f1': 0.25}, step=1)\n"
        "per_call = (time.perf_counter() - start) / 5002"
    )
    shell.run_cell_magic("train", "", cell)
    record = _record(shell)
    client = MlflowClient(record.tracking_uri)
    history = client.get_metric_history(record.run_id, "loss")
    assert len(history) == 5000 and sorted(m.step for m in history) == list(range(5000))
    assert client.get_run(record.run_id).data.metrics["f1"] == 0.25
    assert shell.user_ns["per_call"] < 0.003  # a buffered call, not a store round trip (3 ms here)


def test_metrics_are_flushed_when_the_cell_fails(shell: Any) -> None:
    with pytest.raises(JobFailed):
        shell.run_cell_magic("train", "", "import mlflow\nfor i in range(10):\n    mlflow.log_metric('m', i, step=i)\n1 / 0")
    record = _record(shell)
    assert len(MlflowClient(record.tracking_uri).get_metric_history(record.run_id, "m")) == 10


def test_metrics_survive_sigkill_after_a_flush_interval(shell: Any) -> None:
    cell = (
        "import mlflow, time\nfor i in range(50):\n    mlflow.log_metric('m', i, step=i)\n"
        "time.sleep(2.5)\nprint('flushed', flush=True)\ntime.sleep(60)"
    )
    handle = shell.run_cell_magic("train", "--async", cell)
    record = wait_for(lambda: (r := service_for(shell).get(handle.job_id)).runner_pid and r)
    wait_for(lambda: "flushed" in Path(record.log_path).read_text(), timeout=60)
    os.kill(record.runner_pid, signal.SIGKILL)
    record = wait_for(lambda: (r := service_for(shell).get(handle.job_id)).tracking_final and r)
    client = MlflowClient(record.tracking_uri)
    assert client.get_run(record.run_id).info.status == "FAILED"
    assert len(client.get_metric_history(record.run_id, "m")) == 50


def test_a_run_named_by_the_user_gets_mlflow_unchanged(shell: Any) -> None:
    cell = "import mlflow\nwith mlflow.start_run(nested=True) as child:\n    mlflow.log_metric('inner', 1.0)\nchild_id = child.info.run_id"
    shell.run_cell_magic("train", "", cell)
    record = _record(shell)
    client = MlflowClient(record.tracking_uri)
    child = client.get_run(shell.user_ns["child_id"])
    assert child.data.metrics == {"inner": 1.0} and child.data.tags["mlflow.parentRunId"] == record.run_id
    assert "inner" not in client.get_run(record.run_id).data.metrics
