"""``%%train --sweep`` on the local backend: trials as real jobs, real MLflow, a real kernel for the restart.

The cells' objectives are known functions of their params, so the best trial is known in advance.
Concurrency is checked from the trials' own start and end times, never from the test's clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from IPython.core.error import UsageError
from mlflow.tracking import MlflowClient
from test_kernels import Kernel

from jupyter_mlflow_k8s.exceptions import JobFailed
from jupyter_mlflow_k8s.magics.common import service_for
from jupyter_mlflow_k8s.magics.train import sweeps_for
from jupyter_mlflow_k8s.models import JobState

pytestmark = pytest.mark.slow

# Its minimum is at a=2, b=20: (2, 20) is trial 4 of the grid (a varies slowest).
GRID = "a=[1, 2]; b=[10, 20, 30]"
GRID_CELL = """\
import mlflow
score = (a - 2) ** 2 + (b - 20) ** 2 / 100
mlflow.log_metric("score", score)
model = {"a": a, "b": b, "offset": offset}
"""


def _sweep_dirs(state_dir: Path) -> list[Path]:
    root = state_dir / "sweeps"
    return sorted(root.iterdir()) if root.exists() else []


def _max_overlap(trials: list[dict[str, Any]]) -> int:
    """The most trials running at one instant, from their start and end times."""
    events = sorted([(t["started"], 1) for t in trials] + [(t["finished"], -1) for t in trials],
                    key=lambda e: (e[0], e[1]))  # fmt: skip
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def check_grid_runs_and_listing(shell: Any, record: dict[str, Any], frame: Any) -> None:
    """The GRID sweep in MLflow (a parent run with its best trial, a child run per trial) and in ``%jobs``."""
    client = MlflowClient(record["tracking_uri"])
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["jmk.sweep.best_trial"] == "4"
    assert parent.data.tags["jmk.sweep.best_run_id"] == frame.loc[4, "run_id"]
    assert parent.data.metrics["best_score"] == 0.0
    assert parent.data.params["sweep.objective"] == "score:min" and parent.data.params["offset"] == "7"
    for index, row in frame.iterrows():
        child = client.get_run(row["run_id"])
        assert child.data.tags["mlflow.parentRunId"] == record["parent_run_id"]
        assert child.data.params["a"] == str(row["a"]) and child.data.params["b"] == str(row["b"])
        assert child.data.metrics["score"] == row["score"] and child.info.status == "FINISHED"
        assert child.data.tags["jmk.sweep.trial"] == str(index)
    # %jobs: the sweep is one entry, its trials are not listed apart
    listing = repr(shell.run_line_magic("jobs", ""))
    assert record["sweep_id"] in listing and "6 trials: 6 succeeded" in listing
    assert not any(job_id in listing for job_id in frame["job_id"])


def test_a_grid_returns_its_known_optimum_with_parent_and_child_runs(
    shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.user_ns["offset"] = 7
    shell.run_cell_magic("train", f'--sweep "{GRID}" --objective score:min --parallel 2 --experiment sweep-grid',
                         GRID_CELL)  # fmt: skip
    out = capsys.readouterr().out
    assert shell.user_ns["model"] == {"a": 2, "b": 20, "offset": 7}  # the best trial's names came back
    frame = shell.user_ns["sweep"]
    assert len(frame) == 6 and set(frame["state"]) == {"succeeded"}
    assert list(zip(frame["a"], frame["b"], strict=True)) == [(1, 10), (1, 20), (1, 30), (2, 10), (2, 20), (2, 30)]
    assert frame.loc[frame["best"]].index.tolist() == [4]
    assert frame.loc[4, "score"] == 0.0
    assert "best trial 4 (a=2, b=20) score=0" in out
    record = sweeps_for(shell).list()[0]
    assert record["state"] == "succeeded" and record["best"] == 4
    check_grid_runs_and_listing(shell, record, frame)
    # `jmk jobs` lists it the same way; `jmk logs s-...` is its controller's log
    jmk = [sys.executable, "-m", "jupyter_mlflow_k8s.cli"]
    listing = subprocess.run([*jmk, "jobs"], capture_output=True, text=True, check=True).stdout
    assert record["sweep_id"] in listing and not any(job_id in listing for job_id in frame["job_id"])
    log = subprocess.run([*jmk, "logs", record["sweep_id"]], capture_output=True, text=True, check=True).stdout
    assert f"sweep {record['sweep_id']}: succeeded" in log


def test_random_trials_never_run_more_than_parallel_at_once(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cell = "import time\ntime.sleep(0.5)\nloss = (lr - 0.01) ** 2\n"
    shell.run_cell_magic(
        "train", '--sweep "lr=uniform(0, 0.1)" --objective loss:min --search random --trials 12 --parallel 3 '
        "--seed 7 --no-out", cell,
    )  # fmt: skip
    frame = shell.user_ns["sweep"]
    assert len(frame) == 12 and set(frame["state"]) == {"succeeded"}
    assert frame["lr"].between(0, 0.1).all() and frame["lr"].nunique() == 12
    record = sweeps_for(shell).list()[0]
    slots = service_for(shell).backend("local").max_concurrent_jobs  # type: ignore[attr-defined]
    if slots < 3:  # the machine runs fewer local jobs at once than asked: the cell says so
        assert f"--parallel 3 runs {slots} trials at a time" in capsys.readouterr().out
    jobs = [service_for(shell).get(t["job_id"]) for t in record["trials"]]
    assert _max_overlap([{"started": j.started, "finished": j.finished} for j in jobs]) <= 3
    # the objective was a number the cell assigned (not a logged metric): the best has the smallest loss
    assert frame.loc[frame["best"], "loss"].item() == frame["loss"].min()


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cell = "if b == 20:\n    raise ValueError('no good with b=20')\nscore = a + b\n"
    shell.run_cell_magic("train", f'--sweep "{GRID}" --objective score:max --max-failures 2 --no-out', cell)
    frame = shell.user_ns["sweep"]
    failed = frame[frame["state"] == "failed"]
    assert failed.index.tolist() == [1, 4]
    assert all("ValueError: no good with b=20" in e for e in failed["error"])
    assert frame.loc[frame["best"]].index.tolist() == [5]  # a=2, b=30
    client = MlflowClient(sweeps_for(shell).list()[0]["tracking_uri"])
    assert {client.get_run(r).info.status for r in failed["run_id"]} == {"FAILED"}


def test_more_failures_than_allowed_stop_the_sweep(shell: Any) -> None:
    cell = "raise RuntimeError('broken cell')\n"
    with pytest.raises(JobFailed, match="more than --max-failures 1"):
        shell.run_cell_magic("train", f'--sweep "{GRID}" --objective score:min --max-failures 1', cell)
    frame = shell.user_ns["sweep"]
    assert (frame["state"] == "failed").sum() == 2 and len(frame) == 2  # no trial started after the second failure
    record = sweeps_for(shell).list()[0]
    assert record["state"] == "failed"
    assert MlflowClient(record["tracking_uri"]).get_run(record["parent_run_id"]).info.status == "FAILED"


def test_an_objective_the_cell_never_logs_fails_the_trial_naming_it(shell: Any) -> None:
    with pytest.raises(JobFailed, match="val_loss was never logged"):
        shell.run_cell_magic("train", '--sweep "x=[1]" --objective val_loss:min', "loss = x\n")
    assert "val_loss was never logged" in shell.user_ns["sweep"]["error"].iloc[0]


def test_prune_stops_a_poor_trial_early(shell: Any) -> None:
    pytest.importorskip("optuna")
    cell = (
        "import time, mlflow\n"
        "for step in range(12):\n"
        "    mlflow.log_metric('loss', q * (1 + 1 / (step + 1)), step=step)\n"
        "    time.sleep(0.25 if q < 5 else 0.6)\n"
        "loss = q\n"
    )
    # the median pruner starts after 2 complete trials; trial 2 stays under their median, trial 3 does not
    shell.run_cell_magic("train", '--sweep "q=[0.3, 0.1, 0.15, 9]" --objective loss:min --prune --no-out', cell)
    frame = shell.user_ns["sweep"]
    assert frame["state"].tolist() == ["succeeded", "succeeded", "succeeded", "pruned"]
    record = sweeps_for(shell).list()[0]
    # a completed trial gave the pruner every step, not only those seen while it ran: trial 2 is compared with both
    assert [trial["step"] for trial in record["trials"][:3]] == [11, 11, 11]
    pruned = record["trials"][3]
    assert pruned["step"] < 11 and "pruned at step" in pruned["error"]
    job = service_for(shell).get(pruned["job_id"])
    assert job.state is JobState.CANCELLED
    run = MlflowClient(record["tracking_uri"]).get_run(pruned["run_id"])
    assert run.data.tags["jmk.sweep.pruned"] == "true" and run.info.status == "KILLED"
    assert max(m.step for m in MlflowClient(record["tracking_uri"]).get_metric_history(pruned["run_id"], "loss")) < 11


def test_repeats_are_grouped_and_the_best_group_wins(shell: Any) -> None:
    shell.run_cell_magic("train", '--sweep "x=[1, 2]" --objective score:max --repeats 2 --no-out', "score = x * 10\n")
    frame = shell.user_ns["sweep"]
    assert frame["repeat"].tolist() == [0, 1, 0, 1]
    assert frame["group"].nunique() == 2 and frame.loc[frame["best"], "x"].item() == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('--sweep "lr=normal(0, 1)" --objective loss:min', "normal"),
        ('--sweep "batch=[]" --objective loss:min', "empty"),
        ('--sweep "batch=[1, 2]" --objective loss:min --parallel 0', "--parallel"),
        ('--sweep "batch=[1, 2]" --objective loss', ":min or :max"),
        ('--sweep "lr=loguniform(1e-4, 1e-1)" --objective loss:min --search grid', "continuous"),
        ('--sweep "batch=[1, 2]"', "--objective"),
        ('--sweep "batch=[1, 2]" --objective loss:min --register clf', "every trial"),
        ('--sweep "batch=[1, 2]" --objective loss:min --param batch=3', "both swept and a --param"),
        ("--objective loss:min", "only make sense with --sweep"),
    ],
)
def test_bad_sweep_input_is_refused_before_anything_runs(shell: Any, state_dir: Path, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        shell.run_cell_magic("train", line, "loss = batch\n")
    assert not _sweep_dirs(state_dir)
    assert not service_for(shell).list()


def test_cancel_stops_every_trial(shell: Any) -> None:
    handle = shell.run_cell_magic(
        "train", '--sweep "x=[1, 2, 3, 4]" --objective y:min --parallel 2 --async', "import time\ntime.sleep(60)\ny = x\n"
    )
    sweeps = sweeps_for(shell)
    wait_for(lambda: sum(t["state"] == "running" for t in sweeps.get(handle.sweep_id)["trials"]) == 2, timeout=60)
    jmk = [sys.executable, "-m", "jupyter_mlflow_k8s.cli", "cancel", handle.sweep_id]
    stopped = subprocess.run(jmk, capture_output=True, text=True, check=True).stdout
    assert f"sweep {handle.sweep_id}: cancelled" in stopped
    handle.cancel()  # a second cancel of an ended sweep changes nothing
    record = sweeps.get(handle.sweep_id)
    assert record["state"] == "cancelled"
    assert [t["state"] for t in record["trials"]] == ["cancelled", "cancelled"]  # the other two never started
    for trial in record["trials"]:
        assert service_for(shell).get(trial["job_id"]).state is JobState.CANCELLED
    parent = MlflowClient(record["tracking_uri"]).get_run(record["parent_run_id"])
    assert parent.info.status == "KILLED"
    wait_for(lambda: not sweeps.store.controller_alive(record), timeout=30)


def test_attach_collects_a_sweep_after_a_kernel_restart(state_dir: Path) -> None:
    kernel = Kernel()
    try:
        kernel.run("offset = 7")
        execution = kernel.run(f'%%train --sweep "{GRID}" --objective score:min --parallel 3 --async\n{GRID_CELL}')
        assert execution.reply["status"] == "ok", execution.reply
        assert "SweepHandle" in execution.results[0]
        (folder,) = _sweep_dirs(state_dir)
        kernel.restart()  # the sweep's controller is not the kernel's: it goes on
        listing = kernel.run("%jobs").results[0]
        assert folder.name in listing
        execution = kernel.run(f"%job attach {folder.name}")
        assert execution.reply["status"] == "ok", execution.reply
        assert kernel.run("print(model['a'], model['b'], len(sweep))").stdout == "2 20 6\n"
        record = json.loads((folder / "sweep.json").read_text())
        assert record["state"] == "succeeded" and record["best"] == 4
    finally:
        kernel.stop()


def test_a_killed_controller_is_started_again_by_attach_and_launches_no_trial_twice(shell: Any) -> None:
    handle = shell.run_cell_magic(
        "train", '--sweep "x=[1, 2, 3, 4]" --objective y:min --async', "import time\ntime.sleep(1)\ny = (x - 3) ** 2\n"
    )
    sweeps = sweeps_for(shell)
    wait_for(lambda: len(sweeps.get(handle.sweep_id)["trials"]) == 2, timeout=60)
    pid = sweeps.get(handle.sweep_id)["controller_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not sweeps.store.controller_alive(sweeps.get(handle.sweep_id)), timeout=10)
    shell.run_line_magic("job", f"attach {handle.sweep_id}")  # starts a controller again, which carries on
    record = sweeps.get(handle.sweep_id)
    assert record["state"] == "succeeded" and record["controller_pid"] != pid
    assert shell.user_ns["y"] == 0 and shell.user_ns["sweep"]["x"].tolist() == [1, 2, 3, 4]
    assert len({t["job_id"] for t in record["trials"]}) == 4 and len(service_for(shell).list()) == 4


def test_tpe_asks_optuna_for_each_trial_and_keeps_its_study_with_the_sweep(shell: Any, state_dir: Path) -> None:
    pytest.importorskip("optuna")
    shell.run_cell_magic(
        "train", '--sweep "x=uniform(-5, 5); k=[1, 2]" --objective y:min --search tpe --trials 8 --parallel 2 --seed 3',
        "y = (x - 1) ** 2 + k\n",
    )  # fmt: skip
    frame = shell.user_ns["sweep"]
    assert len(frame) == 8 and set(frame["state"]) == {"succeeded"}
    assert frame["x"].between(-5, 5).all() and set(frame["k"]) <= {1, 2}
    assert shell.user_ns["y"] == frame["y"].min()
    import optuna

    (folder,) = _sweep_dirs(state_dir)
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    assert sorted(t.value for t in study.trials) == sorted(frame["y"])  # every trial told, with its objective
