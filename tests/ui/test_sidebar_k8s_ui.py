"""The sidebar's Serving section with a Kubernetes endpoint: a real ``jupyter lab`` configured for the test
cluster (a kubeconfig and a namespace, as a user's would be), a Deployment serving a registered model, and
live metrics read from its pod while requests arrive; and with the API server down, the local endpoints
still listed and the Kubernetes ones named as not listed. Screenshots: build/screenshots/sidebar-serving-k8s*.png."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_fixtures import KubeTarget
from serving_fixtures import FEATURES, Served
from traitlets.config import Config
from ui_helpers import Lab, Page, Store, expand, number, open_sidebar, start_lab, stop_lab, tid, wait_until

pytestmark = [pytest.mark.ui, pytest.mark.slow]
NAME = "iris-k8s-ui"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def k8s_endpoint(k8s_cluster: KubeTarget, k8s_namespace: str, k8s_served_model: Served, k8s_mlflow_server: str,
                 tmp_path: Path) -> Iterator[Any]:
    """``iris-serving`` v1 deployed as a Kubernetes endpoint (the target ``jmk serve --backend kubernetes`` uses)."""
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.serving.targets import get_target

    config = Config({"KubernetesBackend": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": k8s_namespace,
                                           "image": k8s_cluster.pod_image}})
    settings = load_settings(state_dir=str(tmp_path / "deployer-state"), tracking_uri=k8s_mlflow_server)
    target = get_target("kubernetes", settings=settings, config=config)
    target.deploy(k8s_served_model.uri("1"), name=NAME, port=free_port(), no_batching=True)
    yield target
    target.stop(NAME)


@pytest.fixture
def k8s_lab(k8s_cluster: KubeTarget, k8s_namespace: str, k8s_mlflow_server: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """JupyterLab whose environment points at the test cluster's namespace; no local endpoint."""
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    monkeypatch.setenv("JMK_K8S_NAMESPACE", k8s_namespace)
    lab = start_lab(tmp_path / "lab", Store(k8s_mlflow_server, tmp_path / "lab-state", {}))
    yield lab
    stop_lab(lab)


class Requests:
    """Predictions sent through the target (the API server's proxy, or the pod) from a thread until stopped."""

    def __init__(self, target: Any, rows: list[dict[str, float]]) -> None:
        self.target, self.rows, self.answered = target, rows, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Requests:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.target.predict(NAME, {"dataframe_records": self.rows})
            self.answered += 1
            self._stop.wait(0.1)


@pytest.mark.k8s
def test_a_kubernetes_endpoint_shows_in_serving_with_live_metrics(
    page: Page, k8s_endpoint: Any, k8s_lab: Lab, k8s_namespace: str, k8s_served_model: Served
) -> None:
    p = page.page
    open_sidebar(page, k8s_lab)
    expand(p, "serving")
    row = p.locator(tid("jmk-endpoint-row", endpoint=NAME))
    row.wait_for(timeout=60_000)
    wait_until(lambda: row.get_attribute("data-status") == "running", timeout=60, what="the endpoint shown running")
    assert "kubernetes" in row.inner_text() and k8s_served_model.uri("1") in row.inner_text()
    charts = p.locator(tid("jmk-endpoint-charts", endpoint=NAME))
    charts.wait_for()

    rows = k8s_served_model.frame.head(3)[list(FEATURES)].to_dict(orient="records")
    with Requests(k8s_endpoint, rows) as requests:
        summary = charts.locator(tid("jmk-serving-summary"))
        wait_until(lambda: re.match(r"[1-9]\d* requests, 0 errors", summary.inner_text()), timeout=60,
                   what="requests counted in the summary")
        rps = charts.locator(tid("jmk-chart-rps-value"))
        wait_until(lambda: number(rps.inner_text()) > 0, timeout=60, what="a positive requests/s value")
        time.sleep(2)  # a few points of the line for the screenshot
        page.screenshot("sidebar-serving-k8s")
    assert requests.answered > 0
    assert p.locator(tid("jmk-serving-error")).count() == 0
    assert page.errors == []


def test_with_the_api_server_down_local_endpoints_list_and_a_note_says_so(
    page: Page, mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_mlflow_k8s.serving.manager import Endpoint

    state = tmp_path / "lab-state"
    folder = state / "serving" / "iris-local"
    folder.mkdir(parents=True)
    record = Endpoint(name="iris-local", model_uri="models:/iris/1", url="http://127.0.0.1:9", host="127.0.0.1",
                      port=9, pid=None, pid_start=None, started=time.time(), log_path=str(folder / "server.log"))
    (folder / "endpoint.json").write_text(json.dumps(record.to_dict()))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "down",
        "clusters": [{"name": "down", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "down", "context": {"cluster": "down", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    lab = start_lab(tmp_path / "lab", Store(mlflow_uri, state, {}))
    try:
        p = page.page
        open_sidebar(page, lab)
        expand(p, "serving")
        row = p.locator(tid("jmk-endpoint-row", endpoint="iris-local"))
        row.wait_for()
        assert row.get_attribute("data-status") == "exited"
        note = p.locator(tid("jmk-endpoints-unreachable", backend="kubernetes"))
        note.wait_for()
        assert "kubernetes endpoints not listed" in note.inner_text() and "unreachable" in note.inner_text()
        page.screenshot("sidebar-serving-k8s-unreachable")
    finally:
        stop_lab(lab)
