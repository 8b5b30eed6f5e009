"""The Kubernetes layer: the namespace resolver, the client factory, apply/delete_owned, and serving through it.

No cluster: the API is a dict behind the layer's one lookup of client methods.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from jupyter_mlflow_k8s import k8s
from jupyter_mlflow_k8s.errors import ConflictError, JMKUsageError, NotFoundError, UnavailableError
from jupyter_mlflow_k8s.k8s import namespace as namespace_module
from jupyter_mlflow_k8s.k8s import objects as objects_module
from jupyter_mlflow_k8s.serving.kubernetes import EndpointNotFound, EndpointSpec, deploy, undeploy

OURS = {"app.kubernetes.io/managed-by": "jupyter-mlflow-k8s"}


class Response:
    def __init__(self, obj: object) -> None:
        self.data = json.dumps(obj).encode()


class FakeApi:
    """Objects by (kind, namespace, name); ``fail`` maps (kind, verb) to an API status to answer instead."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.fail: dict[tuple[str, str], int] = {}
        self.calls: list[tuple[str, str, str]] = []

    def method(self, _api: object, kind: str, verb: str) -> Callable[..., Response]:
        def call(*args: Any, **_: Any) -> Response:
            if verb == "create":
                namespace, body = args
                name = body["metadata"]["name"]
            else:
                name, namespace, *rest = args
                body = rest[0] if rest else None
            self.calls.append((verb, kind, name))
            if (kind, verb) in self.fail:
                raise kubernetes.client.ApiException(status=self.fail[(kind, verb)], reason="Refused")
            key = (kind, namespace, name)
            if verb == "create":
                if key in self.objects:
                    raise kubernetes.client.ApiException(status=409, reason="AlreadyExists")
                self.objects[key] = body
            elif key not in self.objects:
                raise kubernetes.client.ApiException(status=404, reason="NotFound")
            elif verb in ("replace", "patch"):
                self.objects[key] = body if verb == "replace" else {**self.objects[key], "patched": body}
            elif verb == "delete":
                return Response(self.objects.pop(key))
            return Response(self.objects[key])

        return call

    def add(self, kind: str, name: str, labels: dict[str, str], namespace: str = "team") -> None:
        self.objects[(kind, namespace, name)] = {"kind": kind, "metadata": {"name": name, "namespace": namespace,
                                                                           "labels": labels}}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(objects_module, "_method", fake.method)
    return fake


def config_map(name: str = "settings", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"},
            "metadata": {"name": name, "namespace": "team", "labels": OURS if labels is None else labels}}


# -- the namespace ---------------------------------------------------------------------------


@pytest.fixture
def no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No kubeconfig anywhere, no namespace setting, and a service-account namespace file at a path we own."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("JMK_K8S_NAMESPACE", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    account = tmp_path / "serviceaccount" / "namespace"
    account.parent.mkdir()
    account.write_text("team-sa\n")
    monkeypatch.setattr(namespace_module, "SERVICE_ACCOUNT_NAMESPACE", account)
    return account


