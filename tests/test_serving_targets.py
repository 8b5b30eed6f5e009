"""Endpoint targets and the server's one table of options, without a cluster: the registry, the flags
generated four ways, the error families, and listings that go on when the Kubernetes API server is down."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_mlflow_k8s.cli import main
from jupyter_mlflow_k8s.errors import JMKUsageError, NotFoundError, UnavailableError
from jupyter_mlflow_k8s.exceptions import UnknownPlugin
from jupyter_mlflow_k8s.serving import options
from jupyter_mlflow_k8s.serving.manager import Endpoint, EndpointNotFound, ServingError
from jupyter_mlflow_k8s.serving.targets import EndpointTarget, get_target, target_class, target_names, targets
from jupyter_mlflow_k8s.serving.targets.kubernetes import call_within
from jupyter_mlflow_k8s.serving.targets.listing import EndpointTable, find, list_all

# --- the one table of options --------------------------------------------------------------------


def test_every_server_flag_is_offered_by_jmk_serve_and_serve_magic_with_the_same_spelling() -> None:
    from jupyter_mlflow_k8s.cli import build_parser
    from jupyter_mlflow_k8s.magics.serving import ServingMagics
    from jupyter_mlflow_k8s.serving.__main__ import parser as server_parser

    server = {a.dest for a in server_parser()._actions if a.option_strings and a.dest != "help"}
    jmk_serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    front = {a.dest for a in jmk_serve._actions if a.option_strings}
    magic = {a.dest for a in ServingMagics.serve.parser._actions if a.option_strings}  # type: ignore[attr-defined]
    assert server == {option.key for option in options.OPTIONS}
    assert server <= front and server <= magic
    assert front - server == {"help", "backend", "foreground"} and magic - server == {"backend"}


def test_server_defaults_become_its_settings_and_front_doors_default_to_not_given() -> None:
    from jupyter_mlflow_k8s.serving.__main__ import parser as server_parser
    from jupyter_mlflow_k8s.serving.__main__ import settings_from
    from jupyter_mlflow_k8s.serving.server import ServerSettings

    settings = settings_from(server_parser().parse_args(["models:/a/1"]))
    assert settings == ServerSettings(canary_fraction=0.1)  # the server's flag default, as before the table
    args = server_parser().parse_args(["models:/a/1", "--no-batching", "--max-body-mb", "5", "--name", "x"])
    assert (settings_from(args).batching, settings_from(args).max_body_mb, settings_from(args).name) == (False, 5.0, "x")
    parser = __import__("argparse").ArgumentParser()
    for names, keywords in options.front_arguments():
        parser.add_argument(*names, **keywords)
    assert options.given_flags(parser.parse_args([])) == {}
    given = parser.parse_args(["--workers", "2", "--no-batching", "--port", "9"])
    assert options.given_flags(given) == {"workers": 2, "no_batching": True}
    assert options.given_options(given) == ["--port", "--workers", "--no-batching"]


def test_flags_become_the_kubernetes_spec_fields_and_extra_arguments() -> None:
    fields = options.endpoint_spec_fields({"workers": 2, "no_batching": True, "max_body_mb": 5.0, "drift_window": 50,
                                           "canary": "models:/a/2", "canary_fraction": 0.2}, "a-v1", 8081)
    assert fields == {"name": "a-v1", "workers": 2, "batching": False, "canary": "models:/a/2",
                      "canary_fraction": 0.2, "port": 8081,
                      "extra_args": ("--max-body-mb", "5.0", "--drift-window", "50")}
    assert options.endpoint_spec_fields({}, "a")["batching"] is True
    with pytest.raises(JMKUsageError, match="--host does not go with --backend kubernetes"):
        options.endpoint_spec_fields({"host": "0.0.0.0"}, "a")


# --- the registry, imports and errors ------------------------------------------------------------


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(result.stdout.split())


def test_the_registry_names_built_ins_and_imports_them_only_when_asked() -> None:
    loaded = _imported_after("import jupyter_mlflow_k8s.serving.targets")
    assert "jupyter_mlflow_k8s.serving.targets.local" not in loaded
    assert "jupyter_mlflow_k8s.serving.targets.kubernetes" not in loaded
    assert "jupyter_mlflow_k8s.serving.kubernetes" not in loaded
    assert {"local", "kubernetes"} <= set(target_names())
    assert issubclass(target_class("kubernetes"), EndpointTarget) and target_class("local").name == "local"
    with pytest.raises(UnknownPlugin, match=r"Unknown endpoint target 'nomad'; known: .*kubernetes, local"):
        target_class("nomad")

    class Elsewhere(EndpointTarget):  # a plugin registers a class itself
        name = "elsewhere"

    targets.register("elsewhere", Elsewhere)
    try:
        assert target_class("elsewhere") is Elsewhere
    finally:
        targets._factories.pop("elsewhere")


def test_the_serve_magic_does_not_import_the_command_line() -> None:
    assert "jupyter_mlflow_k8s.serving.cli" not in _imported_after("import jupyter_mlflow_k8s.magics.serving")


def test_serving_errors_belong_to_the_families() -> None:
    assert issubclass(EndpointNotFound, NotFoundError) and issubclass(EndpointNotFound, LookupError)
    assert issubclass(ServingError, UnavailableError)


# --- listings with the API server down ------------------------------------------------------------


def _kubeconfig(path: Path, port: int) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "down",
        "clusters": [{"name": "down", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "down", "context": {"cluster": "down", "user": "u", "namespace": "team-a"}}]}))
    return path


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again: connections are refused


@pytest.fixture
def silent_api() -> Iterator[int]:
    """A port that accepts connections and never answers (an API server that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def _record_local_endpoint(state_dir: Path, name: str) -> None:
    """A local endpoint's record whose process has exited (listed as ``exited``)."""
    folder = state_dir / "serving" / name
    folder.mkdir(parents=True)
    endpoint = Endpoint(name=name, model_uri="models:/iris/1", url="http://127.0.0.1:9", host="127.0.0.1", port=9,
                        pid=None, pid_start=None, started=time.time() - 120, log_path=str(folder / "server.log"))
    (folder / "endpoint.json").write_text(json.dumps(endpoint.to_dict()))


def test_jmk_serve_list_shows_local_endpoints_and_says_the_api_server_is_down(
        state_dir: Path, tmp_path: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _record_local_endpoint(state_dir, "iris-local")
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", closed_port)))
    assert main(["serve", "list"]) == 0
    out, err = capsys.readouterr()
    assert "iris-local" in out and "exited" in out and "local" in out
    assert "kubernetes endpoints not listed" in err and "unreachable" in err

    assert main(["serve", "list", "--backend", "kubernetes"]) == 2  # asked for by name: its failure is the command's
    assert "unreachable" in capsys.readouterr().err
    assert main(["serve", "stop", "nothing"]) == 2
    err = capsys.readouterr().err
    assert "No endpoint 'nothing'" in err and "kubernetes unreachable" in err


def test_a_hanging_api_server_is_given_up_on(state_dir: Path, tmp_path: Path, silent_api: int) -> None:
    _record_local_endpoint(state_dir, "iris-local")
    config = Config({"KubernetesBackend": {"kubeconfig": str(_kubeconfig(tmp_path / "kubeconfig", silent_api))}})
    kubernetes = get_target("kubernetes", config=config, timeout=0.5)
    assert kubernetes.configured
    listing = list_all([get_target("local"), kubernetes])
    assert [(e.name, e.backend) for e in listing.endpoints] == [("iris-local", "local")]
    assert "did not answer listing endpoints in namespace 'team-a' within 0.5 s" in listing.unreachable["kubernetes"]
    table = EndpointTable(listing.endpoints, listing.unreachable)
    assert table.rows[0][0] == "iris-local" and "kubernetes: not listed, unreachable" in repr(table)
    with pytest.raises(NotFoundError, match=r"No endpoint 'nope'.*kubernetes unreachable"):
        find([get_target("local"), kubernetes], "nope")


def test_call_within_gives_up_and_translates() -> None:
    release = threading.Event()
    with pytest.raises(UnavailableError, match=r"did not answer waiting within 0\.2 s"):
        call_within(0.2, "waiting", release.wait)
    release.set()
    assert call_within(5, "adding", lambda: 1 + 1) == 2

    def refused() -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(UnavailableError, match="did not answer"):
        call_within(5, "calling", refused)


def test_without_a_cluster_the_listing_is_local_only(state_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    _record_local_endpoint(state_dir, "iris-local")
    kubernetes = get_target("kubernetes")
    assert not kubernetes.configured
    listing = list_all([get_target("local"), kubernetes])
    assert [e.name for e in listing.endpoints] == ["iris-local"] and listing.unreachable == {}


def test_the_sidebar_lists_local_endpoints_when_the_api_server_is_down(state_dir: Path, tmp_path: Path,
                                                                      closed_port: int) -> None:
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.labapp.service import SidebarService

    _record_local_endpoint(state_dir, "iris-local")
    config = Config({"KubernetesBackend": {"kubeconfig": str(_kubeconfig(tmp_path / "kubeconfig", closed_port))}})
    service = SidebarService(load_settings(), backend_config=config)
    try:
        listed: dict[str, Any] = service.endpoints()
        assert [(e["name"], e["backend"], e["status"]) for e in listed["endpoints"]] == [
            ("iris-local", "local", "exited")]
        [down] = listed["unreachable"]
        assert down["backend"] == "kubernetes" and "unreachable" in down["message"]
    finally:
        service.close()
