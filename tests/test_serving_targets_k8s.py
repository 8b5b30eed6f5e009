"""The Kubernetes endpoint target on the test cluster, through the front doors a user has: ``jmk serve ...
--backend kubernetes``, ``jmk serve list`` (local and Kubernetes together), ``%serve stop NAME --backend
kubernetes``, and the sidebar's service with live metrics read from the endpoint's pods."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from k8s_fixtures import pod_processes
from serving_fixtures import FEATURES, Served

from jupyter_mlflow_k8s.cli import main

pytestmark = pytest.mark.k8s


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_jmk_serve_lists_predicts_and_stops_a_kubernetes_endpoint(
    cluster_env: str, k8s_served_model: Served, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace, served = cluster_env, k8s_served_model
    assert main(["serve", served.uri("1"), "--backend", "kubernetes", "--name", "iris-cli", "--port",
                 str(free_port())]) == 0
    assert f"deployed iris-cli in namespace {namespace}" in capsys.readouterr().out

    assert main(["serve", "list"]) == 0  # no --backend: the local ones (none) and the cluster's
    out, err = capsys.readouterr()
    [row] = [line for line in out.splitlines() if line.startswith("iris-cli")]
    assert "running" in row and served.uri("1") in row and f"kubernetes {namespace} 1/1" in row, out
    assert err == ""

    rows = served.frame.head(5)[list(FEATURES)]
    expected = served.models[0].predict(rows).tolist()
    data = json.dumps({"dataframe_records": rows.to_dict(orient="records")})
    assert main(["serve", "predict", "iris-cli", data, "--backend", "kubernetes"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert main(["serve", "predict", "iris-cli", data]) == 0  # not local: found on the cluster
    assert json.loads(capsys.readouterr().out) == expected

    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.labapp.service import SidebarService

    sidebar = SidebarService(load_settings())
    try:
        listed = sidebar.endpoints()
        assert [(e["name"], e["backend"], e["status"]) for e in listed["endpoints"]] == [
            ("iris-cli", "kubernetes", "running")]
        assert listed["unreachable"] == []
        snapshot = sidebar.endpoint_metrics("iris-cli")
        assert snapshot["requests_total"] == 2 and snapshot["errors_total"] == 0
        assert snapshot["versions"][served.versions[0]]["role"] == "primary"
    finally:
        sidebar.close()

    assert shell.run_line_magic("serve", "stop iris-cli --backend kubernetes") is None
    assert f"stopped iris-cli in namespace {namespace}" in capsys.readouterr().out
    assert not pod_processes(f"{namespace}/")
    assert main(["serve", "list", "--backend", "kubernetes"]) == 0
    assert "No endpoints yet" in capsys.readouterr().out
    assert main(["serve", "stop", "iris-cli", "--backend", "kubernetes"]) == 2
    assert f"No endpoint 'iris-cli' in namespace '{namespace}'" in capsys.readouterr().err
