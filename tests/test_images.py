"""The images users get, built from docker/ with buildah and run on the real node.

The runner image is what every Kubernetes test's pods run (tests/cluster builds it for the cluster); the
single-user image (docker/singleuser/Dockerfile on a base with the Jupyter Docker Stacks contract) is built
by ``tests/cluster/cluster prepare`` and run here as JupyterHub would start it.
"""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest
from helpers import wait_for
from k8s_fixtures import KubeTarget

pytestmark = pytest.mark.k8s


def run_pod(core: Any, namespace: str, name: str, image: str, script: str, timeout: float = 300) -> tuple[str, str]:
    """Run ``sh -c script`` in a pod of ``image``; its phase and log once it ends."""
    core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "containers": [{"name": "main", "image": image, "command": ["sh", "-c", script]}]}})
    ended = wait_for(lambda: (p := core.read_namespaced_pod_status(name, namespace)).status.phase in (
        "Succeeded", "Failed") and p, timeout=timeout, interval=0.5)
    return ended.status.phase, core.read_namespaced_pod_log(name, namespace)


def test_the_runner_image_runs_jobs_as_its_non_root_user(real_node: KubeTarget, k8s_api: Any,
                                                         k8s_namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)
    phase, log = run_pod(core, k8s_namespace, "runner", real_node.pod_image,
                         "id -u; echo $HOME; command -v python; python -m jupyter_mlflow_k8s.runner --help 2>&1 | head -1; "
                         "python -c 'import torch, mlflow, s3fs; print(torch.__version__)'")
    assert phase == "Succeeded", log
    uid, home, python, _usage, torch_version = log.strip().splitlines()
    assert (uid, home, python) == ("1000", "/home/jovyan", "/opt/venv/bin/python")
    assert torch_version == "2.13.0+cpu", "torch from the pinned CPU wheel, not a CUDA build"


def test_the_single_user_image_has_the_sidebar_the_magics_and_jupyterhub(
    real_node: KubeTarget, k8s_api: Any, k8s_namespace: str
) -> None:
    from cluster import images

    if real_node.cluster is None:
        pytest.skip("builds the image here and pushes it to the test cluster's registry")
    built = images.build(("singleuser",))  # cached after `cluster prepare`
    ref = images.push(built["singleuser"], f"127.0.0.1:{real_node.cluster.ports['registry']}")
    core = kubernetes.client.CoreV1Api(k8s_api)
    phase, log = run_pod(core, k8s_namespace, "singleuser", ref,
                         "id -u; jupyterhub-singleuser --version; jupyter labextension list 2>&1; "
                         "jupyter server extension list 2>&1; "
                         "python -c 'import jupyter_mlflow_k8s.runner, torch; print(torch.__version__)'")
    assert phase == "Succeeded", log
    lines = log.splitlines()
    assert lines[0] == "1000"
    assert any("jupyter-mlflow-k8s" in line and "enabled" in line for line in lines), log
    assert any("jupyter_mlflow_k8s.labapp" in line and "enabled" in line for line in lines), log
    assert lines[-1] == "2.13.0+cpu"
