"""The MLflow deployments plugin through MLflow's own command line: ``mlflow deployments create|list|get|update|
predict|delete|run-local|help -t jmk`` against a real ``mlflow server`` holding a registered model, with real
local inference servers; bad input refused before anything starts. Kubernetes: test_k8s_mlflow_deployments.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_fixtures import FEATURES, MlflowCli, Served

from jupyter_mlflow_k8s.serving.kubernetes import EndpointSpec, deployment_manifest
from jupyter_mlflow_k8s.serving.kubernetes.cluster import _endpoint
from jupyter_mlflow_k8s.serving.manager import ServingManager, free_port
from jupyter_mlflow_k8s.serving.mlflow_plugin import CONFIG_KEYS, parse_config
from jupyter_mlflow_k8s.serving.options import OPTIONS, endpoint_spec_fields

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a dozen `mlflow` commands, each importing MLflow


@pytest.fixture(scope="module")
def plugin_model(mlflow_server: str) -> Iterator[Served]:
    """``iris-plugin`` (versions 1 and 2, ``@prod`` on 1) registered in a real ``mlflow server``."""
    from helpers import mlflow_tracking
    from serving_fixtures import make_served

    with mlflow_tracking(mlflow_server):
        yield make_served("iris-plugin", mlflow_server)


@pytest.fixture
def cli(mlflow_cli: MlflowCli, mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> MlflowCli:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_cli


def described(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``mlflow deployments get``'s ``key: value`` lines."""
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


def predictions(cli: MlflowCli, name: str, rows_file: Path) -> list[int]:
    result = cli("deployments", "predict", "-t", "jmk", "--name", name, "-I", str(rows_file))
    return list(json.loads(result.stdout.strip().splitlines()[-1])["predictions"])


def test_config_keys_are_the_server_flags_and_values_are_typed() -> None:
    assert [entry.key for entry in CONFIG_KEYS] == [*(o.key for o in OPTIONS if o.key != "name"), "monitor"]
    assert parse_config({"monitor": "true"}, "kubernetes") == {"monitor": True}
    with pytest.raises(ValueError, match=r"unknown config key 'monitor' \(it is for kubernetes only\)"):
        parse_config({"monitor": "true"}, "local")
    assert parse_config({"workers": "2", "max-batch-size": "8", "no_batching": "true", "max_wait_ms": 5}, "local") \
        == {"workers": 2, "max_batch_size": 8, "no_batching": True, "max_wait_ms": 5.0}
    with pytest.raises(ValueError, match=r"unknown config key 'wrokers'; -C workers='two': workers takes int "
                                         r"values, e.g. -C workers=2\. Valid keys for jmk: port, host, workers"):
        parse_config({"wrokers": "2", "workers": "two"}, "local")
    with pytest.raises(ValueError, match=r"unknown config key 'host' \(it is for local only\)\. Valid keys for "
                                         r"jmk:/kubernetes: port, workers"):
        parse_config({"host": "0.0.0.0"}, "kubernetes")


def test_a_kubernetes_endpoint_reads_its_port_and_flags_back_from_its_pods_command() -> None:
    from jupyter_mlflow_k8s.k8s.pods import PodSettings

    flags = {"workers": 2, "max_batch_size": 8, "no_batching": True, "max_body_mb": 5.0, "drift_window": 50}
    spec = EndpointSpec(model_uri="models:/iris/1", **endpoint_spec_fields(flags, "iris-v1", 9001))
    endpoint = _endpoint(deployment_manifest(spec, PodSettings(namespace="ml", image="img:1")))
    assert (endpoint.port, endpoint.flags) == (9001, flags)
    plain = _endpoint(deployment_manifest(EndpointSpec(name="iris-v1", model_uri="models:/iris/1"),
                                          PodSettings(namespace="ml", image="img:1")))
    assert (plain.port, plain.flags) == (8080, {})


def test_bad_input_is_refused_before_anything_starts(cli: MlflowCli, plugin_model: Served) -> None:
    assert "workers" in cli("deployments", "help", "-t", "jmk").stdout
    cases = [
        (["-m", plugin_model.uri("1"), "-C", "wrokers=2"], "unknown config key 'wrokers'"),
        (["-m", plugin_model.uri("1"), "-C", "workers=two"], "workers takes int values, e.g. -C workers=2"),
        (["-m", "models:/iris-plugin/9"], "Model 'iris-plugin' has no version 9. Versions: 1, 2."),
        (["-m", "models:/iris-plugin@nope"], "Model 'iris-plugin' has no alias 'nope'. Aliases: prod → 1."),
        (["-m", "models:/iris-plugin"], "'models:/iris-plugin' is not a registered model's URI."),
        (["-m", plugin_model.uri("1"), "-f", "sklearn"], "Flavor 'sklearn' is not served here"),
    ]
    for args, said in cases:
        result = cli("deployments", "create", "-t", "jmk", "--name", "iris-bad", *args, ok=False)
        assert result.returncode != 0 and said in result.stderr, (args, result.stderr[-2000:])
        assert "MlflowException" in result.stderr
    assert ServingManager().list() == []  # nothing started, nothing recorded
    result = cli("deployments", "create", "-t", "jmk:/nomad", "--name", "x", "-m", plugin_model.uri("1"), ok=False)
    assert "Deployment target 'jmk:/nomad' is not one of ours: use jmk, jmk:/kubernetes" in result.stderr
    result = cli("deployments", "create", "-t", "jmk:/kubernetes", "--name", "x", "-m", plugin_model.uri("1"),
                 "-C", "host=0.0.0.0", ok=False)  # refused before any cluster is asked
    assert "unknown config key 'host' (it is for local only)" in result.stderr


