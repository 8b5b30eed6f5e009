"""``%%train`` and ``%job`` through a real IPython shell, real subprocess jobs, real MLflow (SQLite)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import process_gone, wait_for
from IPython.core.error import UsageError
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.exceptions import JobFailed
from jupyter_mlflow_k8s.magics.common import service_for
from jupyter_mlflow_k8s.models import JobState

pytestmark = pytest.mark.slow


def _run(shell: Any, line: str, cell: str) -> Any:
    return shell.run_cell_magic("train", line, cell)


def _only_record(shell: Any) -> Any:
    records = service_for(shell).list()
    assert len(records) == 1
    return records[0]


def _mlflow_run(record: Any) -> Any:
    return MlflowClient(record.tracking_uri).get_run(record.run_id)


def _wait_closed(shell: Any, job_id: str) -> Any:
    return wait_for(lambda: (r := service_for(shell).get(job_id)).tracking_final and r)


def test_inputs_in_results_out(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_cell(
        "import math\n"
        "data = list(range(10))\n"
        "def square(v):\n    return v * v\n"
        "class Scaler:\n    def __init__(self, k):\n        self.k = k\n    def __call__(self, v):\n        return v * self.k\n"
    )
    value = _run(
        shell,
        "--experiment magic-tests --run-name basic",
        "scale = Scaler(3)\ntotal = sum(scale(square(v)) for v in data)\nroot = math.sqrt(total)\nprint('total is', total)\nroot * 2",
    )
    assert shell.user_ns["total"] == 3 * sum(v * v for v in range(10))
    assert isinstance(shell.user_ns["scale"], object) and shell.user_ns["scale"](2) == 6
    assert value == pytest.approx(2 * shell.user_ns["root"])
    out = capsys.readouterr().out
    assert "total is 855" in out and "returned scale, total, root" in out
    record = _only_record(shell)
    assert record.state is JobState.SUCCEEDED and set(record.spec.inputs) == {"Scaler", "square", "data", "math"}
    run = _mlflow_run(record)
    assert run.info.status == "FINISHED" and run.info.run_name == "basic"
    assert run.data.tags["jmk.job_id"] == record.job_id
    assert Path(record.log_path).read_text().strip() == "total is 855"


def test_params_are_variables_and_mlflow_params(shell: Any) -> None:
    _run(
        shell,
        "--param lr=0.5 --param name=adam --param epochs=3 --env JMK_TEST_FLAG=on",
        "import os, mlflow\nresult = (lr * epochs, name, os.environ['JMK_TEST_FLAG'])\nmlflow.log_metric('loss', 0.25)",
    )
    assert shell.user_ns["result"] == (1.5, "adam", "on")
    record = _only_record(shell)
    run = _mlflow_run(record)
    assert run.data.params["lr"] == "0.5" and run.data.params["name"] == "adam"
    assert run.data.metrics["loss"] == 0.25
    assert os.environ["MLFLOW_TRACKING_URI"] == record.tracking_uri


def test_out_and_no_out(shell: Any) -> None:
    _run(shell, "--out b", "a = 1\nb = 2")
    assert "b" in shell.user_ns and "a" not in shell.user_ns
    _run(shell, "--no-out", "c = 3")
    assert "c" not in shell.user_ns


def test_unpicklable_result_is_skipped_not_fatal(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _run(shell, "", "import threading\nlock = threading.Lock()\nn = 5")
    assert shell.user_ns["n"] == 5 and "lock" not in shell.user_ns
    assert "lock was not returned" in capsys.readouterr().out


def test_remote_exception_carries_job_id_and_traceback(shell: Any) -> None:
    shell.run_cell("def explode(v):\n    raise ValueError(f'bad value {v}')")
    with pytest.raises(JobFailed) as info:
        _run(shell, "", "print('about to fail')\nexplode(42)")
    record = _only_record(shell)
    text = str(info.value)
    assert record.job_id in text and "ValueError: bad value 42" in text
    assert "explode(42)" in info.value.remote_traceback and "runner.py" not in info.value.remote_traceback
    assert record.state is JobState.FAILED
    assert "about to fail" in Path(record.log_path).read_text()
    assert _mlflow_run(_wait_closed(shell, record.job_id)).info.status == "FAILED"


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("--nope", "x = 1", "unrecognized arguments: --nope"),
        ("--gpus abc", "x = 1", "--gpus 'abc' is not a number of GPUs"),
        ("--memory lots", "x = 1", "--memory 'lots' is not a memory size"),
        ("--cpu fast", "x = 1", "--cpu 'fast' is not a CPU amount"),
        ("--gpus 64", "x = 1", "more GPUs than this machine has"),
        ("", "x = (1,\n", "syntax error on line 1"),
        ("", "y = lock", "Cannot send 'lock' (type _thread.lock)"),
        ("--out zz", "x = 1", "--out names zz, which the cell never assigns"),
        ("--timeout soon", "x = 1", "--timeout 'soon' is not a duration"),
        ("--param 1x=2", "x = 1", "must be a Python identifier"),
        ("--env NOEQUALS", "x = 1", "--env 'NOEQUALS' is not KEY=VALUE"),
        ("--backend nowhere", "x = 1", "Unknown backend 'nowhere'; known: kubernetes, local, pipeline"),
        ("", "!ls\nx = 1", "shell commands (!...) do not run inside"),
        ("", "   \n", "cell is empty"),
    ],
)
def test_bad_input_is_a_usage_error_and_starts_nothing(
    shell: Any, mlflow_uri: str, line: str, cell: str, message: str
) -> None:
    shell.run_cell("import threading\nlock = threading.Lock()")
    client = MlflowClient(mlflow_uri)
    before = sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())
    with pytest.raises(UsageError, match=None) as info:
        _run(shell, line, cell)
    assert message in str(info.value)
    assert service_for(shell).list() == []
    after = sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())
    assert after == before


def test_async_cancel_kills_the_job_and_the_run(shell: Any) -> None:
    handle = _run(shell, "--async", "import time\nprint('working', flush=True)\ntime.sleep(60)")
    record = wait_for(lambda: (r := service_for(shell).get(handle.job_id)).state is JobState.RUNNING and r)
    wait_for(lambda: "working" in Path(record.log_path).read_text())
    shell.run_line_magic("job", f"cancel {handle.job_id}")
    record = _wait_closed(shell, handle.job_id)
    assert record.state is JobState.CANCELLED
    wait_for(lambda: process_gone(record.runner_pid) and process_gone(record.pid))
    assert _mlflow_run(record).info.status == "KILLED"
    assert "working" in Path(record.log_path).read_text()


def test_runner_killed_with_sigkill_ends_failed_with_log(shell: Any) -> None:
    handle = _run(shell, "--async", "import time\nprint('before the kill', flush=True)\ntime.sleep(60)")
    record = wait_for(lambda: (r := service_for(shell).get(handle.job_id)).runner_pid and r)
    wait_for(lambda: "before the kill" in Path(record.log_path).read_text())
    os.kill(record.runner_pid, signal.SIGKILL)
    record = _wait_closed(shell, handle.job_id)
    assert record.state is JobState.FAILED and "SIGKILL" in record.message
    assert "before the kill" in Path(record.log_path).read_text()
    run = _mlflow_run(record)
    assert run.info.status == "FAILED"
    artifacts = [a.path for a in MlflowClient(record.tracking_uri).list_artifacts(record.run_id, "jmk")]
    assert artifacts == ["jmk/cell.py", "jmk/inputs.json", "jmk/output.log"]
    with pytest.raises(JobFailed, match="killed by SIGKILL"):
        shell.run_line_magic("job", f"attach {handle.job_id}")


def test_supervisor_killed_is_detected_and_its_runner_stopped(shell: Any) -> None:
    handle = _run(shell, "--async", "import time\ntime.sleep(60)")
    record = wait_for(lambda: (r := service_for(shell).get(handle.job_id)).runner_pid and r)
    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: process_gone(record.pid))
    record = service_for(shell).get(handle.job_id)
    assert record.state is JobState.FAILED and "supervisor" in record.message
    wait_for(lambda: process_gone(record.runner_pid))
    assert _mlflow_run(_wait_closed(shell, handle.job_id)).info.status == "FAILED"


def test_timeout_stops_the_job(shell: Any) -> None:
    with pytest.raises(JobFailed, match=r"timed out after 1 s"):
        _run(shell, "--timeout 1", "import time\ntime.sleep(60)")
    record = _only_record(shell)
    assert record.state is JobState.FAILED and record.elapsed < 30
    assert _mlflow_run(record).info.status == "FAILED"


def test_concurrency_bound_queues_jobs(shell: Any, tmp_path: Path) -> None:
    shell.config.LocalBackend.max_concurrent_jobs = 1
    release = tmp_path / "release"
    # The first job holds its slot until the test releases it, however slow the machine is.
    hold = f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.05)\na = 1"
    try:
        first = _run(shell, "--async", hold)
        second = _run(shell, "--async", "b = 2")
        wait_for(lambda: service_for(shell).get(first.job_id).state is JobState.RUNNING)
        time.sleep(0.5)
        assert service_for(shell).get(second.job_id).state is JobState.QUEUED
        released = time.time()
        release.touch()
        shell.run_line_magic("job", f"attach {second.job_id}")
        one, two = service_for(shell).get(first.job_id), service_for(shell).get(second.job_id)
        assert shell.user_ns["b"] == 2 and one.state is JobState.SUCCEEDED
        # The second started only once the first had ended.
        assert two.started >= released, (one, two)
    finally:
        del shell.config.LocalBackend["max_concurrent_jobs"]


def test_gpus_get_distinct_devices(shell: Any, tmp_path: Path) -> None:
    # This machine has no GPU: configured ids stand in for what nvidia-smi would list.
    shell.config.LocalBackend.gpu_ids = ["0", "1"]
    release = tmp_path / "release"
    # Each job holds its GPU until the test releases them: the two one-GPU jobs run at once however
    # slow the machine is, and the two-GPU job can start only after both.
    code = (f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.05)\n"
            "devices = os.environ['CUDA_VISIBLE_DEVICES']")
    try:
        with pytest.raises(UsageError, match=r"more GPUs than this machine has \(2: 0, 1\)"):
            _run(shell, "--gpus 3", "x = 1")
        first = _run(shell, "--async --gpus 1", code)
        second = _run(shell, "--async --gpus 1", code)
        wait_for(lambda: all(service_for(shell).get(handle.job_id).state is JobState.RUNNING
                             for handle in (first, second)))
        both = _run(shell, "--async --gpus 2", code)
        release.touch()
        seen = []
        for handle in (first, second, both):
            shell.run_line_magic("job", f"attach {handle.job_id}")
            seen.append(shell.user_ns["devices"])
        assert sorted(seen[:2]) == ["0", "1"] and seen[2] == "0,1"
        _run(shell, "", "import os\ndevices = os.environ['CUDA_VISIBLE_DEVICES']")
        assert shell.user_ns["devices"] == ""
    finally:
        del shell.config.LocalBackend["gpu_ids"]


def test_progress_bar_does_not_flood(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _run(
        shell,
        "",
        "import sys\nfor i in range(3000):\n    sys.stderr.write(f'\\rstep {i}')\nsys.stderr.write('\\n')\nprint('done')",
    )
    out = capsys.readouterr().out
    assert "step 2999\ndone\n" in out and out.count("step") == 1
    record = _only_record(shell)
    assert Path(record.log_path).read_bytes().count(b"\r") == 3000  # the log keeps everything


def test_jobs_logs_status_and_attach(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _run(shell, "", "print('line one')\nvalue = 7")
    record = _only_record(shell)
    table = shell.run_line_magic("jobs", "")
    assert record.job_id in repr(table) and "succeeded" in repr(table) and record.run_id in repr(table)
    assert "<td>succeeded</td>" in table._repr_html_()
    capsys.readouterr()
    shell.run_line_magic("job", f"logs {record.job_id[:5]}")
    assert capsys.readouterr().out == "line one\n"
    shell.run_line_magic("job", f"status {record.job_id}")
    assert f"job {record.job_id} · succeeded" in capsys.readouterr().out
    del shell.user_ns["value"]
    shell.run_line_magic("job", f"attach {record.job_id}")
    assert shell.user_ns["value"] == 7
    with pytest.raises(UsageError, match="No job 'ffffffff'"):
        shell.run_line_magic("job", "attach ffffffff")
    with pytest.raises(UsageError, match="Usage"):
        shell.run_line_magic("job", "explode 1")


def test_help_has_examples() -> None:
    from jupyter_mlflow_k8s.magics.train import TrainMagics

    doc = TrainMagics.train.__doc__ or ""
    assert "Examples" in doc and "--gpus" in doc and "%job attach" in doc


def test_autolog_inside_the_cell_logs_to_the_job_run(shell: Any) -> None:
    shell.run_cell("import numpy as np\nX = np.arange(20.0).reshape(10, 2)\ny = X.sum(axis=1)")
    _run(
        shell,
        "--experiment autolog-tests",
        "import mlflow\nfrom sklearn.linear_model import Ridge\nmlflow.autolog(log_models=False)\nmodel = Ridge(alpha=0.5).fit(X, y)",
    )
    record = _only_record(shell)
    run = _mlflow_run(record)
    assert run.data.params["alpha"] == "0.5" and "training_score" in run.data.metrics
    experiment_runs = MlflowClient(record.tracking_uri).search_runs([record.experiment_id])
    assert [r.info.run_id for r in experiment_runs] == [record.run_id]  # no second run was opened
