"""Kubernetes fixtures: one real cluster per session, a fresh namespace per test, nothing left behind.

The cluster is ``tests/cluster``: etcd and the 1.20 control plane built from Debian's packages, and a real
node (kubelet, containerd, runc, CNI, kube-proxy, cluster DNS, a local registry holding the runner image
built from ``docker/runner/Dockerfile``), started once per session. Where a real node cannot run (not
root, not Debian 12, a missing package) the node agent runs pods as local processes instead, and the
reason is printed. When ``JMK_TEST_KUBECONFIG`` names a kubeconfig, the same tests run against that
cluster instead (kind in CI, say; ``JMK_TEST_POD_IMAGE`` names an image with this package and
``JMK_TEST_HOST_IP`` the address its pods reach this machine at) and nothing is started.

Mark Kubernetes tests ``@pytest.mark.k8s`` and ask for ``k8s_namespace`` (and ``k8s_api`` for a client).
When the cluster cannot be built on a machine, every such test skips with the reason.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import psutil
import pytest
import yaml
from helpers import wait_for

from jupyter_mlflow_k8s.k8s import CUSTOM_KINDS, missing_kinds
from jupyter_mlflow_k8s.serving.kubernetes import MONITOR_KINDS

# The node agent ignores images (it runs the command with this test environment's python).
AGENT_POD_IMAGE = "python:3.11-slim"


@dataclass(frozen=True)
class KubeTarget:
    """The cluster the tests talk to."""

    kubeconfig: Path
    cluster: Any | None  # cluster.control.Cluster when we started it; None for JMK_TEST_KUBECONFIG

    @property
    def local(self) -> bool:
        """Whether we started the cluster on this machine (its processes and containers can be inspected)."""
        return self.cluster is not None

    @property
    def real_node(self) -> bool:
        """Whether pods run in real containers from real images (our real node, or a given cluster)."""
        return self.cluster is None or bool(self.cluster.real_node)

    @property
    def pod_image(self) -> str:
        """An image with python and this package that the cluster's node can pull (the runner image)."""
        if self.cluster is None:
            return os.environ.get("JMK_TEST_POD_IMAGE", "jmk-runner:test")
        return str(self.cluster.images["runner"]) if self.cluster.real_node else AGENT_POD_IMAGE

    @property
    def host_ip(self) -> str:
        """The address of this machine that pods reach (servers for pods listen there)."""
        if self.cluster is None:
            return os.environ.get("JMK_TEST_HOST_IP", "127.0.0.1")
        if self.cluster.real_node:
            from cluster.node import NODE_IP

            return NODE_IP
        return "127.0.0.1"


def pod_processes(selector: str) -> list[psutil.Process]:
    """Live processes of pods whose ``namespace/name`` starts with ``selector``: real containers of the real
    node (from containerd's task bundles), or processes the node agent started."""
    from cluster.node import pod_processes as container_processes

    found = container_processes(selector)
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get("JMK_NODE_AGENT_POD", "").startswith(selector) and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the ``k8s`` tests last, so the cluster (started by the first of them) does not load the others."""
    items.sort(key=lambda item: item.get_closest_marker("k8s") is not None)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTarget]:
    """The session's cluster: ours (started once, stopped with a leftover-process check) or a given one."""
    given = os.environ.get("JMK_TEST_KUBECONFIG")
    if given:
        yield KubeTarget(Path(given), None)
        return
    from cluster.control import Cluster, ClusterUnavailable, ensure_built

    try:
        ensure_built()
    except ClusterUnavailable as exc:
        pytest.skip(f"the Kubernetes test cluster cannot be built here: {exc}")
    cluster = Cluster(tmp_path_factory.mktemp("k8s-cluster"), node=os.environ.get("JMK_TEST_NODE", "auto"))
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        pytest.skip(f"the Kubernetes test cluster cannot run here: {exc}")
    try:
        yield KubeTarget(cluster.kubeconfig, cluster)
    finally:
        cluster.stop()
    left = cluster.leftovers()
    cluster.kill_leftovers()
    assert not left, f"left after the cluster stopped: {left}"


@pytest.fixture(scope="session")
def k8s_api(k8s_cluster: KubeTarget) -> Iterator[Any]:
    """An ``ApiClient`` of the official client for the session's cluster."""
    import kubernetes

    api = kubernetes.config.new_client_from_config(config_file=str(k8s_cluster.kubeconfig))
    yield api
    # Every test namespace must finish deleting (the namespace controller, the node agent's final deletes).
    core = kubernetes.client.CoreV1Api(api)
    deadline = time.monotonic() + 90
    while (left := core.list_namespace(label_selector="jmk.io/test=true").items) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"test namespaces still there: {[(n.metadata.name, n.status.phase) for n in left]}"


