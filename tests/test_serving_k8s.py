"""A serving endpoint on the test cluster: the Deployment, its readiness probe, the rolling update, the
Service and the deletion are the real controllers', kube-proxy's and the kubelet's.

On the real node the server runs in the runner image with its own pod IP, loads the model from a tracking
server over the pod network, and is reached through its ClusterIP Service, from this machine and by DNS
name from another pod. Under the node agent (no real node here) pods share the host network, so the
server's port is a free port of this machine, reached on 127.0.0.1, and a rollout replaces the pod
(maxSurge 0) rather than starting a second server on the same port.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from dataclasses import replace
from typing import Any

import kubernetes
import pytest
from helpers import wait_for
from k8s_fixtures import KubeTarget, pod_processes
from serving_fixtures import FEATURES, Served

from jupyter_mlflow_k8s.k8s.pods import PodSettings
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


def address(target: KubeTarget, api: Any, namespace: str, name: str, port: int) -> str:
    """Where this machine reaches the endpoint: its Service's cluster IP (real node), or 127.0.0.1:port."""
    if not target.real_node:
        return f"http://127.0.0.1:{port}"
    service = kubernetes.client.CoreV1Api(api).read_namespaced_service(name, namespace)
    return f"http://{service.spec.cluster_ip}:80"


def get(base: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}{path}", timeout=10) as response:
        return json.loads(response.read())


def version_served(base: str) -> str | None:
    """The model version the endpoint answers with; None while the address refuses (kube-proxy has not yet
    written the Service's rules for its new endpoints: on the real node that lags the pod's readiness)."""
    try:
        return str(get(base, "/version")["version"])
    except OSError:
        return None


def predict(base: str, frame: Any) -> list[Any]:
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
    request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return list(json.loads(response.read())["predictions"])


@pytest.fixture
def serving_tracking(k8s_cluster: KubeTarget, k8s_served_model: Served, k8s_mlflow_server: str) -> str:
    """The tracking URI endpoint pods load ``k8s_served_model`` from."""
    return k8s_mlflow_server


def test_endpoint_serves_rolls_to_a_new_version_and_goes_away(
    k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str, k8s_served_model: Served, serving_tracking: str
) -> None:
    served_model, port = k8s_served_model, free_port()
    settings = PodSettings(namespace=k8s_namespace, image=k8s_cluster.pod_image)
    endpoint = EndpointSpec(name="iris", model_uri=f"models:/{served_model.name}@prod", port=port,
                            tracking_uri=serving_tracking, max_surge=0, max_unavailable=1)
    rows = served_model.frame.head(25)[list(FEATURES)]

    first = deploy(k8s_api, endpoint, settings, credentials={}, wait=180)
    assert (first.model_uri, first.version, first.available, first.ready) == (served_model.uri("1"), "1", 1, True)
    base = address(k8s_cluster, k8s_api, k8s_namespace, "iris", port)
    assert wait_for(lambda: version_served(base), timeout=30, interval=0.5) == "1"
    assert predict(base, rows) == served_model.models[0].predict(rows).tolist()

    second = deploy(k8s_api, replace(endpoint, model_uri=served_model.uri("2")), settings, credentials={}, wait=180)
    assert (second.version, second.ready) == ("2", True)
    # The Service's endpoints follow the new pod once it is ready (kube-proxy resyncs within seconds).
    wait_for(lambda: version_served(base) == "2", timeout=30, interval=0.5)
    assert predict(base, rows) == served_model.models[1].predict(rows).tolist()
    apps = kubernetes.client.AppsV1Api(k8s_api)
    assert apps.read_namespaced_deployment("iris", k8s_namespace).metadata.generation == 2, "one rollout, same object"
    [listed] = list_endpoints(k8s_api, k8s_namespace)
    assert (listed.name, listed.version, listed.ready, listed.autoscaled) == ("iris", "2", True, False)

    undeploy(k8s_api, "iris", k8s_namespace)
    assert not pod_processes(f"{k8s_namespace}/")
    assert list_endpoints(k8s_api, k8s_namespace) == []
    if not k8s_cluster.real_node:
        with pytest.raises(OSError):
            get(base, "/ping")
    assert kubernetes.client.CoreV1Api(k8s_api).list_namespaced_service(k8s_namespace).items == []
    with pytest.raises(EndpointNotFound, match="No endpoint 'iris'"):
        undeploy(k8s_api, "iris", k8s_namespace)


def test_an_endpoint_that_cannot_load_its_model_says_why(
    k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str, k8s_served_model: Served, serving_tracking: str
) -> None:
    settings = PodSettings(namespace=k8s_namespace, image=k8s_cluster.pod_image)
    endpoint = EndpointSpec(name="missing", model_uri=f"models:/{k8s_served_model.name}/99", port=free_port(),
                            tracking_uri=serving_tracking)
    deploy(k8s_api, endpoint, settings, credentials={})
    with pytest.raises(EndpointNotReady) as caught:
        wait_ready(k8s_api, "missing", k8s_namespace, timeout=120)
    message = str(caught.value)
    assert "is failing" in message, message
    assert "exited with code 2 (bad arguments or a model URI that cannot be loaded)" in message, message
    assert "models:/iris-serving/99: no such model version" in message, message
    undeploy(k8s_api, "missing", k8s_namespace)


