"""A serving endpoint on the test control plane: the node agent runs the real server, which answers on 127.0.0.1.

The Deployment, its readiness probe, the rolling update and the deletion are the real controllers'; only the
node is ours (tests/cluster). Pods share the host network there, so the server's port is a free port of this
machine, and a rollout replaces the pod (maxSurge 0) rather than starting a second server on the same port.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from dataclasses import replace
from typing import Any

import kubernetes
import pytest
from k8s_fixtures import POD_IMAGE, KubeTarget, pod_processes
from serving_fixtures import FEATURES, Served

from jupyter_mlflow_k8s.backends.kubernetes_manifests import PodSettings
from jupyter_mlflow_k8s.serving.kubernetes import (
    EndpointNotFound,
    EndpointNotReady,
    EndpointSpec,
    deploy,
    list_endpoints,
    undeploy,
    wait_ready,
)

pytestmark = pytest.mark.k8s


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def predict(port: int, frame: Any) -> list[Any]:
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return list(json.loads(response.read())["predictions"])


def test_endpoint_serves_rolls_to_a_new_version_and_goes_away(
    node_agent: KubeTarget, k8s_api: Any, k8s_namespace: str, served_model: Served, mlflow_uri: str
) -> None:
    port = free_port()
    settings = PodSettings(namespace=k8s_namespace, image=POD_IMAGE)
    endpoint = EndpointSpec(name="iris", model_uri=f"models:/{served_model.name}@prod", port=port,
                            tracking_uri=mlflow_uri, max_surge=0, max_unavailable=1)
    rows = served_model.frame.head(25)[list(FEATURES)]

    first = deploy(k8s_api, endpoint, settings, credentials={}, wait=180)
    assert (first.model_uri, first.version, first.available, first.ready) == (served_model.uri("1"), "1", 1, True)
    assert predict(port, rows) == served_model.models[0].predict(rows).tolist()
    assert get(port, "/version")["version"] == "1"

    second = deploy(k8s_api, replace(endpoint, model_uri=served_model.uri("2")), settings, credentials={}, wait=180)
    assert (second.version, second.ready) == ("2", True)
    assert get(port, "/version")["version"] == "2"
    assert predict(port, rows) == served_model.models[1].predict(rows).tolist()
    apps = kubernetes.client.AppsV1Api(k8s_api)
    assert apps.read_namespaced_deployment("iris", k8s_namespace).metadata.generation == 2, "one rollout, same object"
    [listed] = list_endpoints(k8s_api, k8s_namespace)
    assert (listed.name, listed.version, listed.ready, listed.autoscaled) == ("iris", "2", True, False)

    undeploy(k8s_api, "iris", k8s_namespace)
    assert not pod_processes(f"{k8s_namespace}/")
    assert list_endpoints(k8s_api, k8s_namespace) == []
    with pytest.raises(OSError):
        get(port, "/ping")
    with pytest.raises(EndpointNotFound, match="No endpoint 'iris'"):
        undeploy(k8s_api, "iris", k8s_namespace)


def test_an_endpoint_that_cannot_load_its_model_says_why(
    node_agent: KubeTarget, k8s_api: Any, k8s_namespace: str, served_model: Served, mlflow_uri: str
) -> None:
    settings = PodSettings(namespace=k8s_namespace, image=POD_IMAGE)
    endpoint = EndpointSpec(name="missing", model_uri=f"models:/{served_model.name}/99", port=free_port(),
                            tracking_uri=mlflow_uri)
    deploy(k8s_api, endpoint, settings, credentials={})
    with pytest.raises(EndpointNotReady) as caught:
        wait_ready(k8s_api, "missing", k8s_namespace, timeout=120)
    message = str(caught.value)
    assert "is failing" in message, message
    assert "exited with code 2 (bad arguments or a model URI that cannot be loaded)" in message, message
    assert "models:/iris-serving/99: no such model version" in message, message
    undeploy(k8s_api, "missing", k8s_namespace)


def test_serve_magic_with_backend_kubernetes_deploys_and_answers(
    shell: Any, node_agent: KubeTarget, k8s_api: Any, k8s_namespace: str, served_model: Served
) -> None:
    """``%serve ... --backend kubernetes``: the magic's path, configured as a user would (c.KubernetesBackend)."""
    config = shell.config.KubernetesBackend
    config.kubeconfig, config.namespace, config.image = str(node_agent.kubeconfig), k8s_namespace, POD_IMAGE
    port = free_port()
    try:
        endpoint = shell.run_line_magic("serve", f"{served_model.uri('1')} --backend kubernetes --port {port} "
                                                 "--name iris-magic --max-batch-size 16")
        assert (endpoint.name, endpoint.version, endpoint.ready) == ("iris-magic", "1", True)
        rows = served_model.frame.head(10)[list(FEATURES)]
        assert predict(port, rows) == served_model.models[0].predict(rows).tolist()
        assert get(port, "/version")["batching"]["max_batch_size"] == 16
        undeploy(k8s_api, "iris-magic", k8s_namespace)
        assert not pod_processes(f"{k8s_namespace}/")
    finally:
        for key in ("kubeconfig", "namespace", "image"):
            config.pop(key, None)
