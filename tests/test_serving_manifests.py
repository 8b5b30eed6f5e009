"""A serving endpoint's manifests, without a cluster: valid for Kubernetes 1.27-1.37, shaped as asked, free of secrets."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
from k8s_manifests import SUPPORTED_VERSIONS, validate_manifest

from jupyter_mlflow_k8s.backends.kubernetes import KubernetesBackend
from jupyter_mlflow_k8s.exceptions import InvalidManifest, JMKUsageError
from jupyter_mlflow_k8s.k8s.pods import PodSettings, PVCMount
from jupyter_mlflow_k8s.k8s.validation import check_manifest
from jupyter_mlflow_k8s.serving.kubernetes import (
    Autoscale,
    EndpointError,
    EndpointSpec,
    deployment_manifest,
    endpoint_manifests,
    endpoint_settings,
    env_secret_manifest,
    hpa_manifest,
    model_identity,
    rollout_patch,
    server_command,
    service_manifest,
)

SECRET_VALUE = "s3cr3t-aws-key-value"
CREDENTIALS = {"AWS_SECRET_ACCESS_KEY": SECRET_VALUE, "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"}
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def cpu_settings(**changes: Any) -> PodSettings:
    return dataclasses.replace(
        PodSettings(namespace="ml-team", image="ghcr.io/example/serve:1.2", cpu="500m", memory="1Gi"), **changes)


def spec(**changes: Any) -> EndpointSpec:
    return dataclasses.replace(
        EndpointSpec(name="iris", model_uri="models:/iris/3", tracking_uri="http://mlflow.mlflow:5000"), **changes)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


VARIANTS = {
    "cpu": (spec(), cpu_settings()),
    "gpu-autoscaled": (spec(autoscale=Autoscale(2, 6, 60), replicas=3),
                       cpu_settings(gpus=2, memory="16Gi", volumes=(PVCMount("models", "/models", True),),
                                    node_selector={"gpu": "a100"}, secrets=("wandb",))),
    "canary": (spec(canary="models:/iris/4", canary_fraction=0.25, workers=4, max_batch_size=32, max_wait_ms=2.5),
               cpu_settings(cpu=None, memory=None)),
    "shadow-no-batching": (spec(shadow="models:/iris@challenger", batching=False, port=9000), cpu_settings()),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_validates_against_every_schema_and_our_checks(variant: str) -> None:
    endpoint, settings = VARIANTS[variant]
    manifests = endpoint_manifests(endpoint, settings, CREDENTIALS)
    kinds = [m["kind"] for m in manifests]
    assert kinds == ["Secret", "Deployment", "Service"] + (["HorizontalPodAutoscaler"] if endpoint.autoscale else [])
    for manifest in manifests:
        validate_manifest(manifest, SUPPORTED_VERSIONS)
        assert check_manifest(manifest) == []


def test_deployment_shape() -> None:
    deployment = deployment_manifest(spec(replicas=2), cpu_settings(), env_secret="iris-env")
    server = container(deployment)
    assert server["command"] == ["python", "-m", "jupyter_mlflow_k8s.serving", "models:/iris/3", "--host", "0.0.0.0",
                                 "--port", "8080", "--name", "iris"]
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.mlflow:5000"} in server["env"]
    assert server["envFrom"] == [{"secretRef": {"name": "iris-env"}}]
    assert server["readinessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["livenessProbe"]["initialDelaySeconds"] >= 30, "model loading must not count as a dead server"
    assert server["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"] == {
        "app.kubernetes.io/name": "jupyter-mlflow-k8s", "app.kubernetes.io/instance": "iris",
        "app.kubernetes.io/managed-by": "jupyter-mlflow-k8s", "app.kubernetes.io/component": "serving",
        "jmk.io/endpoint": "iris", "jmk.io/model": "iris", "jmk.io/model-version": "3"}
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "jupyter-mlflow-k8s", "app.kubernetes.io/component": "serving",
        "jmk.io/endpoint": "iris"}
    assert {k: v for k, v in template["annotations"].items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
    assert deployment["metadata"]["namespace"] == "ml-team"


def test_service_is_cluster_ip_port_80_to_the_servers_port() -> None:
    service = service_manifest(spec(port=9000), cpu_settings())
    assert service["spec"] == {
        "type": "ClusterIP",
        "selector": {"app.kubernetes.io/managed-by": "jupyter-mlflow-k8s", "app.kubernetes.io/component": "serving",
                     "jmk.io/endpoint": "iris"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}
    deployment = deployment_manifest(spec(port=9000), cpu_settings())
    assert container(deployment)["ports"][0] == {"name": "http", "containerPort": 9000, "protocol": "TCP"}


def test_server_flags_pass_through_and_parse_with_the_servers_own_parser() -> None:
    from jupyter_mlflow_k8s.serving.__main__ import parser as server_parser

    def parser() -> Any:
        strict = server_parser()
        strict.allow_abbrev = False  # each flag must be the server's own spelling, not an abbreviation of it
        return strict

    endpoint = spec(workers=4, batching=False, max_batch_size=32, max_wait_ms=2.5, canary="models:/iris/4",
                    canary_fraction=0.25, extra_args=("--drift-window", "500"))
    command = server_command(endpoint)
    assert command[:3] == ["python", "-m", "jupyter_mlflow_k8s.serving"]
    args = parser().parse_args(command[3:])
    assert (args.model_uri, args.host, args.port, args.name) == ("models:/iris/3", "0.0.0.0", 8080, "iris")
    assert (args.workers, args.no_batching, args.max_batch_size, args.max_wait_ms) == (4, True, 32, 2.5)
    assert (args.canary, args.canary_fraction, args.shadow, args.drift_window) == ("models:/iris/4", 0.25, None, 500)
    shadow = parser().parse_args(server_command(spec(shadow="models:/iris@challenger"))[3:])
    assert (shadow.shadow, shadow.canary, shadow.no_batching) == ("models:/iris@challenger", None, False)
    assert server_command(spec(), "/opt/conda/bin/python")[0] == "/opt/conda/bin/python"


@pytest.mark.parametrize(("name", "why"), [
    ("Iris", "'iris'"), ("iris_model", "'iris-model'"), ("1iris", "'model-1iris'"), ("iris-", "'iris'"),
    ("", "starting with a letter"), ("a" * 64, "at most 63 characters"), ("iris.v2", "'iris-v2'"),
])
def test_bad_names_are_refused_with_a_name_to_use(name: str, why: str) -> None:
    with pytest.raises(EndpointError, match="cannot name a Service") as caught:
        deployment_manifest(spec(name=name), cpu_settings())
    assert why in str(caught.value)
    assert isinstance(caught.value, JMKUsageError)
    for build in (service_manifest, hpa_manifest):
        with pytest.raises(EndpointError, match="cannot name a Service"):
            build(spec(name=name, autoscale=Autoscale()), cpu_settings())


@pytest.mark.parametrize(("changes", "message"), [
    ({"port": 0}, "port 0 must be between 1 and 65535"),
    ({"port": 70000}, "port 70000 must be between 1 and 65535"),
    ({"replicas": -1}, "replicas -1 must be a whole number, 0 or more"),
    ({"workers": 0}, "workers 0 must be a whole number, 1 or more"),
    ({"model_uri": " "}, "No model to serve"),
    ({"canary_fraction": 0.1}, "canary_fraction needs a canary model URI"),
    ({"canary": "models:/iris/4", "canary_fraction": 1.5}, "a value in \\(0, 1\\]"),
    ({"canary": "models:/iris/4", "shadow": "models:/iris/5"}, "A canary and a shadow together"),
    ({"autoscale": Autoscale(3, 2)}, "min_replicas must be at least 1 and at most max_replicas"),
    ({"autoscale": Autoscale(0, 2)}, "min_replicas must be at least 1"),
    ({"autoscale": Autoscale(1, 2, 0)}, "cpu_utilization 0 must be a percentage"),
])
def test_bad_specs_are_refused_before_anything_is_built(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(EndpointError, match=message):
        endpoint_manifests(spec(**changes), cpu_settings(), {})


def test_autoscaling_needs_a_cpu_request() -> None:
    with pytest.raises(EndpointError, match=r"needs a CPU request .* cpu='1'"):
        endpoint_manifests(spec(autoscale=Autoscale()), cpu_settings(cpu=None), {})


@pytest.mark.parametrize(("changes", "field"), [
    ({"cpu": "lots"}, "resources.limits.cpu"), ({"memory": "-1Gi"}, "resources.limits.memory"),
    ({"cpu": "2", "memory": "1Gi", "image": ""}, "containers[0].image"),
])
def test_bad_resources_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidManifest) as caught:
        deployment_manifest(spec(), cpu_settings(**changes))
    assert field in str(caught.value)
    assert caught.value.problems


def test_endpoint_settings_come_from_the_backend_with_its_checks() -> None:
    from traitlets.config import Config

    config = Config({"KubernetesBackend": {"namespace": "team-a", "image": "ghcr.io/example/serve:2",
                                           "presets": {"t4": {"gpus": 1, "memory": "12Gi"}}}})
    backend = KubernetesBackend(None, config=config)
    settings = endpoint_settings(backend, preset="t4", cpu="2")
    assert (settings.namespace, settings.image, settings.gpus, settings.memory, settings.cpu) == (
        "team-a", "ghcr.io/example/serve:2", 1, "12Gi", "2")
    with pytest.raises(JMKUsageError, match="cpu"):
        endpoint_settings(backend, cpu="lots")
    with pytest.raises(JMKUsageError, match="Unknown preset 'v100'"):
        endpoint_settings(backend, preset="v100")
    with pytest.raises(JMKUsageError, match="uppercase"):
        endpoint_settings(backend, image="GHCR.io/Example/Serve")


def test_gpus_are_limits_with_a_toleration_of_their_taint() -> None:
    deployment = deployment_manifest(spec(), cpu_settings(gpus=2))
    assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in container(deployment)["resources"].get("requests", {})
    assert deployment["spec"]["template"]["spec"]["tolerations"] == [GPU_TAINT]
    other = deployment_manifest(spec(), cpu_settings(gpus=1, gpu_resource="amd.com/gpu"))
    assert other["spec"]["template"]["spec"]["tolerations"] == [{**GPU_TAINT, "key": "amd.com/gpu"}]
    assert "tolerations" not in deployment_manifest(spec(), cpu_settings())["spec"]["template"]["spec"]
    tolerating = cpu_settings(gpus=1, tolerations=({"operator": "Exists"},))
    assert deployment_manifest(spec(), tolerating)["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]


def test_autoscaler_only_when_asked_on_cpu_between_its_bounds() -> None:
    assert [m["kind"] for m in endpoint_manifests(spec(), cpu_settings(), {})] == ["Secret", "Deployment", "Service"]
    with pytest.raises(EndpointError, match="asks for no autoscaling"):
        hpa_manifest(spec(), cpu_settings())
    autoscaled = spec(autoscale=Autoscale(2, 8, 65), replicas=5)
    hpa = hpa_manifest(autoscaled, cpu_settings())
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "iris"},
        "minReplicas": 2, "maxReplicas": 8,
        "metrics": [{"type": "Resource",
                     "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 65}}}]}
    assert deployment_manifest(autoscaled, cpu_settings())["spec"]["replicas"] == 2, "starts at the autoscaler's minimum"


def apply(manifest: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply JSON Patch ``add`` operations (the only ones rollout_patch makes) to a copy."""
    result = copy.deepcopy(manifest)
    for operation in patch:
        assert operation["op"] == "add"
        *parents, last = operation["path"].strip("/").split("/")
        target = result
        for key in parents:
            target = target[key]
        target[last] = operation["value"]
    return result


