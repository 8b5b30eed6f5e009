"""The Kubernetes objects of an endpoint: its Deployment, Service, autoscaler and Secret of credentials.

Pure functions of an :class:`EndpointSpec` and the backend's :class:`~jupyter_mlflow_k8s.k8s.PodSettings`
(:func:`endpoint_settings`, the same layering as jobs): no API call, and each manifest returned has
passed :func:`jupyter_mlflow_k8s.k8s.ensure_valid`. The pod is placed as every pod of ours is
(:func:`jupyter_mlflow_k8s.k8s.pod_spec`), so an endpoint's pod is shaped like a job's.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ...k8s.pods import CREDENTIAL_VARIABLES, PodSettings, compact, pod_spec, pvc_volumes, resources, shm_volume
from ...k8s.presets import layered_settings
from ...k8s.validation import ensure_valid
from ..options import OPTIONS, add_server_arguments, server_arguments, spec_flags
from .spec import (
    CONTAINER,
    DEFAULT_PORT,
    MODEL_URI_ANNOTATION,
    MONITORING_ANNOTATION,
    SERVICE_PORT,
    SERVING_MODULE,
    TERMINATION_GRACE_SECONDS,
    EndpointError,
    EndpointSpec,
    _labels,
    _metadata,
    check_spec,
    endpoint_selector,
    env_secret_name,
)

if TYPE_CHECKING:
    from ...backends.kubernetes import KubernetesBackend


# -- the manifests ---------------------------------------------------------------------------


def server_command(spec: EndpointSpec, python: str = "python") -> list[str]:
    """The container's command: the inference server on all interfaces, with the endpoint's flags (options.py)."""
    command = [python, "-m", SERVING_MODULE, spec.model_uri, "--host", "0.0.0.0", "--port", str(spec.port),  # noqa: S104
               "--name", spec.name]
    return command + server_arguments(spec_flags(spec)) + list(spec.extra_args)


def command_flags(command: Sequence[str]) -> tuple[int, dict[str, Any]]:
    """The port and the server flags (``start``'s keywords) of a command :func:`server_command` made.

    Its inverse, for reading an endpoint back: a flag at the server's default is left out, as
    :func:`~jupyter_mlflow_k8s.serving.options.spec_flags` leaves it out. A command that is not the
    server's (edited by hand) reads as the default port and no flags.
    """
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("model_uri")
    add_server_arguments(parser)
    try:
        parsed, _ = parser.parse_known_args(list(command[3:]))
    except (argparse.ArgumentError, SystemExit):
        return DEFAULT_PORT, {}
    flags = {option.key: value for option in OPTIONS
             if option.start_flag and option.on_kubernetes and (value := getattr(parsed, option.key)) is not None
             and value is not False and value != option.default}
    return int(parsed.port), flags


def _tracking_in_secret(uri: str | None) -> bool:
    """A tracking URI with a password travels in the Secret, never in the Deployment."""
    return bool(uri) and urlsplit(str(uri)).password is not None


def _container(spec: EndpointSpec, settings: PodSettings, mounts: list[dict[str, Any]],
               env_secret: str | None) -> dict[str, Any]:
    env = {**settings.env, "PYTHONUNBUFFERED": "1"}
    if spec.tracking_uri and not _tracking_in_secret(spec.tracking_uri):
        env["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    secrets = [*settings.secrets, *([env_secret] if env_secret else [])]
    return compact({
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": server_command(spec, settings.python),
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": name, "value": value} for name, value in env.items()],
        "envFrom": [{"secretRef": {"name": name}} for name in secrets],
        "resources": resources(settings),
        "volumeMounts": mounts,
        # /ping answers 200 once the model is loaded: until then the pod gets no traffic.
        "readinessProbe": {"httpGet": {"path": "/ping", "port": "http"}, "initialDelaySeconds": 1,
                           "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3},
        # A server that stops answering /health is restarted, but only once loading has had its time.
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "initialDelaySeconds": spec.load_seconds,
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })


def _pod_template(spec: EndpointSpec, settings: PodSettings, env_secret: str | None) -> dict[str, Any]:
    volumes = [*shm_volume(settings), *pvc_volumes(settings)]
    annotations = {**settings.annotations, "prometheus.io/scrape": "true", "prometheus.io/port": str(spec.port),
                   "prometheus.io/path": "/metrics", MODEL_URI_ANNOTATION: spec.model_uri}
    container = _container(spec, settings, [mount for _, mount in volumes], env_secret)
    pod = pod_spec(settings, [container], [volume for volume, _ in volumes], restart_policy="Always",
                   termination_grace_seconds=TERMINATION_GRACE_SECONDS)
    return {"metadata": {"labels": _labels(spec, settings), "annotations": annotations}, "spec": pod}


def deployment_manifest(spec: EndpointSpec, settings: PodSettings, *, env_secret: str | None = None) -> dict[str, Any]:
    """The apps/v1 Deployment of an endpoint: ``replicas`` inference servers behind a readiness probe.

    Each pod runs ``PYTHON -m jupyter_mlflow_k8s.serving MODEL_URI --host 0.0.0.0 --port PORT`` and the
    endpoint's flags, with ``MLFLOW_TRACKING_URI``, the configured env and Secrets, and ``env_secret``
    (credentials, see :func:`env_secret_manifest`). CPU and memory are requested as much as limited,
    GPUs limited as ``settings.gpu_resource`` with a toleration of that taint. Pods are labelled with
    the endpoint, model and version and annotated for Prometheus to scrape ``/metrics``. With an
    autoscaler the Deployment starts at its ``min_replicas``. A monitored endpoint (``spec.monitor``) is
    annotated ``jmk.io/monitoring: "true"``, so that reading it back tells.

    Raises:
        EndpointError: A bad name, port, count or autoscaler.
        InvalidManifest: The settings make a Deployment the API server would refuse (e.g. a bad quantity).
    """
    check_spec(spec, settings)
    replicas = spec.autoscale.min_replicas if spec.autoscale else spec.replicas
    labels = _labels(spec, settings)
    annotations = {**settings.annotations, MODEL_URI_ANNOTATION: spec.model_uri,
                   **({MONITORING_ANNOTATION: "true"} if spec.monitor else {})}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec.name, settings, labels, annotations),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": endpoint_selector(spec.name)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": spec.max_surge, "maxUnavailable": spec.max_unavailable}},
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": max(600, 2 * spec.load_seconds),
            "template": _pod_template(spec, settings, env_secret),
        },
    }
    ensure_valid(deployment)
    return deployment


def service_manifest(spec: EndpointSpec, settings: PodSettings) -> dict[str, Any]:
    """The v1 Service of an endpoint: ClusterIP, port 80 (``http``) to the servers' port."""
    check_spec(spec, settings)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec.name, settings, _labels(spec, settings)),
        "spec": {
            "type": "ClusterIP",
            "selector": endpoint_selector(spec.name),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    ensure_valid(service)
    return service


def hpa_manifest(spec: EndpointSpec, settings: PodSettings) -> dict[str, Any]:
    """The autoscaling/v2 HorizontalPodAutoscaler of an endpoint that asks for one (``spec.autoscale``).

    Raises:
        EndpointError: The spec has no ``autoscale``, or it is inconsistent, or no CPU is requested.
    """
    check_spec(spec, settings)
    if spec.autoscale is None:
        raise EndpointError(f"Endpoint {spec.name!r} asks for no autoscaling: give autoscale=Autoscale(1, 4).")
    auto = spec.autoscale
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec.name, settings, _labels(spec, settings)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": auto.cpu_utilization}}}],
        },
    }
    ensure_valid(hpa)
    return hpa