def test_create_list_get_predict_update_delete(cli: MlflowCli, plugin_model: Served, tmp_path: Path) -> None:
    frame = plugin_model.frame[list(FEATURES)]
    rows = frame[plugin_model.models[0].predict(frame) != plugin_model.models[1].predict(frame)].head(4)
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(rows.to_json(orient="records"))
    first, second = (model.predict(rows).tolist() for model in plugin_model.models)
    assert first != second

    created = cli("deployments", "create", "-t", "jmk", "--name", "iris-mlflow", "-m", "models:/iris-plugin@prod",
                  "-C", "max_batch_size=8", "-C", "drift_window=50")
    assert "python_function deployment iris-mlflow is created" in created.stdout
    assert "iris-mlflow" in cli("deployments", "list", "-t", "jmk").stdout
    got = described(cli("deployments", "get", "-t", "jmk", "--name", "iris-mlflow"))
    assert (got["name"], got["model_uri"], got["state"], got["backend"]) == (
        "iris-mlflow", "models:/iris-plugin@prod", "running", "local")
    assert got["config"] == str({"max_batch_size": 8, "drift_window": 50})
    assert predictions(cli, "iris-mlflow", rows_file) == first

    again = cli("deployments", "create", "-t", "jmk", "--name", "iris-mlflow", "-m", plugin_model.uri("2"), ok=False)
    assert "Deployment 'iris-mlflow' exists already (models:/iris-plugin@prod" in again.stderr

    updated = cli("deployments", "update", "-t", "jmk", "--name", "iris-mlflow", "-m", plugin_model.uri("2"),
                  "-C", "no_batching=true")
    assert "Deployment iris-mlflow is updated (with flavor python_function)" in updated.stdout
    got_after = described(cli("deployments", "get", "-t", "jmk", "--name", "iris-mlflow"))
    assert (got_after["model_uri"], got_after["url"]) == (plugin_model.uri("2"), got["url"])  # the same port
    assert got_after["config"] == str({"max_batch_size": 8, "drift_window": 50, "no_batching": True})
    assert predictions(cli, "iris-mlflow", rows_file) == second
    with urllib.request.urlopen(f"{got['url']}/health", timeout=10) as response:
        assert json.loads(response.read())["version"] == plugin_model.versions[1]

    bad_update = cli("deployments", "update", "-t", "jmk", "--name", "iris-mlflow", "-C", "workers=0", ok=False)
    assert "--workers must be a whole number of at least 1" in bad_update.stderr  # refused before it stopped
    failed = cli("deployments", "update", "-t", "jmk", "--name", "iris-mlflow", "-m", "runs:/0123456789abcdef/model",
                 ok=False)  # the new server cannot start: the old one is put back
    assert f"Deployment 'iris-mlflow' was not updated, and serves {plugin_model.uri('2')} again" in failed.stderr
    assert described(cli("deployments", "get", "-t", "jmk", "--name", "iris-mlflow"))["url"] == got["url"]
    assert predictions(cli, "iris-mlflow", rows_file) == second

    assert "Deployment iris-mlflow is deleted" in cli("deployments", "delete", "-t", "jmk", "--name",
                                                      "iris-mlflow").stdout
    assert "List of all deployments:\n[]" in cli("deployments", "list", "-t", "jmk").stdout
    gone = cli("deployments", "get", "-t", "jmk", "--name", "iris-mlflow", ok=False)
    assert "No endpoint 'iris-mlflow' on jmk. There are none. Create it with `mlflow deployments create" in gone.stderr
    assert not ServingManager().get("iris-mlflow").running


def test_run_local_serves_in_the_foreground_until_interrupted(cli: MlflowCli, plugin_model: Served) -> None:
    port = free_port()
    argv = cli.argv("deployments", "run-local", "-t", "jmk", "--name", "iris-fg", "-m", plugin_model.uri("1"),
                    "-C", f"port={port}")
    process = subprocess.Popen(argv, env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:  # the server's own output, until it listens
            seen.append(line)
            if "jmk-serve: listening on" in line:
                break
        assert f"127.0.0.1:{port}" in "".join(seen[-1:]), "".join(seen)
        rows = plugin_model.frame.head(3)[list(FEATURES)]
        body = json.dumps({"dataframe_records": rows.to_dict(orient="records")}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["predictions"] == plugin_model.models[0].predict(rows).tolist()
        assert ServingManager().list() == []  # not recorded
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in its terminal: to the command and its server
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, process.stdout.read() if process.stdout else ""
