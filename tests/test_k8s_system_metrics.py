"""System metrics of a Kubernetes job on the test cluster: recorded from inside its pod, the container's.

The job runs in a container of the runner image on the real node, with ``--cpu 1 --memory 512Mi``; its
cell waits (bounded) until its own MLflow run has system metrics, and reads what ``psutil`` sees inside
the container (the node's memory, which MLflow's own CPU monitor would have reported).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from k8s_fixtures import KubeTarget
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.backends.kubernetes import ClusterWatch

pytestmark = pytest.mark.k8s

LIMIT_BYTES = 512 * 1024 * 1024

CELL = """
import time, psutil, mlflow
client = mlflow.MlflowClient()
run_id = mlflow.active_run().info.run_id
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    seen = client.get_run(run_id).data.metrics
    if "system/system_memory_usage_megabytes" in seen and "system/cpu_utilization_percentage" in seen:
        break
    time.sleep(0.5)
node_memory = psutil.virtual_memory().total
"""


@pytest.fixture
def k8s_shell(shell: Any, state_dir: Path, k8s_cluster: KubeTarget, k8s_namespace: str, k8s_mlflow_server: str,
              monkeypatch: pytest.MonkeyPatch) -> Any:
    """The shell with the Kubernetes backend on this test's namespace, and system metrics every second."""
    from helpers import stop_jobs

    config = shell.config.KubernetesBackend
    config.kubeconfig = str(k8s_cluster.kubeconfig)
    config.namespace = k8s_namespace
    config.image = k8s_cluster.pod_image
    config.pods_share_filesystem = False
    shell.config.JMKSettings.system_metrics_interval = 1.0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", k8s_mlflow_server)
    shell.__dict__.pop("_jmk_service", None)
    yield shell
    stop_jobs(state_dir, shell.config)
    for key in ("kubeconfig", "namespace", "image", "pods_share_filesystem"):
        config.pop(key, None)
    shell.config.JMKSettings.pop("system_metrics_interval", None)
    shell.__dict__.pop("_jmk_service", None)
    ClusterWatch.stop_all()


def test_a_pod_records_its_containers_cpu_and_memory(real_node: KubeTarget, k8s_shell: Any) -> None:
    k8s_shell.run_cell_magic("train", "--backend kubernetes --cpu 1 --memory 512Mi", CELL)

    from jupyter_mlflow_k8s.magics.common import service_for

    (record,) = service_for(k8s_shell).list()
    assert record.state.value == "succeeded", record
    client = MlflowClient(record.tracking_uri)
    metrics = client.get_run(record.run_id).data.metrics
    memory = client.get_metric_history(record.run_id, "system/system_memory_usage_megabytes")
    cpu = client.get_metric_history(record.run_id, "system/cpu_utilization_percentage")
    percent = client.get_metric_history(record.run_id, "system/system_memory_usage_percentage")
    assert memory and cpu and percent, metrics
    # The container's, against its limit: not the node's memory, which psutil sees inside the pod.
    assert k8s_shell.user_ns["node_memory"] > LIMIT_BYTES
    assert all(0 < point.value < LIMIT_BYTES / 1e6 for point in memory), [p.value for p in memory]
    assert all(0 < point.value <= 100 for point in percent), [p.value for p in percent]
    assert all(0 <= point.value <= 100 for point in cpu), [p.value for p in cpu]
    print(f"pod --cpu 1 --memory 512Mi: memory MB {[p.value for p in memory]}, % {[p.value for p in percent]}, "
          f"CPU % {[p.value for p in cpu]}; psutil in the pod sees {k8s_shell.user_ns['node_memory'] / 1e6:.0f} MB")
    # MLflow's standard names only: what the MLflow UI's System metrics tab and the sidebar read.
    assert not [name for name in metrics if name.startswith("system/") and "/" in name[len("system/"):]]