def test_a_new_version_rolls_out_by_changing_only_the_pod_template() -> None:
    settings = cpu_settings()
    first = deployment_manifest(spec(model_uri="models:/iris/3"), settings, env_secret="iris-env")
    second = deployment_manifest(spec(model_uri="models:/iris/4"), settings, env_secret="iris-env")
    assert {key: value for key, value in first["spec"].items() if key != "template"} == \
        {key: value for key, value in second["spec"].items() if key != "template"}
    assert first["spec"]["template"] != second["spec"]["template"]
    assert first["metadata"]["name"] == second["metadata"]["name"]
    assert second["spec"]["template"]["metadata"]["labels"]["jmk.io/model-version"] == "4"
    assert "models:/iris/4" in container(second)["command"]

    patch = rollout_patch(second)
    assert {op["path"] for op in patch} == {"/metadata/labels", "/metadata/annotations", "/spec/strategy",
                                            "/spec/template", "/spec/replicas"}
    live = {**first, "status": {"replicas": 1}, "metadata": {**first["metadata"], "uid": "u-1", "generation": 1}}
    rolled = apply(live, patch)
    assert rolled["spec"] == second["spec"]
    assert rolled["spec"]["selector"] is not None and rolled["metadata"]["uid"] == "u-1"
    assert "/spec/replicas" not in {op["path"] for op in rollout_patch(second, keep_replicas=True)}, \
        "an autoscaler owns the replica count"


