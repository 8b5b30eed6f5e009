"""The pipeline engine's kernel client and its MLflow thread, with real kernels and a real store."""

from __future__ import annotations

import os
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from jupyter_mlflow_k8s.pipelines.engine import KernelPool, PipelineEngine
from jupyter_mlflow_k8s.pipelines.kernel import CLIENT_CLASS, ReadyKernelClient
from jupyter_mlflow_k8s.pipelines.spec import pipeline
from tests.test_pipelines import notebook

pytestmark = pytest.mark.slow


@pytest.fixture
def manager() -> Any:
    km = KernelManager(kernel_name="python3", client_class=CLIENT_CLASS)
    km.start_kernel()
    yield km
    km.shutdown_kernel(now=True)


def stream_of(client: Any, request: str) -> str:
    """Everything the request printed, read from IOPub until its idle status."""
    text = ""
    while True:
        msg = client.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != request:
            continue
        if msg["msg_type"] == "stream":
            text += msg["content"]["text"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return text


def test_a_ready_client_misses_nothing_the_kernel_publishes_next(manager: Any) -> None:
    """What the quiet-period wait guarded against: output lost because IOPub was not subscribed yet."""
    for attempt in range(5):  # a new client each time, as nbclient makes one per notebook
        client = manager.client()
        assert isinstance(client, ReadyKernelClient)
        client.start_channels()
        try:
            client.wait_for_ready(timeout=30)
            assert client.shell_channel.is_alive()
            request = client.execute(f"print('first output {attempt}')")
            assert stream_of(client, request) == f"first output {attempt}\n"
            try:  # nothing of the kernel_info exchange is left over for the notebook to trip on
                leftover = client.get_iopub_msg(timeout=0.3)
            except Empty:
                leftover = None
            assert leftover is None, leftover
        finally:
            client.stop_channels()


def test_a_dead_kernel_is_reported_not_waited_on(manager: Any) -> None:
    client = manager.client()
    client.start_channels()
    try:
        os.kill(manager.provisioner.pid, 9)
        with pytest.raises(RuntimeError, match=r"died|didn't respond"):
            client.wait_for_ready(timeout=10)
    finally:
        client.stop_channels()


def test_mlflow_unreachable_the_pipeline_still_runs(state_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """MLflow is best effort and on a thread of its own: a store that cannot be opened costs no step."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    notebook(tmp_path / "a.ipynb", "x = 1", "from jupyter_mlflow_k8s import output\noutput('y', x + 1)")
    notebook(tmp_path / "b.ipynb", "y = 0", "from jupyter_mlflow_k8s import output\noutput('z', y * 10)")
    built = (pipeline("offline", base_dir=tmp_path).step("a", "a.ipynb")
             .step("b", "b.ipynb", needs="a", parameters={"y": "{{ steps.a.outputs.y }}"}).build())
    run = PipelineEngine().run(built)

    assert run.state == "succeeded", {s.name: s.reason for s in run.steps.values()}
    assert run.steps["b"].outputs == {"z": 20} and not run.mlflow_run_id
    assert "pipeline offline: not tracked in MLflow" in capsys.readouterr().out


def test_steps_log_to_the_engines_mlflow_and_keep_artifacts_in_the_state_dir(
        state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the embedded default (no MLFLOW_TRACKING_URI), a step's kernel gets the engine's store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    notebook(tmp_path / "where.ipynb", "x = 1",
             "import os\nfrom jupyter_mlflow_k8s import output\noutput('uri', os.environ.get('MLFLOW_TRACKING_URI'))")
    engine = PipelineEngine()
    run = engine.run(pipeline("where", base_dir=tmp_path).step("where", "where.ipynb").build())

    assert run.state == "succeeded", {s.name: s.reason for s in run.steps.values()}
    assert engine.settings.tracking_uri.startswith("sqlite:")
    assert run.steps["where"].outputs == {"uri": engine.settings.tracking_uri}
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(engine.settings.tracking_uri).get_experiment_by_name("pipeline-where")
    assert experiment is not None
    assert experiment.artifact_location.startswith(engine.settings.artifact_root), experiment.artifact_location


def test_a_step_whose_kernel_dies_while_starting_runs_in_a_new_one(state_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that dies before it answers once (its port taken meanwhile, say) ran nothing: the step is not failed."""
    notebook(tmp_path / "a.ipynb", "x = 1", "from jupyter_mlflow_k8s import output\noutput('y', x + 1)")
    handed: list[Any] = []
    take = KernelPool.take

    def take_first_dead(pool: KernelPool, kernel_name: str, cwd: str) -> tuple[Any, Path]:
        manager, outputs = take(pool, kernel_name, cwd)
        if not handed:
            os.kill(manager.provisioner.pid, 9)
            manager.provisioner.process.wait()
        handed.append(manager)
        return manager, outputs

    monkeypatch.setattr(KernelPool, "take", take_first_dead)
    run = PipelineEngine().run(pipeline("restarted", base_dir=tmp_path).step("a", "a.ipynb").build())

    assert run.state == "succeeded", {s.name: s.reason for s in run.steps.values()}
    assert run.steps["a"].outputs == {"y": 2} and run.steps["a"].attempts == 1 and len(handed) == 2
