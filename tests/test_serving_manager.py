"""Local serving processes: ``ServingManager`` and ``jmk serve`` with real server processes and real HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from helpers import process_gone, wait_for
from serving_fixtures import FEATURES, Served

from jupyter_mlflow_k8s.cli import main
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.serving.errors import EndpointNotFound
from jupyter_mlflow_k8s.serving.manager import (
    PredictionError,
    ServerStartError,
    ServingError,
    ServingManager,
    check_name,
    default_name,
    safe_name,
    scoring_payload,
)
from jupyter_mlflow_k8s.serving.options import server_arguments

# --- no server ------------------------------------------------------------------------------------


def test_default_names_are_dns_labels_from_the_model_uri() -> None:
    assert default_name("models:/iris-serving@prod") == "iris-serving-prod"
    assert default_name("models:/iris-serving/2") == "iris-serving-v2"
    assert default_name("models:/Churn_Model/latest") == "churn-model-latest"
    assert default_name("runs:/0123456789abcdef/model") == "run-01234567-model"
    assert default_name("/tmp/models/My Model/") == "my-model"
    assert default_name("models:/2fast@prod") == "m-2fast-prod"
    long_a, long_b = safe_name("x" * 80 + "a"), safe_name("x" * 80 + "b")
    assert len(long_a) == 63 and long_a != long_b
    check_name("iris-prod")
    for bad in ("Iris", "iris_prod", "-iris", "2iris", "iris-", "x" * 64):
        with pytest.raises(JMKUsageError, match="not a valid endpoint name"):
            check_name(bad)


def test_server_flags_are_checked_before_anything_starts() -> None:
    assert server_arguments({"workers": 2, "no_batching": True, "max_wait_ms": 0.5, "shadow": None}) == [
        "--workers", "2", "--no-batching", "--max-wait-ms", "0.5"]
    for flags, message in (
        ({"replicas": 2}, "Unknown server flag"),
        ({"workers": 0}, "--workers must be a whole number"),
        ({"workers": "2"}, "--workers takes a number"),
        ({"canary_fraction": 0.2}, "--canary-fraction needs --canary"),
        ({"canary": "models:/a/2", "canary_fraction": 1.5}, "share of requests"),
        ({"canary": "models:/a/2", "shadow": "models:/a/3"}, "one version at a time"),
        ({"max_body_mb": 0}, "more than 0 MB"),
    ):
        with pytest.raises(JMKUsageError, match=message):
            server_arguments(flags)


def test_data_goes_out_in_the_scoring_protocol() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    split = {"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 3.0], [2.0, 4.0]]}}
    assert scoring_payload(frame) == split
    assert scoring_payload({"a": [1.0, 2.0], "b": np.array([3.0, 4.0])}) == split
    assert scoring_payload({"a": 1.0, "b": 3.0}) == {"dataframe_records": [{"a": 1.0, "b": 3.0}]}
    assert scoring_payload([{"a": 1.0}, {"a": 2.0}]) == {"dataframe_records": [{"a": 1.0}, {"a": 2.0}]}
    assert scoring_payload(np.array([[1, 2], [3, 4]])) == {"instances": [[1, 2], [3, 4]]}
    assert scoring_payload([[1, 2], (3, 4)]) == {"instances": [[1, 2], [3, 4]]}
    assert scoring_payload({"inputs": [1]}) == {"inputs": [1]}
    for bad, message in (({}, "empty"), ([], "empty"), ({"a": [1, 2], "b": [1]}, "different lengths"),
                         ({"a": [1], "b": 2}, "not a mix"), ("text", "Cannot send a str")):
        with pytest.raises(JMKUsageError, match=message):
            scoring_payload(bad)


def test_cli_refuses_bad_arguments_before_starting_anything(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["serve", "list", "--port", "3"], "jmk serve list takes no --port"),
        (["serve", "stop"], "jmk serve stop takes NAME"),
        (["serve", "predict", "x"], "jmk serve predict takes NAME and DATA"),
        (["serve", "models:/a/1", "extra"], "Unexpected extra"),
        (["serve", "models:/a/1", "--workers", "0"], "--workers must be a whole number"),
        (["serve", "models:/a/1", "--name", "Bad_Name"], "Try --name bad-name"),
        (["serve", "stop", "nothing"], "No endpoint 'nothing'"),
        (["serve", "predict", "nothing", "not json"], "not JSON"),
    ):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (state_dir / "serving").exists() or not list((state_dir / "serving").glob("*/endpoint.json"))


# --- real server processes ------------------------------------------------------------------------


@pytest.fixture
def manager(state_dir: Path) -> Iterator[ServingManager]:
    """A manager on the test's state directory; every server it left running is stopped afterwards."""
    serving = ServingManager()
    yield serving
    for endpoint in serving.list():
        if endpoint.running:
            serving.stop(endpoint.name)


