"""``%%train --procs P`` on the local backend, and the launcher's gang behaviour on loopback "nodes".

Real IPython shell, real torchrun (torch's elastic agent, c10d rendezvous, gloo), real MLflow (SQLite).
Two launchers started by hand on 127.0.0.10 and 127.0.0.11 play two pods: one machine's loopback
stands in for the pod network, with the same rendezvous, abort key and exit statuses as in pods.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from distributed_cells import DDP_CELL, RANK_ONE_RAISES, STEPS, check_ddp_result
from IPython.core.error import UsageError
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.exceptions import JobFailed
from jupyter_mlflow_k8s.magics.common import service_for
from jupyter_mlflow_k8s.models import JobState
from jupyter_mlflow_k8s.payload import Payload, write_payload
from jupyter_mlflow_k8s.ranks import EXIT_STOPPED
from jupyter_mlflow_k8s.storage import LocalStorage

pytestmark = pytest.mark.slow


def _only_record(shell: Any) -> Any:
    records = service_for(shell).list()
    assert len(records) == 1
    return records[0]


def test_procs_two_train_in_step_one_run_both_ranks_logged(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_cell_magic("train", "--procs 2 --experiment ddp-local", DDP_CELL)
    out = capsys.readouterr().out
    check_ddp_result(shell.user_ns, world=2)
    record = _only_record(shell)
    assert record.state is JobState.SUCCEEDED
    # every line of the cell's output carries its rank, in the cell and in the kept log
    log = Path(record.log_path).read_text()
    for text in (out, log):
        assert re.search(r"^\[rank 0\] checksum \S+ of rank 0 on 0/2$", text, re.M), text
        assert re.search(r"^\[rank 1\] checksum \S+ of rank 1 on 1/2$", text, re.M), text
    client = MlflowClient(record.tracking_uri)
    run = client.get_run(record.run_id)
    assert run.data.params["jmk.procs"] == "2" and run.data.params["jmk.world_size"] == "2"
    assert run.data.params["jmk.nodes"] == "1"
    history = client.get_metric_history(record.run_id, "loss")
    assert [m.step for m in history] == list(range(STEPS))  # once per step: rank 0 alone logged
    experiment = client.get_experiment(run.info.experiment_id)
    assert len(client.search_runs([experiment.experiment_id])) >= 1
    assert all(r.info.run_id == record.run_id for r in client.search_runs(
        [experiment.experiment_id], f"attributes.start_time >= {int(record.created * 1000)}"))


def test_a_failing_rank_fails_the_job_with_its_traceback(shell: Any) -> None:
    started = time.monotonic()
    with pytest.raises(JobFailed) as info:
        shell.run_cell_magic("train", "--procs 2", RANK_ONE_RAISES)
    took = time.monotonic() - started
    record = _only_record(shell)
    assert record.state is JobState.FAILED and record.exit_code == 1
    assert str(info.value).startswith(f"Job {record.job_id} failed: rank 1 failed (exit code 1): RuntimeError: "
                                      "rank one is broken")
    assert 'raise RuntimeError("rank one is broken")' in info.value.remote_traceback
    assert record.message.startswith("rank 1 failed with exit code 1\nLast lines of rank 1:")
    log = Path(record.log_path).read_text()
    assert "[rank 0] waiting for the others" in log and "never printed" not in log
    print(f"rank 1 raised; the cell had the job's failure {took:.1f} s after submitting")


def test_logs_of_one_rank(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_cell_magic("train", "--procs 2", "import os\nprint('I am', os.environ['RANK'])")
    record = _only_record(shell)
    capsys.readouterr()
    shell.run_line_magic("job", f"logs {record.job_id} --rank 1")
    assert capsys.readouterr().out == "I am 1\n"
    with pytest.raises(UsageError, match="has ranks 0 to 1"):
        shell.run_line_magic("job", f"logs {record.job_id} --rank 2")
    with pytest.raises(UsageError, match="--rank needs a rank number"):
        shell.run_line_magic("job", f"logs {record.job_id} --rank x")
    shell.run_cell_magic("train", "", "x = 1")
    single = service_for(shell).list()[0]
    with pytest.raises(UsageError, match="ran as one process: it has no ranks"):
        shell.run_line_magic("job", f"logs {single.job_id} --rank 0")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--nodes 0", "--nodes 0 runs nothing"),
        ("--nodes abc", "--nodes 'abc' is not a number of pods"),
        ("--nodes 2", "--nodes 2 runs the cell on 2 pods, which needs a cluster: add --backend kubernetes"),
        ("--procs 0", "--procs 0 runs nothing"),
        ("--procs 2.5", "--procs '2.5' is not a number of processes"),
        ("--procs 3 --gpus 2", "--gpus 2 cannot be shared by --procs 3"),
        ("--procs 2 --rendezvous-timeout never", "--rendezvous-timeout 'never' is not a duration"),
    ],
)
def test_bad_distributed_flags_submit_nothing(shell: Any, line: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("train", line, "x = 1")
    assert message in str(info.value)
    assert service_for(shell).list() == []


def _payload(tmp_path: Path, code: str) -> tuple[str, LocalStorage]:
    storage = LocalStorage(str(tmp_path / "storage"))
    payload = Payload("d15c0de5", code, storage.url, [], {}, ["rank"], {}, None, ["rank"])
    return write_payload(storage, payload), storage


def _launch(url: str, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "jupyter_mlflow_k8s.distributed", url, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/usr/bin:/bin", "JMK_JOB_ID": "d15c0de5", "PYTHONPATH": ":".join(sys.path)})


def test_two_nodes_stop_together_when_a_rank_fails_before_they_meet(tmp_path: Path) -> None:
    """Rank 1 fails before init_process_group, where rank 0 would wait 30 minutes: the abort key stops it."""
    code = ("import os, time, torch.distributed as dist\nrank = int(os.environ['RANK'])\n"
            "if rank == 1:\n    time.sleep(1)\n    raise ValueError('rank 1 gives up')\n"
            "dist.init_process_group()\n")
    url, storage = _payload(tmp_path, code)
    nodes = ["--nodes", "2", "--procs", "1", "--hosts", "127.0.0.1{rank}", "--port", "29467",
             "--rendezvous-timeout", "60"]
    started = time.monotonic()
    first = _launch(url, *nodes, "--node-rank", "0")
    time.sleep(2)  # the second pod starts late: the rendezvous waits for it
    second = _launch(url, *nodes, "--node-rank", "1")
    out1, _ = second.communicate(timeout=120)
    out0, _ = first.communicate(timeout=120)
    took = time.monotonic() - started
    assert second.returncode == 1, out1
    assert "[rank 1] ValueError: rank 1 gives up" in out1
    assert "[jmk] rank 1 failed with exit code 1" in out1
    assert first.returncode == EXIT_STOPPED, out0
    assert "[jmk] stopping: rank 1 on node 1 failed with exit code 1" in out0
    assert not storage.exists("jobs/d15c0de5/result.json")
    print(f"both nodes ended {took:.1f} s after the first started")


def test_two_nodes_agree_and_rank_zero_writes_the_result(tmp_path: Path) -> None:
    code = ("import torch, torch.distributed as dist\ndist.init_process_group()\nrank = dist.get_rank()\n"
            "total = torch.tensor([rank + 1.0])\ndist.all_reduce(total)\ntotal = total.item()\n")
    url, storage = _payload(tmp_path, code)
    nodes = ["--nodes", "2", "--procs", "1", "--hosts", "127.0.0.1{rank}", "--port", "29468",
             "--rendezvous-timeout", "60"]
    launched = [_launch(url, *nodes, "--node-rank", str(rank)) for rank in (1, 0)]
    outputs = [p.communicate(timeout=120)[0] for p in launched]
    assert [p.returncode for p in launched] == [0, 0], outputs
    document = storage.get_bytes("jobs/d15c0de5/result.json")
    assert b'"ok": true' in document and b'"name": "rank"' in document


def test_torch_missing_is_said_by_the_launcher(tmp_path: Path) -> None:
    url, _ = _payload(tmp_path, "x = 1")
    no_torch = [sys.executable, "-c", "import sys, runpy; sys.modules['torch'] = None; "
                "sys.argv[0] = 'launcher'; runpy.run_module('jupyter_mlflow_k8s.distributed', run_name='__main__')"]
    command = [*no_torch, url, "--nodes", "1", "--procs", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 2
    assert "[jmk] torch is not installed where this job runs" in done.stderr
    assert "Use an image with torch" in done.stderr