def env_secret_manifest(spec: EndpointSpec, settings: PodSettings, env: Mapping[str, str]) -> dict[str, Any]:
    """The endpoint's Secret of credentials (storage, tracking), so their values never appear in the Deployment.

    A tracking URI with a password goes here as ``MLFLOW_TRACKING_URI`` too. Unlike a job's, the Secret
    is mutable: a redeploy replaces it.
    """
    data = dict(env)
    if spec.tracking_uri and _tracking_in_secret(spec.tracking_uri):
        data["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": _metadata(env_secret_name(spec.name), settings, _labels(spec, settings)),
              "stringData": data}
    ensure_valid(secret)
    return secret


def endpoint_manifests(spec: EndpointSpec, settings: PodSettings, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Everything an endpoint is, in the order it is applied; all are checked before any is returned.

    The Secret of credentials, the Deployment, the Service, and the autoscaler only when ``spec.autoscale``
    asks for one.
    """
    secret = env_secret_manifest(spec, settings, env)
    manifests = [secret, deployment_manifest(spec, settings, env_secret=secret["metadata"]["name"]),
                 service_manifest(spec, settings)]
    return manifests + ([hpa_manifest(spec, settings)] if spec.autoscale else [])


def rollout_patch(desired: Mapping[str, Any], *, keep_replicas: bool = False) -> list[dict[str, Any]]:
    """The JSON Patch that turns a live Deployment into ``desired`` by a rolling update.

    Only the labels, annotations, update strategy and pod template change (and the replica count,
    unless an autoscaler owns it): the selector stays, so the Deployment controller replaces the old
    pods with new ones as the strategy allows. ``add`` replaces a member that exists.
    """
    spec = desired["spec"]
    patch = [{"op": "add", "path": "/metadata/labels", "value": desired["metadata"].get("labels", {})},
             {"op": "add", "path": "/metadata/annotations", "value": desired["metadata"].get("annotations", {})},
             {"op": "add", "path": "/spec/strategy", "value": spec["strategy"]},
             {"op": "add", "path": "/spec/template", "value": spec["template"]}]
    if not keep_replicas:
        patch.append({"op": "add", "path": "/spec/replicas", "value": spec["replicas"]})
    return patch


# -- settings from the backend ---------------------------------------------------------------


def endpoint_settings(backend: KubernetesBackend, *, image: str | None = None, cpu: str | None = None,
                      memory: str | None = None, gpus: int = 0, preset: str | None = None,
                      secrets: Sequence[str] = (), volumes: Sequence[str] = ()) -> PodSettings:
    """The backend's pod settings (traits, then ``preset``, then these flags) for an endpoint's pods.

    The same layering as a job's (:func:`jupyter_mlflow_k8s.k8s.layered_settings`).

    Raises:
        JMKUsageError: A bad preset, image, quantity, Secret or volume, as for ``%%train``.
    """
    from ...models import Resources

    Resources(cpu=cpu, memory=memory, gpus=gpus)  # the flags' checks, with the words %%train uses
    return layered_settings(backend.configured_settings(), backend.presets, preset=preset, image=image, cpu=cpu,
                            memory=memory, gpus=gpus, secrets=secrets, volumes=volumes)


def credential_environment() -> dict[str, str]:
    """The variables of this process that pods need to reach storage and tracking (as jobs get them)."""
    return {name: os.environ[name] for name in CREDENTIAL_VARIABLES if name in os.environ}
