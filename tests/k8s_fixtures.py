"""Kubernetes fixtures: one real cluster per session, a fresh namespace per test, no process left behind.

The cluster is ``tests/cluster`` (etcd and the 1.20 control plane built from Debian's packages, plus the
node agent that runs pods as processes), started once per session. When ``JMK_TEST_KUBECONFIG`` names a
kubeconfig, the same tests run against that cluster instead (kind in CI, say) and nothing is started;
tests that need the node agent's hooks or look at local processes skip there.

Mark Kubernetes tests ``@pytest.mark.k8s`` and ask for ``k8s_namespace`` (and ``k8s_api`` for a client).
When the cluster cannot be built on a machine, every such test skips with the reason.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

# Pod images: the node agent ignores them (it runs the command with this test environment's python);
# a real cluster pulls them, so they must carry python.
POD_IMAGE = "python:3.11-slim"


@dataclass(frozen=True)
class KubeTarget:
    """The cluster the tests talk to."""

    kubeconfig: Path
    cluster: Any | None  # cluster.control.Cluster when we started it; None for JMK_TEST_KUBECONFIG

    @property
    def local(self) -> bool:
        """Whether pods run as local processes under our node agent (so hooks and /proc checks work)."""
        return self.cluster is not None


def pod_processes(selector: str) -> list[psutil.Process]:
    """Live processes the node agent started for pods whose ``namespace/name`` starts with ``selector``."""
    found = []
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
    cluster = Cluster(tmp_path_factory.mktemp("k8s-cluster"))
    cluster.start()
    try:
        yield KubeTarget(cluster.kubeconfig, cluster)
    finally:
        cluster.stop()
    left = cluster.leftover_processes()
    assert not left, f"processes left after the cluster stopped: {[p.cmdline() for p in left]}"


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
    if not k8s_cluster.local:
        pytest.skip("needs the test cluster's node agent (JMK_TEST_KUBECONFIG names another cluster)")
    return k8s_cluster