@pytest.fixture
def k8s_namespace(k8s_cluster: KubeTarget, k8s_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace; deleted after the test, whose pod processes must then all have stopped."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(k8s_api)
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"jmk.io/test": "true"}}})
    yield name
    core.delete_namespace(name)
    if k8s_cluster.local:
        deadline = time.monotonic() + 60
        while (left := pod_processes(f"{name}/")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"pod processes left after deleting namespace {name}: {[p.cmdline() for p in left]}"


@pytest.fixture
def node_agent(k8s_cluster: KubeTarget) -> KubeTarget:
    """Skip unless pods run under our node agent (its test hooks, local processes)."""
    if k8s_cluster.real_node:
        pytest.skip("needs the node agent; pods run in real containers here")
    return k8s_cluster


@pytest.fixture
def real_node(k8s_cluster: KubeTarget) -> KubeTarget:
    """Skip unless pods run in real containers (the test cluster's real node, or a given cluster)."""
    if not k8s_cluster.real_node:
        pytest.skip(f"needs a real node; pods run under the node agent: {k8s_cluster.cluster.node_fallback_reason}")
    return k8s_cluster


@pytest.fixture
def pod_image(k8s_cluster: KubeTarget) -> str:
    """The image test pods run: the runner image built from docker/runner/Dockerfile (python, this package)."""
    return k8s_cluster.pod_image


@pytest.fixture(scope="session")
def k8s_mlflow_server(k8s_cluster: KubeTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` that pods reach over the pod network, proxying artifacts (``--serve-artifacts``)
    into a folder of this machine: what a team's tracking server is to its jobs."""
    from servers import _mlflow_env, start_mlflow

    root = tmp_path_factory.mktemp("k8s-mlflow")
    server, url = start_mlflow(root, ["--serve-artifacts", "--artifacts-destination", str(root / "artifacts")],
                               _mlflow_env(), host=k8s_cluster.host_ip)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def k8s_s3_server(k8s_cluster: KubeTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3 endpoint (moto, credentials checked) that pods reach over the pod network."""
    from servers import s3_endpoint

    yield from s3_endpoint(tmp_path_factory.mktemp("k8s-moto") / "moto.log", host=k8s_cluster.host_ip)


@pytest.fixture
def k8s_s3_bucket(k8s_s3_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A new bucket on ``k8s_s3_server``; this process's AWS variables point at it (undone after the test)."""
    from servers import new_bucket

    return new_bucket(k8s_s3_server, monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def k8s_mlflow_server_s3(
    k8s_cluster: KubeTarget, tmp_path_factory: pytest.TempPathFactory, k8s_s3_server: Any
) -> Iterator[Any]:
    """``mlflow server`` for pods, proxying artifacts into a bucket of ``k8s_s3_server``."""
    from servers import mlflow_with_s3_artifacts

    yield from mlflow_with_s3_artifacts(tmp_path_factory, k8s_s3_server, host=k8s_cluster.host_ip)


@pytest.fixture
def cluster_env(k8s_cluster: KubeTarget, k8s_namespace: str, k8s_mlflow_server: str, state_dir: Path,
                monkeypatch: pytest.MonkeyPatch) -> str:
    """This process configured as a user's would be: a kubeconfig, a namespace, the pods' image and tracking.

    Set in the environment, so a command it starts (``jmk``, ``mlflow deployments``) is configured the same.
    Returns the namespace.
    """
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    monkeypatch.setenv("JMK_K8S_NAMESPACE", k8s_namespace)
    monkeypatch.setenv("JUPYTER_IMAGE_SPEC", k8s_cluster.pod_image)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", k8s_mlflow_server)
    return k8s_namespace


@pytest.fixture(scope="session")
def k8s_served_model(k8s_mlflow_server: str) -> Iterator[Any]:
    """``iris-serving`` (versions 1 and 2, ``@prod`` on 1) registered in ``k8s_mlflow_server``, for endpoint pods."""
    from helpers import mlflow_tracking
    from serving_fixtures import make_served

    with mlflow_tracking(k8s_mlflow_server):  # make_served points this process at the server: not for later tests
        served = make_served("iris-serving", k8s_mlflow_server)
    yield served


# -- the prometheus-operator's CRDs (tests/schemas/prometheus-operator) ------------------------------

MONITORING_SCHEMAS = Path(__file__).parent / "schemas" / "prometheus-operator"


def installable(definition: Any) -> Any:
    """The CRD as the test cluster's 1.20 API server takes it: without its ``default: ""`` entries.

    That server reads an empty default as null and refuses the whole CRD (``...properties[name].default:
    Invalid value: "null": in body must be of type string``); later servers take it. A default only fills a
    field we do not send, so the schema checks what we send all the same.
    """
    if isinstance(definition, dict):
        return {key: installable(value) for key, value in definition.items() if not (key == "default" and value == "")}
    if isinstance(definition, list):
        return [installable(item) for item in definition]
    return definition


def custom(api: Any, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    group, version, plural = CUSTOM_KINDS[kind]
    try:
        answer = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
            group, version, namespace, plural, name, _preload_content=False)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(json.loads(answer.data))


@pytest.fixture
def monitoring_crds(k8s_api: Any) -> Iterator[None]:
    """The prometheus-operator's PodMonitor and PrometheusRule CRDs, installed for one test, then removed."""
    extensions = kubernetes.client.ApiextensionsV1Api(k8s_api)
    names = []
    for path in sorted(MONITORING_SCHEMAS.glob("*.yaml")):
        definition = installable(yaml.safe_load(path.read_text()))
        extensions.create_custom_resource_definition(definition)
        names.append(definition["metadata"]["name"])
    try:
        wait_for(lambda: not missing_kinds(k8s_api, MONITOR_KINDS), timeout=60, interval=0.5)
        yield
    finally:
        for name in names:
            extensions.delete_custom_resource_definition(name)
        wait_for(lambda: missing_kinds(k8s_api, MONITOR_KINDS) == list(MONITOR_KINDS), timeout=60, interval=0.5)