def _servers_named(name: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "jupyter_mlflow_k8s.serving" in cmdline and name in cmdline and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_start_list_predict_stop(manager: ServingManager, served_model: Served, state_dir: Path) -> None:
    endpoint = manager.start(f"models:/{served_model.name}@prod", workers=2)
    assert endpoint.name == "iris-serving-prod" and endpoint.running
    assert endpoint.url.startswith("http://127.0.0.1:") and endpoint.port == int(endpoint.url.rsplit(":", 1)[1])
    record = json.loads((state_dir / "serving" / endpoint.name / "endpoint.json").read_text())
    assert record["pid"] == endpoint.pid and record["pid_start"] and record["flags"] == {"workers": 2}
    assert record["model_uri"] == "models:/iris-serving@prod" and record["url"] == endpoint.url
    assert [(e.name, e.status) for e in manager.list()] == [(endpoint.name, "running")]
    leader = psutil.Process(endpoint.pid)
    workers = leader.children(recursive=True)
    assert workers, "--workers 2 forks a second server process"

    frame = served_model.frame.iloc[:20]
    expected = served_model.models[0].predict(frame).tolist()  # @prod is version 1
    assert manager.predict(endpoint.name, frame) == expected
    assert manager.predict(endpoint.name, frame.to_dict(orient="records")) == expected
    assert manager.predict(endpoint.name, {c: frame[c].tolist() for c in FEATURES}) == expected
    assert manager.predict(endpoint.url, frame) == expected  # by URL too

    with pytest.raises(PredictionError, match="HTTP 400") as refused:
        manager.predict(endpoint.name, frame.rename(columns={"petal_width": "petal_wdth"}))
    assert "petal_width" in refused.value.message

    with pytest.raises(JMKUsageError, match=r"already running.*jmk serve stop iris-serving-prod"):
        manager.start(f"models:/{served_model.name}@prod")
    assert {p.pid for p in _servers_named(endpoint.name)} <= {endpoint.pid, *(w.pid for w in workers)}  # no second
    stopped = manager.stop(endpoint.name)
    assert stopped.status == "stopped" and stopped.stopped is not None
    assert process_gone(endpoint.pid) and all(process_gone(w.pid) for w in workers)
    assert not _servers_named(endpoint.name)
    assert [(e.name, e.status) for e in manager.list()] == [(endpoint.name, "stopped")]  # the record is kept
    with pytest.raises(ServingError, match="is stopped"):
        manager.predict(endpoint.name, frame)
    with pytest.raises(EndpointNotFound, match="Endpoints: iris-serving-prod"):
        manager.get("nope")


def test_unknown_model_uri_is_a_clear_error_and_leaves_no_process(manager: ServingManager, served_model: Served,
                                                                    state_dir: Path) -> None:
    with pytest.raises(ServerStartError, match="refused to start") as failed:
        manager.start("models:/no-such-model/1", name="ghost")
    assert failed.value.exit_code == 2
    assert "no-such-model" in str(failed.value)
    assert not _servers_named("ghost")
    assert not (state_dir / "serving" / "ghost" / "endpoint.json").exists()
    assert manager.list() == []


def test_a_port_in_use_is_named_in_the_error(manager: ServingManager, served_model: Served) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError, match=rf"Port {port} on 127.0.0.1 is already in use.*--port") as failed:
            manager.start(served_model.uri(), name="busy", port=port)
    assert failed.value.exit_code == 3
    assert not _servers_named("busy")


def test_jmk_serve_commands(manager: ServingManager, served_model: Served, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", served_model.uri("2"), "--name", "cli-v2", "--no-batching"]) == 0
    out = capsys.readouterr().out
    assert "serving models:/iris-serving/2 as cli-v2 at http://127.0.0.1:" in out
    endpoint = manager.get("cli-v2")
    assert endpoint.running and endpoint.flags == {"no_batching": True}

    assert main(["serve", "list"]) == 0
    listing = capsys.readouterr().out
    assert "cli-v2" in listing and "running" in listing and endpoint.url in listing

    rows = served_model.frame.iloc[:5]
    expected = served_model.models[1].predict(rows).tolist()
    assert main(["serve", "predict", "cli-v2", json.dumps({"dataframe_records": rows.to_dict(orient="records")})]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    assert main(["serve", "predict", "cli-v2", f"@{csv}"]) == 0
    assert json.loads(capsys.readouterr().out) == expected

    assert main(["serve", "stop", "cli-v2"]) == 0
    assert "stopped cli-v2" in capsys.readouterr().out
    wait_for(lambda: process_gone(endpoint.pid), timeout=5)
    assert manager.get("cli-v2").status == "stopped"