def kubeconfig(path: Path, namespaces: dict[str, str | None], current: str) -> Path:
    contexts = [{"name": name, "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})}}
                for name, ns in namespaces.items()]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current, "contexts": contexts,
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    return path


def test_the_namespace_in_order_explicit_setting_env_pod_kubeconfig_default(
        no_kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert k8s.resolve_namespace() == "default"  # nothing at all
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # in a pod, no kubeconfig: the pod's namespace
    assert k8s.resolve_namespace() == "team-sa"
    monkeypatch.setenv("JMK_K8S_NAMESPACE", "team-env")
    assert k8s.resolve_namespace() == "team-env"
    assert k8s.resolve_namespace(setting="team-setting") == "team-setting"
    assert k8s.resolve_namespace("team-flag", "team-setting") == "team-flag"

    monkeypatch.delenv("JMK_K8S_NAMESPACE")
    config = kubeconfig(tmp_path / "config", {"main": "team-main", "gpu": "team-gpu", "bare": None}, "main")
    monkeypatch.setenv("KUBECONFIG", str(config))  # a kubeconfig: its context's namespace, not the pod's
    assert k8s.resolve_namespace() == "team-main"
    assert k8s.resolve_namespace(context="gpu") == "team-gpu"
    assert k8s.resolve_namespace(context="bare") == "default"


def test_the_backend_uses_the_same_resolver(no_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from traitlets.config import Config

    from jupyter_mlflow_k8s.backends.kubernetes import KubernetesBackend

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert KubernetesBackend(None).namespace == "team-sa"
    configured = KubernetesBackend(None, config=Config({"KubernetesBackend": {"namespace": "team-a"}}))
    assert configured.namespace == "team-a"


def test_a_missing_kubeconfig_is_a_usage_error_that_says_what_to_set(no_kubeconfig: Path) -> None:
    with pytest.raises(JMKUsageError, match="Set KUBECONFIG"):
        k8s.api_client()


def test_a_kubeconfig_context_is_chosen_by_name(tmp_path: Path, no_kubeconfig: Path) -> None:
    config = kubeconfig(tmp_path / "config", {"main": "a", "gpu": "b"}, "main")
    assert k8s.api_client(str(config), "gpu").configuration.host == "https://127.0.0.1:6443"
    with pytest.raises(JMKUsageError, match="context 'nope'"):
        k8s.api_client(str(config), "nope")


# -- apply and delete_owned ------------------------------------------------------------------


def test_apply_creates_then_replaces_what_is_ours(api: FakeApi) -> None:
    assert k8s.apply(object(), config_map())[0] == "created"
    changed = config_map()
    changed["data"] = {"a": "2"}
    action, answered = k8s.apply(object(), changed)
    assert action == "replaced" and answered["data"] == {"a": "2"}
    assert k8s.apply(object(), changed, patch=[{"op": "add", "path": "/data/b", "value": "3"}])[0] == "patched"


def test_apply_refuses_an_object_we_did_not_make(api: FakeApi) -> None:
    api.add("ConfigMap", "settings", {"team": "platform"})
    with pytest.raises(ConflictError, match=r"ConfigMap team/settings exists and is not managed by "
                                            r"jupyter_mlflow_k8s \(label app.kubernetes.io/managed-by"):
        k8s.apply(object(), config_map())
    assert [verb for verb, *_ in api.calls] == ["create", "read"]  # nothing replaced
    assert api.objects[("ConfigMap", "team", "settings")]["metadata"]["labels"] == {"team": "platform"}


def test_delete_owned_deletes_ours_and_refuses_others(api: FakeApi) -> None:
    api.add("ConfigMap", "ours", OURS)
    api.add("ConfigMap", "theirs", {})
    assert k8s.delete_owned(object(), "ConfigMap", "ours", "team") is True
    assert k8s.delete_owned(object(), "ConfigMap", "ours", "team") is False  # gone already
    with pytest.raises(ConflictError, match="delete it or choose another name"):
        k8s.delete_owned(object(), "ConfigMap", "theirs", "team")
    assert ("ConfigMap", "team", "theirs") in api.objects


@pytest.mark.parametrize(("status", "family"), [(403, UnavailableError), (404, NotFoundError),
                                                (422, JMKUsageError), (500, UnavailableError)])
def test_api_errors_leave_as_families_saying_what_was_done(api: FakeApi, status: int, family: type) -> None:
    api.fail[("ConfigMap", "create")] = status
    with pytest.raises(family, match="Cannot create ConfigMap team/settings: the Kubernetes API answered"):
        k8s.apply(object(), config_map())


# -- serving through the layer ---------------------------------------------------------------


def endpoint() -> EndpointSpec:
    return EndpointSpec(name="iris", model_uri="models:/iris/1")


def test_deploy_refuses_a_deployment_we_did_not_make_and_changes_nothing(api: FakeApi) -> None:
    api.add("Deployment", "iris", {"app": "someone-elses"})
    with pytest.raises(ConflictError, match="Deployment team/iris exists and is not managed by jupyter_mlflow_k8s"):
        deploy(object(), endpoint(), k8s.PodSettings(namespace="team"), credentials={}, pin_alias=False)
    assert set(api.objects) == {("Deployment", "team", "iris")}
    assert api.objects[("Deployment", "team", "iris")]["metadata"]["labels"] == {"app": "someone-elses"}


def test_deploy_refuses_a_service_we_did_not_make(api: FakeApi) -> None:
    api.add("Service", "iris", {})
    with pytest.raises(ConflictError, match="Service team/iris"):
        deploy(object(), endpoint(), k8s.PodSettings(namespace="team"), credentials={}, pin_alias=False)
    assert set(api.objects) == {("Service", "team", "iris")}


def test_deploy_then_redeploy_then_undeploy_through_the_layer(api: FakeApi) -> None:
    settings = k8s.PodSettings(namespace="team")
    deployed = deploy(object(), endpoint(), settings, credentials={}, pin_alias=False)
    assert deployed.name == "iris" and set(api.objects) == {
        ("Secret", "team", "iris-env"), ("Deployment", "team", "iris"), ("Service", "team", "iris")}
    deploy(object(), endpoint(), settings, credentials={}, pin_alias=False)
    assert "patched" in api.objects[("Deployment", "team", "iris")]  # a rolling update, not a replacement
    undeploy(object(), "iris", "team", wait=None)
    assert api.objects == {}
    with pytest.raises(EndpointNotFound, match="No endpoint 'iris'"):
        undeploy(object(), "iris", "team", wait=None)


def test_undeploy_refuses_objects_we_did_not_make_and_deletes_nothing(api: FakeApi) -> None:
    api.add("Deployment", "iris", OURS)
    api.add("Service", "iris", {"app": "someone-elses"})
    with pytest.raises(ConflictError, match="Service team/iris exists and is not managed by jupyter_mlflow_k8s"):
        undeploy(object(), "iris", "team", wait=None)
    assert set(api.objects) == {("Deployment", "team", "iris"), ("Service", "team", "iris")}


def test_kubernetes_errors_of_deploy_and_undeploy_are_families_not_api_exceptions(api: FakeApi) -> None:
    api.fail[("Secret", "create")] = 403
    with pytest.raises(UnavailableError, match=r"Cannot create Secret team/iris-env: .* lacks a right"):
        deploy(object(), endpoint(), k8s.PodSettings(namespace="team"), credentials={}, pin_alias=False)
    api.fail.clear()
    api.add("Deployment", "iris", OURS)
    api.fail[("Deployment", "delete")] = 500
    with pytest.raises(UnavailableError, match="Cannot delete Deployment team/iris"):
        undeploy(object(), "iris", "team", wait=None)


# -- one PodSettings, at its old paths too ---------------------------------------------------


def test_pod_settings_are_one_public_class_at_the_old_path_too() -> None:
    from jupyter_mlflow_k8s.k8s.pods import PodSettings
    from jupyter_mlflow_k8s.k8s.presets import parse_volume

    assert PodSettings is k8s.PodSettings and parse_volume is k8s.parse_volume


def test_the_layer_imports_no_upper_room() -> None:
    import ast

    upper = ("backends", "serving", "pipelines", "magics", "labapp", "cli", "jobs", "widgets")
    for path in Path(k8s.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                top = (node.module or "").split(".")[0]
                assert top not in upper, f"{path.name} imports ..{node.module}"
