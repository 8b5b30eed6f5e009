"""The example notebooks, executed for real (papermill, a real kernel, real jobs, real MLflow)."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import papermill
import pytest
from helpers import process_gone, stop_jobs
from k8s_fixtures import KubeTarget, pod_processes

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_quickstart_trains_returns_and_records(state_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "quickstart.out.ipynb"
    nb = papermill.execute_notebook(
        str(NOTEBOOKS / "quickstart.ipynb"),
        str(out),
        parameters={"epochs": 15},
        kernel_name="python3",
        cwd=str(NOTEBOOKS.parent),
        progress_bar=False,
    )
    text = "".join(
        output.get("text", "") for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    assert "training on cpu" in text and "epoch 14 loss" in text
    assert "held-out accuracy" in text and "run status FINISHED" in text
    assert "served predictions match the returned model: True" in text
    assert 'jmk_requests_total{code="200",model="quickstart-mlp",version="1"} 1.0' in text
    jobs = list((state_dir / "jobs").iterdir())
    assert len(jobs) == 1


def execute(notebook: Path, out: Path, cwd: Path, **parameters: object) -> tuple[object, str]:
    """Run ``notebook`` with papermill in a real kernel; return it executed and the text of its outputs."""
    nb = papermill.execute_notebook(str(notebook), str(out), parameters=parameters, kernel_name="python3",
                                    cwd=str(cwd), progress_bar=False)
    text = "".join(
        output.get("text", "") or output.get("data", {}).get("text/plain", "")
        for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    return nb, text


def test_pipeline_notebook_runs_caches_and_traces_in_mlflow(state_dir: Path, tmp_path: Path) -> None:
    # A copy, so that what MLflow writes next to the notebooks (./mlruns) stays in tmp_path.
    folder = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS / "pipeline", folder / "pipeline")
    shutil.copy(NOTEBOOKS / "pipeline.ipynb", folder)
    _, text = execute(folder / "pipeline.ipynb", tmp_path / "pipeline.out.ipynb", folder,
                      data_dir=str(tmp_path / "data"))
    assert "pipeline churn: 4 steps, valid" in text
    assert "register: cached: same notebook, parameters, upstream outputs and image as run" in text
    assert "train: ran: parameter c: 1.0 -> 0.5" in text
    assert "prepare   FINISHED  cache hit: true" in text and "train     FINISHED  cache hit: false" in text
    assert "churn-classifier version" in text
    assert len(list((state_dir / "pipelines" / "runs").iterdir())) == 3
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["features-2000-0.npz", "model-c0.5.pkl",
                                                                     "model-c1.0.pkl"]


def test_serving_notebook_batches_splits_traffic_and_shows_drift(state_dir: Path, tmp_path: Path) -> None:
    from jupyter_mlflow_k8s.serving.manager import ServingManager

    try:
        _, text = execute(NOTEBOOKS / "serving.ipynb", tmp_path / "serving.out.ipynb", NOTEBOOKS, requests=200)
    finally:
        for endpoint in ServingManager().list():  # this test's state dir: stop what a failed run left
            if endpoint.running:
                ServingManager().stop(endpoint.name)
        stop_jobs(state_dir)
    assert "registered model as models:/churn-serving/" in text and "registered challenger as" in text
    assert re.search(r"requests answered per version: \{'\d+': \d+, '\d+': \d+\}", text)
    assert re.search(r"version \d+: \d+ requests answered in \d+ model calls \(mean batch \d", text)
    assert "drift of version" in text and "after the shift" in text
    assert "churn-demo is stopped" in text
    (endpoint,) = ServingManager().list()
    assert endpoint.status == "stopped" and process_gone(endpoint.pid)


@pytest.mark.k8s
def test_kubernetes_notebook_trains_and_serves_on_the_test_cluster(
    state_dir: Path, tmp_path: Path, k8s_namespace: str, k8s_cluster: KubeTarget, k8s_mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", k8s_mlflow_server)  # the kernel's, and through it the pods'
    if k8s_cluster.real_node:
        reach: dict[str, object] = {"serve_port": 8080, "endpoint_url": "cluster-ip"}
    else:
        with socket.socket() as probe:  # under the node agent pods share this machine's network
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        reach = {"serve_port": port, "endpoint_url": f"http://127.0.0.1:{port}"}
    _, text = execute(
        NOTEBOOKS / "kubernetes.ipynb", tmp_path / "kubernetes.out.ipynb", NOTEBOOKS,
        kubeconfig=str(k8s_cluster.kubeconfig), namespace=k8s_namespace, image=k8s_cluster.pod_image,
        pods_share_filesystem=False, **reach,
    )
    assert "training in pod jmk-" in text and "succeeded on kubernetes: Job jmk-" in text
    assert f"in namespace {k8s_namespace}" in text
    assert "[jmk] registered model as models:/k8s-demo/" in text
    assert "served:   [" in text and f"endpoints left in {k8s_namespace} []" in text
    assert not pod_processes(f"{k8s_namespace}/k8s-demo-")  # the endpoint's pods are gone