def test_credentials_stay_in_the_secret() -> None:
    endpoint = spec(tracking_uri="https://jane:tracking-pa55word@mlflow.example")
    secret, deployment, service = endpoint_manifests(endpoint, cpu_settings(), CREDENTIALS)
    assert secret["metadata"]["name"] == "iris-env"
    assert secret["stringData"] == {**CREDENTIALS, "MLFLOW_TRACKING_URI": "https://jane:tracking-pa55word@mlflow.example"}
    assert "immutable" not in secret, "a redeploy replaces it"
    for manifest in (deployment, service):
        text = json.dumps(manifest)
        assert SECRET_VALUE not in text and "pa55word" not in text
    assert "MLFLOW_TRACKING_URI" not in {e["name"] for e in container(deployment)["env"]}
    assert container(deployment)["envFrom"] == [{"secretRef": {"name": "iris-env"}}]
    plain = env_secret_manifest(spec(), cpu_settings(), {})
    assert plain["stringData"] == {}


@pytest.mark.parametrize(("uri", "identity"), [
    ("models:/iris/3", ("iris", "3")), ("models:/iris@prod", ("iris", "prod")),
    ("runs:/0123abcd/model", ("model", "0123abcd")), ("/mnt/models/churn", ("churn", "")),
])
def test_model_name_and_version_for_labels(uri: str, identity: tuple[str, str]) -> None:
    assert model_identity(uri) == identity
    labels = deployment_manifest(spec(model_uri=uri), cpu_settings())["spec"]["template"]["metadata"]["labels"]
    assert (labels["jmk.io/model"], labels["jmk.io/model-version"]) == identity
