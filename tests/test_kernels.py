"""``%%train`` in real Jupyter kernels (jupyter_client), as a notebook user meets it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from jupyter_client.manager import KernelManager
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@dataclass
class Execution:
    """What one executed cell produced, with arrival times of its stream output."""

    reply: dict[str, Any]
    streams: list[tuple[float, str]] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    displays: list[dict[str, Any]] = field(default_factory=list)
    comms: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(text for _, text in self.streams)


class Kernel:
    """A real kernel with the extension loaded."""

    def __init__(self) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=dict(os.environ))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.run("%load_ext jupyter_mlflow_k8s")

    def run(self, code: str, timeout: float = 120, on_stream: Any = None) -> Execution:
        msg_id = self.kc.execute(code)
        execution = Execution(reply={})
        deadline = time.time() + timeout
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.time()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                execution.streams.append((time.time(), content["text"]))
                if on_stream:
                    on_stream(content["text"])
            elif kind == "comm_open":
                execution.comms.append(content)
            elif kind == "display_data":
                execution.displays.append(content["data"])
            elif kind == "execute_result":
                execution.results.append(content["data"].get("text/plain", ""))
            elif kind == "status" and content["execution_state"] == "idle":
                break
        execution.reply = self.kc.get_shell_msg(timeout=timeout)["content"]
        return execution

    def restart(self) -> None:
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=60)
        self.run("%load_ext jupyter_mlflow_k8s")

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernels(state_dir: Path) -> Iterator[Any]:
    started: list[Kernel] = []

    def start() -> Kernel:
        kernel = Kernel()
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.stop()


def _record(state_dir: Path, job_id: str) -> dict[str, Any]:
    return json.loads((state_dir / "jobs" / job_id / "record.json").read_text())


def _job_ids(state_dir: Path) -> list[str]:
    return [p.name for p in (state_dir / "jobs").iterdir()]


def test_output_streams_while_the_job_runs(kernels: Any, state_dir: Path) -> None:
    kernel = kernels()
    kernel.run("base = 40")
    cell = "%%train\nimport time\nprint('tick', flush=True)\ntime.sleep(3)\nprint('tock')\nresult = base + 2"
    execution = kernel.run(cell)
    assert execution.reply["status"] == "ok", execution.reply
    (job_id,) = _job_ids(state_dir)
    record = _record(state_dir, job_id)
    tick_at = next(at for at, text in execution.streams if "tick" in text)
    assert tick_at < record["finished"]  # seen in the notebook while the job was still running
    assert execution.stdout.index("tick") < execution.stdout.index("tock")
    assert kernel.run("print(result)").stdout == "42\n"
    # The status widget (state, elapsed, resources, cancel button) is in the cell's output.
    assert any("application/vnd.jupyter.widget-view+json" in data for data in execution.displays)


def test_remote_exception_is_raised_in_the_notebook(kernels: Any, state_dir: Path) -> None:
    kernel = kernels()
    execution = kernel.run("%%train\nvalues = [1, 2]\nvalues[5]")
    (job_id,) = _job_ids(state_dir)
    assert execution.reply["status"] == "error" and execution.reply["ename"] == "JobFailed"
    assert job_id in execution.reply["evalue"] and "IndexError: list index out of range" in execution.reply["evalue"]
    assert "values[5]" in execution.reply["evalue"]


def test_jobs_in_a_second_kernel_and_attach_after_restart(kernels: Any, state_dir: Path) -> None:
    first = kernels()
    first.run("offset = 41")
    execution = first.run("%%train --async\nimport time\ntime.sleep(4)\nprint('finishing')\nanswer = offset + 1")
    assert execution.reply["status"] == "ok" and "JobHandle" in execution.results[0]
    (job_id,) = _job_ids(state_dir)

    second = kernels()
    listing = second.run("%jobs").results[0]
    assert job_id in listing

    first.restart()
    assert "NameError" in str(first.run("answer").reply.get("ename"))
    attached = first.run(f"%job attach {job_id}")
    assert attached.reply["status"] == "ok", attached.reply
    assert "finishing" in attached.stdout
    assert first.run("print(answer)").stdout == "42\n"


def test_interrupt_cancels_the_job(kernels: Any, state_dir: Path) -> None:
    kernel = kernels()
    interrupted = []

    def interrupt_once_started(text: str) -> None:
        if "started" in text and not interrupted:
            interrupted.append(True)
            kernel.km.interrupt_kernel()

    execution = kernel.run(
        "%%train\nimport time\nprint('started', flush=True)\ntime.sleep(120)", on_stream=interrupt_once_started
    )
    assert interrupted and execution.reply["status"] == "error"
    assert execution.reply["ename"] == "KeyboardInterrupt", (execution.reply, execution.stdout)
    (job_id,) = _job_ids(state_dir)
    assert f"Interrupted: cancelled job {job_id}" in execution.stdout
    record = wait_for(lambda: (r := _record(state_dir, job_id))["tracking_final"] and r)
    assert record["state"] == "cancelled"
    assert MlflowClient(record["tracking_uri"]).get_run(record["run_id"]).info.status == "KILLED"


def test_cancel_button_of_an_async_job(kernels: Any, state_dir: Path) -> None:
    kernel = kernels()
    execution = kernel.run("%%train --async\nimport time\ntime.sleep(120)")
    (job_id,) = _job_ids(state_dir)
    wait_for(lambda: _record(state_dir, job_id)["state"] == "running")
    (button,) = [c for c in execution.comms if c["data"]["state"].get("_model_name") == "ButtonModel"]
    click = {"comm_id": button["comm_id"], "data": {"method": "custom", "content": {"event": "click"}}}
    kernel.kc.shell_channel.send(kernel.kc.session.msg("comm_msg", click))
    record = wait_for(lambda: (r := _record(state_dir, job_id))["tracking_final"] and r)
    assert record["state"] == "cancelled"


def test_live_metrics_in_the_status_widget(kernels: Any, state_dir: Path) -> None:
    kernel = kernels()
    updates: list[str] = []
    seen_at: list[float] = []
    cell = (
        "%%train\nimport mlflow, time\n"
        "for i in range(4):\n    mlflow.log_metric('loss', 1.0 / (i + 1), step=i)\n    time.sleep(0.8)\n"
    )
    msg_id = kernel.kc.execute(cell)
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "comm_msg":
            value = msg["content"]["data"].get("state", {}).get("value", "")
            if "loss" in str(value):
                updates.append(str(value))
                seen_at.append(time.time())
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    (job_id,) = _job_ids(state_dir)
    record = _record(state_dir, job_id)
    assert updates, "the widget never showed the metric"
    assert seen_at[0] < record["finished"]  # shown while the job was still running
    assert "<svg" in updates[-1] and "loss <b>0.25</b>" in updates[-1]
    assert record["state"] == "succeeded"
