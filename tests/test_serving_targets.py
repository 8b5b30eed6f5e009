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
from jupyter_mlflow_k8s.serving.errors import EndpointNotFound
from jupyter_mlflow_k8s.serving.manager import Endpoint, ServingError
from jupyter_mlflow_k8s.serving.targets import EndpointTarget, get_target, target_class, target_names, targets
from jupyter_mlflow_k8s.serving.targets.kubernetes import call_within
from jupyter_mlflow_k8s.serving.targets.listing import find, list_all
from jupyter_mlflow_k8s.widgets.endpoints import EndpointTable

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
    assert front - server == {"help", "backend", "monitor", "foreground"} and magic - server == {"backend", "monitor"}


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


def test_one_endpoint_not_found_for_every_target() -> None:
    from jupyter_mlflow_k8s.serving import kubernetes

    assert kubernetes.EndpointNotFound is EndpointNotFound  # the Kubernetes layer raises the same class
    local = EndpointNotFound("iris", ["a", "b"], hint=" Start one.")
    assert str(local) == "No endpoint 'iris'. Endpoints: a, b. Start one."
    assert str(EndpointNotFound("iris", [])) == "No endpoint 'iris'. There are none yet."
    there = EndpointNotFound("iris", ["a"], namespace="team-a")
    assert str(there) == "No endpoint 'iris' in namespace 'team-a'. Endpoints there: a."
    assert str(EndpointNotFound("iris", [], backend="local")) == "No endpoint 'iris' on local. There are none."
    assert (there.name, there.known, there.namespace) == ("iris", ["a"], "team-a")


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

    # asked for by name: its failure is the command's, with the unavailable family's exit status
    assert main(["serve", "list", "--backend", "kubernetes"]) == UnavailableError.exit_status
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
    from jupyter_mlflow_k8s.labapp.metrics_client import ScrapeError
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
        with pytest.raises(ScrapeError, match="Kubernetes endpoints cannot be listed"):
            service.endpoint_metrics("iris-k8s")  # a 502: a metrics stream tries again instead of ending
    finally:
        service.close()


# --- requests and scrapes through the API server's proxy, or to the pods ---------------------------


class _Server:
    """A real HTTP server on 127.0.0.1 in a thread, answering with ``handle(method, path, body)``."""

    def __init__(self, handle: Any) -> None:
        import http.server

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.command, self.path))
                status, body = handle(self.command, self.path, self.rfile.read(length))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.requests: list[tuple[str, str]] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


METRICS = '# TYPE jmk_requests_total counter\njmk_requests_total{model="iris",version="1",code="200"} %d\n'


def _inference(answer: int) -> Any:
    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/metrics":
            return 200, (METRICS % answer).encode()
        if json.loads(body) == {"dataframe_records": [{"x": 0.0}]}:
            return 400, b'{"error_code": "BAD_REQUEST", "message": "missing inputs: [\'y\']"}'
        return 200, json.dumps({"predictions": [answer]}).encode()
    return handle


def _api_server(pod_port: int, proxy: Any) -> Any:
    """The few API paths the target uses: our Deployment ``iris``, its ready pod, and the proxy."""
    from jupyter_mlflow_k8s.serving.kubernetes import MODEL_URI_ANNOTATION

    deployment = {"metadata": {"name": "iris", "namespace": "team-a", "generation": 1, "labels": {},
                               "annotations": {MODEL_URI_ANNOTATION: "models:/iris/1"}},
                  "spec": {"replicas": 1},
                  "status": {"observedGeneration": 1, "replicas": 1, "availableReplicas": 1, "updatedReplicas": 1}}
    pod = {"metadata": {"name": "iris-abc", "namespace": "team-a"},
           "spec": {"containers": [{"name": "server", "ports": [{"name": "http", "containerPort": pod_port}]}]},
           "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}

    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path.startswith("/apis/apps/v1/namespaces/team-a/deployments"):
            return 200, json.dumps({"items": [deployment]}).encode()
        if path.startswith("/api/v1/namespaces/team-a/pods?"):
            return 200, json.dumps({"items": [pod]}).encode()
        if "/proxy/" in path:
            return proxy(method, path.split("/proxy/")[1], body)
        return 404, json.dumps({"kind": "Status", "code": 404, "message": "not found"}).encode()
    return handle


@pytest.fixture
def kubernetes_target(tmp_path: Path, state_dir: Path) -> Iterator[Any]:
    """A Kubernetes target on a fake API server whose proxy answers for the pod (``proxy["mode"] = "ok"``) or
    refuses as a cluster does for a pod on the host network (``"refuse"``); the pod answers for itself."""
    pod = _Server(_inference(1))
    mode = {"mode": "ok"}
    proxied = _inference(7)

    def proxy(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if mode["mode"] == "ok":
            return proxied(method, "/" + path, body)
        return 400, json.dumps({"kind": "Status", "code": 400, "message": "address not allowed"}).encode()

    api = _Server(_api_server(pod.port, proxy))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{api.port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "team-a"}}]}))
    target = get_target("kubernetes", config=Config({"KubernetesBackend": {"kubeconfig": str(kubeconfig)}}))
    target.mode, target.api_requests = mode, api.requests  # type: ignore[attr-defined]
    yield target
    api.close()
    pod.close()


def test_requests_and_scrapes_go_through_the_api_servers_proxy(kubernetes_target: Any) -> None:
    from jupyter_mlflow_k8s.serving.manager import PredictionError

    [listed] = kubernetes_target.list()
    assert (listed.name, listed.status, listed.where, listed.model_uri) == (
        "iris", "running", "kubernetes team-a 1/1", "models:/iris/1")
    assert kubernetes_target.predict("iris", [[1.0, 2.0]]) == [7]
    assert ("POST", "/api/v1/namespaces/team-a/services/iris:http/proxy/invocations") in kubernetes_target.api_requests
    assert kubernetes_target.metrics_text("iris").endswith('code="200"} 7\n')  # the pod, through its pod proxy
    assert any(path.startswith("/api/v1/namespaces/team-a/pods/iris-abc:") and path.endswith("/proxy/metrics")
               for _, path in kubernetes_target.api_requests)
    with pytest.raises(PredictionError, match=r"refused the input \(HTTP 400\): missing inputs"):
        kubernetes_target.predict("iris", {"dataframe_records": [{"x": 0.0}]})  # the server's 400, not the proxy's


def test_where_the_proxy_refuses_the_pods_answer_themselves(kubernetes_target: Any) -> None:
    from jupyter_mlflow_k8s.serving.manager import PredictionError

    kubernetes_target.mode["mode"] = "refuse"
    assert kubernetes_target.predict("iris", [[1.0, 2.0]]) == [1]
    assert kubernetes_target.metrics_text("iris").endswith('code="200"} 1\n')
    with pytest.raises(PredictionError, match="missing inputs"):
        kubernetes_target.predict("iris", {"dataframe_records": [{"x": 0.0}]})
    with pytest.raises(NotFoundError, match=r"No endpoint 'nope' in namespace 'team-a'\. Endpoints there: iris"):
        kubernetes_target.get("nope")