def test_serve_magic_with_backend_kubernetes_deploys_and_answers(
    shell: Any, k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str, k8s_served_model: Served,
    serving_tracking: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``%serve ... --backend kubernetes``: the magic's path, configured as a user would (c.KubernetesBackend)."""
    served_model = k8s_served_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", serving_tracking)
    config = shell.config.KubernetesBackend
    config.kubeconfig, config.namespace, config.image = str(k8s_cluster.kubeconfig), k8s_namespace, k8s_cluster.pod_image
    port = free_port()
    try:
        endpoint = shell.run_line_magic("serve", f"{served_model.uri('1')} --backend kubernetes --port {port} "
                                                 "--name iris-magic --max-batch-size 16")
        assert (endpoint.name, endpoint.version, endpoint.ready) == ("iris-magic", "1", True)
        rows = served_model.frame.head(10)[list(FEATURES)]
        base = address(k8s_cluster, k8s_api, k8s_namespace, "iris-magic", port)
        assert wait_for(lambda: version_served(base), timeout=30, interval=0.5) == "1"
        assert predict(base, rows) == served_model.models[0].predict(rows).tolist()
        assert get(base, "/version")["batching"]["max_batch_size"] == 16
        undeploy(k8s_api, "iris-magic", k8s_namespace)
        assert not pod_processes(f"{k8s_namespace}/")
    finally:
        for key in ("kubeconfig", "namespace", "image"):
            config.pop(key, None)


def test_an_endpoint_answers_another_pod_by_its_service_dns_name(
    real_node: KubeTarget, k8s_api: Any, k8s_namespace: str, k8s_served_model: Served, serving_tracking: str
) -> None:
    """Cluster DNS and kube-proxy: a client pod asks ``http://iris-dns.<ns>.svc.cluster.local/invocations``."""
    settings = PodSettings(namespace=k8s_namespace, image=real_node.pod_image)
    deploy(k8s_api, EndpointSpec(name="iris-dns", model_uri=k8s_served_model.uri("1"), port=8080,
                                 tracking_uri=serving_tracking), settings, credentials={}, wait=180)
    rows = k8s_served_model.frame.head(5)[list(FEATURES)]
    body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))})
    url = f"http://iris-dns.{k8s_namespace}.svc.cluster.local/invocations"
    client = (f"import json, urllib.request\nrequest = urllib.request.Request({url!r}, data={body!r}.encode(), "
              "headers={'Content-Type': 'application/json'})\n"
              "print(json.dumps(json.loads(urllib.request.urlopen(request, timeout=30).read())['predictions']))")
    core = kubernetes.client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, {"metadata": {"name": "client"}, "spec": {
        "restartPolicy": "Never", "containers": [{"name": "main", "image": real_node.pod_image,
                                                  "command": ["python", "-c", client]}]}})
    done = wait_for(lambda: (p := core.read_namespaced_pod_status("client", k8s_namespace)).status.phase in (
        "Succeeded", "Failed") and p, timeout=90, interval=0.5)
    log = core.read_namespaced_pod_log("client", k8s_namespace)
    assert done.status.phase == "Succeeded", log
    assert json.loads(log.strip().splitlines()[-1]) == k8s_served_model.models[0].predict(rows).tolist()
    assert list_endpoints(k8s_api, k8s_namespace)[0].url == f"http://iris-dns.{k8s_namespace}.svc.cluster.local:80"
    undeploy(k8s_api, "iris-dns", k8s_namespace)


def test_a_deployment_and_service_we_did_not_make_are_neither_replaced_nor_deleted(
        k8s_api: Any, k8s_namespace: str) -> None:
    from jupyter_mlflow_k8s.errors import ConflictError

    apps, core = kubernetes.client.AppsV1Api(k8s_api), kubernetes.client.CoreV1Api(k8s_api)
    labels = {"app": "someone-elses"}
    apps.create_namespaced_deployment(k8s_namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "theirs", "labels": labels},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "example.invalid/c:1"}]}}}})
    core.create_namespaced_service(k8s_namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "theirs", "labels": labels},
        "spec": {"selector": labels, "ports": [{"port": 80}]}})
    settings = PodSettings(namespace=k8s_namespace)
    with pytest.raises(ConflictError, match=f"(Service|Deployment) {k8s_namespace}/theirs exists and is not managed by"):
        deploy(k8s_api, EndpointSpec(name="theirs", model_uri="models:/iris/1"), settings, credentials={},
               pin_alias=False)
    with pytest.raises(ConflictError, match="is not managed by jupyter_mlflow_k8s"):
        undeploy(k8s_api, "theirs", k8s_namespace, wait=None)
    assert apps.read_namespaced_deployment("theirs", k8s_namespace).metadata.labels == labels
    assert core.read_namespaced_service("theirs", k8s_namespace).metadata.labels == labels
    assert not [s for s in core.list_namespaced_secret(k8s_namespace).items if s.metadata.name == "theirs-env"]
