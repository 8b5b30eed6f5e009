"""``mlflow deployments ... -t jmk:/kubernetes`` on the test cluster, through MLflow's own command line: a
Deployment and a Service made (with ``-C monitor=true``, its PodMonitor and PrometheusRule), listed, described,
queried through the API server, rolled to another version with its flags kept (read back from the pods'
command and the Deployment's monitoring annotation), monitoring taken off, and deleted with nothing left running."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from k8s_fixtures import custom, pod_processes
from serving_fixtures import FEATURES, MlflowCli, Served

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(1200)]
TARGET = "jmk:/kubernetes"


def described(cli: MlflowCli, name: str) -> dict[str, str]:
    result = cli("deployments", "get", "-t", TARGET, "--name", name)
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


def predictions(cli: MlflowCli, name: str, rows_file: Path) -> list[int]:
    result = cli("deployments", "predict", "-t", TARGET, "--name", name, "-I", str(rows_file))
    return list(json.loads(result.stdout.strip().splitlines()[-1])["predictions"])


def monitored(api: Any, namespace: str, name: str) -> list[bool]:
    """Whether the endpoint's PodMonitor and PrometheusRule exist."""
    return [custom(api, kind, name, namespace) is not None for kind in ("PodMonitor", "PrometheusRule")]


def test_mlflow_deployments_drive_a_kubernetes_endpoint(
    cluster_env: str, mlflow_cli: MlflowCli, k8s_served_model: Served, tmp_path: Path, k8s_api: Any,
    monitoring_crds: None,
) -> None:
    namespace, served, cli = cluster_env, k8s_served_model, mlflow_cli
    frame = served.frame[list(FEATURES)]
    rows = frame[served.models[0].predict(frame) != served.models[1].predict(frame)].head(4)
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(rows.to_json(orient="records"))

    created = cli("deployments", "create", "-t", TARGET, "--name", "iris-mlflow", "-m", f"models:/{served.name}@prod",
                  "-C", "max_batch_size=8", "-C", "port=8081", "-C", "monitor=true")
    assert "python_function deployment iris-mlflow is created" in created.stdout
    assert "'name': 'iris-mlflow'" in cli("deployments", "list", "-t", TARGET).stdout
    got = described(cli, "iris-mlflow")
    assert (got["model_uri"], got["state"], got["backend"], got["namespace"], got["replicas"]) == (
        served.uri(served.versions[0]), "running", "kubernetes", namespace, "1/1")  # the alias pinned
    assert got["url"] == f"http://iris-mlflow.{namespace}.svc.cluster.local:80"
    assert got["config"] == str({"max_batch_size": 8, "monitor": True})
    assert monitored(k8s_api, namespace, "iris-mlflow") == [True, True]
    assert predictions(cli, "iris-mlflow", rows_file) == served.models[0].predict(rows).tolist()

    cli("deployments", "update", "-t", TARGET, "--name", "iris-mlflow", "-m", served.uri(served.versions[1]),
        "-C", "no_batching=true")
    after = described(cli, "iris-mlflow")
    assert (after["model_uri"], after["state"]) == (served.uri(served.versions[1]), "running")
    assert after["config"] == str({"max_batch_size": 8, "no_batching": True, "monitor": True})  # kept what was not given
    assert monitored(k8s_api, namespace, "iris-mlflow") == [True, True]
    assert predictions(cli, "iris-mlflow", rows_file) == served.models[1].predict(rows).tolist()

    cli("deployments", "update", "-t", TARGET, "--name", "iris-mlflow", "-C", "monitor=false")
    assert described(cli, "iris-mlflow")["config"] == str({"max_batch_size": 8, "no_batching": True})
    assert monitored(k8s_api, namespace, "iris-mlflow") == [False, False]

    assert "Deployment iris-mlflow is deleted" in cli("deployments", "delete", "-t", TARGET, "--name",
                                                      "iris-mlflow").stdout
    assert "List of all deployments:\n[]" in cli("deployments", "list", "-t", TARGET).stdout
    assert not pod_processes(f"{namespace}/")
    gone = cli("deployments", "get", "-t", TARGET, "--name", "iris-mlflow", ok=False)
    assert f"No endpoint 'iris-mlflow' on {TARGET}." in gone.stderr
