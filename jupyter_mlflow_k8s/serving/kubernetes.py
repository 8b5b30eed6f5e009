"""Serving endpoints on Kubernetes: a Deployment of inference servers, its Service, and an optional autoscaler.

Two layers, as for jobs. The builders (:func:`deployment_manifest`, :func:`service_manifest`,
:func:`hpa_manifest`, :func:`env_secret_manifest`, :func:`rollout_patch`) are pure functions of an
:class:`EndpointSpec` and the backend's :class:`PodSettings`: no API call, and each manifest they return
has passed :func:`jupyter_mlflow_k8s.manifests.ensure_valid`. Resources, the GPU toleration, volumes and
labels come from the backend's own helpers, so an endpoint's pod is shaped like a job's.

:func:`deploy`, :func:`wait_ready`, :func:`undeploy` and :func:`list_endpoints` talk to the API. A
second deploy of an endpoint is a rolling update: only the Deployment's pod template (and its labels)
is patched, so the selector stays and the old pods keep serving until the new ones are ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..backends.kubernetes import CREDENTIAL_VARIABLES, WAITING_FAILURES
from ..backends.kubernetes_manifests import (
    MANAGED_BY,
    PodSettings,
    _compact,
    _pvc_volumes,
    _resources,
    _shm_volume,
    label_value,
    placement,
)
from ..exceptions import JMKUsageError
from ..manifests import check_dns1035_label, ensure_valid

if TYPE_CHECKING:
    from ..backends.kubernetes import KubernetesBackend

SERVING_MODULE = "jupyter_mlflow_k8s.serving"
CONTAINER = "server"
COMPONENT = "serving"
DEFAULT_PORT = 8080
SERVICE_PORT = 80
ENDPOINT_LABEL = "jmk.io/endpoint"
MODEL_LABEL = "jmk.io/model"
VERSION_LABEL = "jmk.io/model-version"
MODEL_URI_ANNOTATION = "jmk.io/model-uri"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component={COMPONENT}"
# A pod restarting this often (CrashLoopBackOff) will not come up by waiting: wait_ready says why.
CRASH_RESTARTS = 3
# How long a server has to stop after SIGTERM before the kubelet kills it; an undeploy waits for that, then
# twice as long for the node to tear the pod down (a busy node's kubelet takes tens of seconds).
TERMINATION_GRACE_SECONDS = 30
UNDEPLOY_WAIT_SECONDS = 3.0 * TERMINATION_GRACE_SECONDS


class EndpointError(JMKUsageError):
    """An endpoint that cannot be deployed as asked, or did not come up; the message says what to do."""


class EndpointNotFound(EndpointError, LookupError):
    """No endpoint of that name in the namespace."""


class EndpointNotReady(EndpointError):
    """The endpoint's pods did not all become available; ``problems`` says why, per pod."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message + "".join(f"\n  {problem}" for problem in problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Autoscale:
    """A HorizontalPodAutoscaler on CPU, between ``min_replicas`` and ``max_replicas``.

    It aims at ``cpu_utilization`` percent of the requested CPU, so the endpoint must request CPU.
    """

    min_replicas: int = 1
    max_replicas: int = 4
    cpu_utilization: int = 70


@dataclass(frozen=True)
class EndpointSpec:
    """One serving endpoint: which model, how many servers, and the server's flags.

    ``name`` names the Deployment, the Service (so it must be an RFC 1035 label: lowercase letters,
    digits and '-', starting with a letter, at most 63 characters) and the autoscaler. ``port`` is the
    container's; the Service answers on port 80. ``max_surge`` and ``max_unavailable`` shape rolling
    updates: by default a new pod comes up before an old one goes, so capacity never drops. The liveness
    probe starts ``load_seconds`` after the container, time enough to load the model.
    """

    name: str
    model_uri: str
    port: int = DEFAULT_PORT
    replicas: int = 1
    workers: int = 1
    batching: bool = True
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    canary: str | None = None
    canary_fraction: float | None = None
    shadow: str | None = None
    tracking_uri: str | None = None
    autoscale: Autoscale | None = None
    max_surge: int | str = 1
    max_unavailable: int | str = 0
    load_seconds: int = 60
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """An endpoint as the cluster last reported it."""

    name: str
    namespace: str
    model_uri: str
    model: str
    version: str
    replicas: int
    available: int
    updated: int
    autoscaled: bool

    @property
    def url(self) -> str:
        """The Service's address inside the cluster."""
        return f"http://{self.name}.{self.namespace}.svc.cluster.local:{SERVICE_PORT}"

    @property
    def ready(self) -> bool:
        """Every replica runs the current pod template and is available."""
        return self.available == self.replicas == self.updated


# -- checks ----------------------------------------------------------------------------------


def check_spec(spec: EndpointSpec, settings: PodSettings) -> None:
    """Refuse an endpoint the cluster would refuse or could not run, before anything is built or sent.

    Raises:
        EndpointError: Saying what is wrong and what to write instead.
    """
    problems = check_dns1035_label(spec.name, "endpoint name")
    if problems:
        example = re.sub("[^a-z0-9]+", "-", spec.name.lower()).strip("-")[:63].rstrip("-")
        example = example if example[:1].isalpha() else f"model-{example}".rstrip("-")
        raise EndpointError(
            f"Endpoint name {spec.name!r} cannot name a Service: use lowercase letters, digits and '-', starting "
            f"with a letter and ending with a letter or digit, at most 63 characters, e.g. {example!r}."
        )
    if not spec.model_uri.strip():
        raise EndpointError("No model to serve: give a model URI such as models:/NAME/VERSION or models:/NAME@ALIAS.")
    for what, value, low in (("port", spec.port, 1), ("replicas", spec.replicas, 0), ("workers", spec.workers, 1),
                             ("load_seconds", spec.load_seconds, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (what == "port" and value > 65535):
            bound = "between 1 and 65535" if what == "port" else f"a whole number, {low} or more"
            raise EndpointError(f"Endpoint {what} {value!r} must be {bound}.")
    if spec.canary and spec.shadow:
        raise EndpointError("A canary and a shadow together: compare one version at a time (canary= or shadow=).")
    if spec.canary_fraction is not None and (spec.canary is None or not 0 < spec.canary_fraction <= 1):
        raise EndpointError("canary_fraction needs a canary model URI and a value in (0, 1], e.g. canary_fraction=0.1.")
    if spec.autoscale is not None:
        auto = spec.autoscale
        if not 1 <= auto.min_replicas <= auto.max_replicas:
            raise EndpointError(f"Autoscaling between {auto.min_replicas} and {auto.max_replicas} replicas: "
                                "min_replicas must be at least 1 and at most max_replicas.")
        if auto.cpu_utilization < 1:
            raise EndpointError(f"cpu_utilization {auto.cpu_utilization} must be a percentage above 0, e.g. 70.")
        if not settings.cpu:
            raise EndpointError("Autoscaling on CPU needs a CPU request to measure against: give cpu='1' (or a "
                                "preset that sets cpu).")


# -- names and labels ------------------------------------------------------------------------


def model_identity(model_uri: str) -> tuple[str, str]:
    """The model's name and version (or alias, or run id) as told by its URI, for labels.

    Args:
        model_uri: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH`` or a path.

    Returns:
        e.g. ``("iris", "3")``, ``("iris", "prod")``, ``("model", "<run id>")``, ``("model", "")``.
    """
    if model_uri.startswith("models:/"):
        rest = model_uri[len("models:/"):].strip("/")
        if "@" in rest:
            name, _, alias = rest.partition("@")
            return name, alias
        name, _, version = rest.partition("/")
        return name, version
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri[len("runs:/"):].strip("/").partition("/")
        return path.rsplit("/", 1)[-1] or "model", run_id
    return model_uri.rstrip("/").rsplit("/", 1)[-1], ""


def endpoint_selector(name: str) -> dict[str, str]:
    """The labels that select an endpoint's pods; they never change, so rolling updates keep them."""
    return {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": COMPONENT,
            ENDPOINT_LABEL: name}


def endpoint_labels(spec: EndpointSpec) -> dict[str, str]:
    """The selector's labels, plus the app's name and instance and the model's name and version."""
    model, version = model_identity(spec.model_uri)
    return {"app.kubernetes.io/name": MANAGED_BY, "app.kubernetes.io/instance": spec.name,
            **endpoint_selector(spec.name), MODEL_LABEL: label_value(model), VERSION_LABEL: label_value(version)}


def _labels(spec: EndpointSpec, settings: PodSettings) -> dict[str, str]:
    return {**settings.labels, **endpoint_labels(spec)}


def _metadata(name: str, settings: PodSettings, labels: Mapping[str, str],
              annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    return _compact({"name": name, "namespace": settings.namespace, "labels": dict(labels),
                     "annotations": dict(annotations or {})})


def env_secret_name(name: str) -> str:
    """The Secret holding an endpoint's credentials (read whole through ``envFrom``)."""
    return f"{name}-env"


# -- the manifests ---------------------------------------------------------------------------


def server_command(spec: EndpointSpec, python: str = "python") -> list[str]:
    """The container's command: the inference server on all interfaces, with the endpoint's flags."""
    command = [python, "-m", SERVING_MODULE, spec.model_uri, "--host", "0.0.0.0", "--port", str(spec.port),  # noqa: S104
               "--name", spec.name]
    if spec.workers != 1:
        command += ["--workers", str(spec.workers)]
    if not spec.batching:
        command.append("--no-batching")
    if spec.max_batch_size is not None:
        command += ["--max-batch-size", str(spec.max_batch_size)]
    if spec.max_wait_ms is not None:
        command += ["--max-wait-ms", f"{spec.max_wait_ms:g}"]
    if spec.canary:
        command += ["--canary", spec.canary]
        if spec.canary_fraction is not None:
            command += ["--canary-fraction", f"{spec.canary_fraction:g}"]
    if spec.shadow:
        command += ["--shadow", spec.shadow]
    return command + list(spec.extra_args)


def _tracking_in_secret(uri: str | None) -> bool:
    """A tracking URI with a password travels in the Secret, never in the Deployment."""
    return bool(uri) and urlsplit(str(uri)).password is not None


def _container(spec: EndpointSpec, settings: PodSettings, mounts: list[dict[str, Any]],
               env_secret: str | None) -> dict[str, Any]:
    env = {**settings.env, "PYTHONUNBUFFERED": "1"}
    if spec.tracking_uri and not _tracking_in_secret(spec.tracking_uri):
        env["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    secrets = [*settings.secrets, *([env_secret] if env_secret else [])]
    return _compact({
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": server_command(spec, settings.python),
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": name, "value": value} for name, value in env.items()],
        "envFrom": [{"secretRef": {"name": name}} for name in secrets],
        "resources": _resources(settings),
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
    volumes = [*_shm_volume(settings), *_pvc_volumes(settings)]
    annotations = {**settings.annotations, "prometheus.io/scrape": "true", "prometheus.io/port": str(spec.port),
                   "prometheus.io/path": "/metrics", MODEL_URI_ANNOTATION: spec.model_uri}
    pod_spec = _compact({
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [_container(spec, settings, [mount for _, mount in volumes], env_secret)],
        "volumes": [volume for volume, _ in volumes],
        **placement(settings),
    })
    return {"metadata": {"labels": _labels(spec, settings), "annotations": annotations}, "spec": pod_spec}


def deployment_manifest(spec: EndpointSpec, settings: PodSettings, *, env_secret: str | None = None) -> dict[str, Any]:
    """The apps/v1 Deployment of an endpoint: ``replicas`` inference servers behind a readiness probe.

    Each pod runs ``PYTHON -m jupyter_mlflow_k8s.serving MODEL_URI --host 0.0.0.0 --port PORT`` and the
    endpoint's flags, with ``MLFLOW_TRACKING_URI``, the configured env and Secrets, and ``env_secret``
    (credentials, see :func:`env_secret_manifest`). CPU and memory are requested as much as limited,
    GPUs limited as ``settings.gpu_resource`` with a toleration of that taint. Pods are labelled with
    the endpoint, model and version and annotated for Prometheus to scrape ``/metrics``. With an
    autoscaler the Deployment starts at its ``min_replicas``.

    Raises:
        EndpointError: A bad name, port, count or autoscaler.
        InvalidManifest: The settings make a Deployment the API server would refuse (e.g. a bad quantity).
    """
    check_spec(spec, settings)
    replicas = spec.autoscale.min_replicas if spec.autoscale else spec.replicas
    labels = _labels(spec, settings)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec.name, settings, labels, {**settings.annotations,
                                                            MODEL_URI_ANNOTATION: spec.model_uri}),
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

    Raises:
        JMKUsageError: A bad preset, image, quantity, Secret or volume, as for ``%%train``.
    """
    from ..models import JobSpec, Resources

    spec = JobSpec(code="", backend="kubernetes", image=image, preset=preset, secrets=tuple(secrets),
                   volumes=tuple(volumes), resources=Resources(cpu=cpu, memory=memory, gpus=gpus))
    return backend.pod_settings(spec)


def credential_environment() -> dict[str, str]:
    """The variables of this process that pods need to reach storage and tracking (as jobs get them)."""
    return {name: os.environ[name] for name in CREDENTIAL_VARIABLES if name in os.environ}


# -- talking to the API ----------------------------------------------------------------------


def _read(call: Any, *args: Any) -> dict[str, Any] | None:
    """The object as JSON, or None when it is not there."""
    import kubernetes

    try:
        return dict(json.loads(call(*args, _preload_content=False).data))
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def resolve_alias(model_uri: str, tracking_uri: str | None) -> str:
    """``models:/NAME@ALIAS`` pinned to the version the alias names now; other URIs as they are.

    Every replica then serves the same version, whatever the alias later points to; deploying again
    follows the alias.

    Raises:
        EndpointError: The registry has no such model or alias.
    """
    name, alias = model_identity(model_uri)
    if not model_uri.startswith("models:/") or "@" not in model_uri:
        return model_uri
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version
    except MlflowException as exc:
        raise EndpointError(f"Cannot resolve {model_uri}: {exc.message}. List the model's aliases with "
                            f"`jmk models {name}`, or give a version: models:/{name}/1.") from exc
    return f"models:/{name}/{version}"


def deploy(api: Any, spec: EndpointSpec, settings: PodSettings | None = None, *,
           credentials: Mapping[str, str] | None = None, pin_alias: bool = True,
           wait: float | None = None) -> Endpoint:
    """Create an endpoint, or roll an existing one to ``spec`` (a new model version, flags or resources).

    Every manifest is built and checked before the first request. Then its Secret of credentials is
    created or replaced, the Deployment created or patched (:func:`rollout_patch`), the Service created
    or patched, and the autoscaler created, replaced, or deleted when no longer asked for.

    Args:
        api: An ``ApiClient`` of the official client (``KubernetesBackend.api``).
        spec: The endpoint. ``models:/NAME@ALIAS`` is pinned to the alias's version (``pin_alias``).
        settings: The pods' settings (:func:`endpoint_settings`); default ``PodSettings()``.
        credentials: Variables for the pods' Secret; default :func:`credential_environment`.
        pin_alias: Resolve an alias in the registry first (needs the tracking store here).
        wait: Seconds to wait for every replica to be available (:func:`wait_ready`); None: do not wait.

    Returns:
        The endpoint as the API answered (after waiting, when asked).

    Raises:
        EndpointError: A bad spec, an unknown alias, a cluster without autoscaling/v2, or (when waiting)
            pods that did not come up.
        InvalidManifest: Settings the API server would refuse.
    """
    import kubernetes

    settings = settings or PodSettings()
    if pin_alias:
        spec = replace(spec, model_uri=resolve_alias(spec.model_uri, spec.tracking_uri))
    env = credential_environment() if credentials is None else dict(credentials)
    secret, deployment, service, *autoscaler = endpoint_manifests(spec, settings, env)
    hpa = autoscaler[0] if autoscaler else None

    namespace = settings.namespace
    core = kubernetes.client.CoreV1Api(api)
    apps = kubernetes.client.AppsV1Api(api)
    autoscaling = kubernetes.client.AutoscalingV2Api(api)
    if _read(core.read_namespaced_secret, secret["metadata"]["name"], namespace) is None:
        core.create_namespaced_secret(namespace, secret, _preload_content=False)
    else:
        core.replace_namespaced_secret(secret["metadata"]["name"], namespace, secret, _preload_content=False)
    if _read(apps.read_namespaced_deployment, spec.name, namespace) is None:
        apps.create_namespaced_deployment(namespace, deployment, _preload_content=False)
    else:
        apps.patch_namespaced_deployment(spec.name, namespace, rollout_patch(deployment, keep_replicas=hpa is not None),
                                        _preload_content=False)
    if _read(core.read_namespaced_service, spec.name, namespace) is None:
        core.create_namespaced_service(namespace, service, _preload_content=False)
    else:
        core.patch_namespaced_service(spec.name, namespace, [
            {"op": "add", "path": "/metadata/labels", "value": service["metadata"]["labels"]},
            {"op": "add", "path": "/spec/selector", "value": service["spec"]["selector"]},
            {"op": "add", "path": "/spec/ports", "value": service["spec"]["ports"]}], _preload_content=False)
    _apply_autoscaler(autoscaling, spec.name, namespace, hpa)
    if wait is not None:
        return wait_ready(api, spec.name, namespace, timeout=wait)
    return _endpoint(_deployment(apps, spec.name, namespace))


def _apply_autoscaler(autoscaling: Any, name: str, namespace: str, hpa: dict[str, Any] | None) -> None:
    import kubernetes

    try:
        current = _read(autoscaling.read_namespaced_horizontal_pod_autoscaler, name, namespace)
        if hpa is None:
            if current is not None:
                autoscaling.delete_namespaced_horizontal_pod_autoscaler(name, namespace, _preload_content=False)
        elif current is None:
            autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, hpa, _preload_content=False)
        else:
            hpa = {**hpa, "metadata": {**hpa["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
            autoscaling.replace_namespaced_horizontal_pod_autoscaler(name, namespace, hpa, _preload_content=False)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404 and hpa is not None:  # the API group itself is missing
            raise EndpointError("This cluster does not serve autoscaling/v2 (Kubernetes 1.23+): deploy without "
                                "autoscale, or scale with replicas=N.") from exc
        if exc.status != 404:
            raise


def _deployment(apps: Any, name: str, namespace: str) -> dict[str, Any]:
    found = _read(apps.read_namespaced_deployment, name, namespace)
    if found is None:
        raise EndpointNotFound(f"No endpoint {name!r} in namespace {namespace!r}. List them with "
                               "list_endpoints(api, namespace) (or `jmk serve list`).")
    return found


def _endpoint(deployment: Mapping[str, Any]) -> Endpoint:
    meta, spec = deployment["metadata"], deployment.get("spec", {})
    status = deployment.get("status", {})
    labels, annotations = meta.get("labels", {}), meta.get("annotations", {})
    current = status.get("observedGeneration", 0) >= meta.get("generation", 0)
    return Endpoint(
        name=meta["name"], namespace=meta["namespace"], model_uri=annotations.get(MODEL_URI_ANNOTATION, ""),
        model=labels.get(MODEL_LABEL, ""), version=labels.get(VERSION_LABEL, ""),
        replicas=int(spec.get("replicas", 1)), available=int(status.get("availableReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0) if current else 0,
        autoscaled=False,
    )


def wait_ready(api: Any, name: str, namespace: str, *, timeout: float = 300.0, poll: float = 0.5) -> Endpoint:
    """Wait until every replica of the endpoint runs its current template and is available (ready).

    Gives up early when a pod crash-loops (:data:`CRASH_RESTARTS` restarts), its image cannot be
    pulled, or the rollout passes its progress deadline, saying why for each pod that is not ready:
    the scheduler's message, the exit code and last log lines, a failing readiness probe.

    Raises:
        EndpointNotFound: No such endpoint.
        EndpointNotReady: Not ready within ``timeout`` or failing for good; ``problems`` per pod.
    """
    import kubernetes

    apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        deployment = _deployment(apps, name, namespace)
        endpoint = _endpoint(deployment)
        total = int(deployment.get("status", {}).get("replicas") or 0)
        if endpoint.ready and total == endpoint.replicas:
            return endpoint
        pods = _pods(core, name, namespace)
        stuck = _progress_deadline_exceeded(deployment) or any(_failing(pod) for pod in pods)
        if stuck or time.monotonic() >= deadline:
            why = "is failing" if stuck else f"is not ready after {timeout:g} s"
            problems = [_pod_problem(core, pod) for pod in pods if not _pod_ready(pod)]
            raise EndpointNotReady(
                f"Endpoint {namespace}/{name} {why}: {endpoint.available} of {endpoint.replicas} replicas available, "
                f"{endpoint.updated} updated.", [p for p in problems if p] or ["no pod of it is failing yet"])
        time.sleep(poll)


def _pods(core: Any, name: str, namespace: str) -> list[dict[str, Any]]:
    selector = ",".join(f"{key}={value}" for key, value in endpoint_selector(name).items())
    listed = json.loads(core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False).data)
    return list(listed["items"])


def _progress_deadline_exceeded(deployment: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
               for c in deployment.get("status", {}).get("conditions") or [])


def _container_status(pod: Mapping[str, Any]) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = pod.get("status", {}).get("containerStatuses") or []
    return dict(statuses[0]) if statuses else {}


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def _failing(pod: Mapping[str, Any]) -> bool:
    """A pod that will not come up by waiting: a bad image name or config, or a server that keeps exiting."""
    status = _container_status(pod)
    state = status.get("state", {})
    if state.get("waiting", {}).get("reason", "") in ("InvalidImageName", "CreateContainerConfigError"):
        return True
    terminated = state.get("terminated") or status.get("lastState", {}).get("terminated") or {}
    return bool(terminated.get("exitCode")) and int(status.get("restartCount") or 0) >= CRASH_RESTARTS


# What the server's exit codes mean (see jupyter_mlflow_k8s/serving/__main__.py).
_EXIT_CODES = {2: "bad arguments or a model URI that cannot be loaded", 3: "its port was already in use"}


def _pod_problem(core: Any, pod: Mapping[str, Any]) -> str:
    """Why one pod is not ready, in the user's words."""
    name = pod["metadata"]["name"]
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"pod {name}: not scheduled: {condition.get('reason', '')}: {condition.get('message', '')}"
    status = _container_status(pod)
    state, last = status.get("state", {}), status.get("lastState", {})
    waiting = state.get("waiting", {})
    terminated = state.get("terminated") or last.get("terminated") or {}
    if waiting.get("reason") in WAITING_FAILURES:
        return f"pod {name}: {WAITING_FAILURES[waiting['reason']]}: {waiting.get('message', '')}".rstrip(": ")
    if terminated:
        code = terminated.get("exitCode")
        meaning = _EXIT_CODES.get(int(code or 0)) or str(terminated.get("reason") or "it stopped")
        if terminated.get("reason") == "OOMKilled":
            meaning = "it used more memory than its limit: ask for more memory"
        restarts = int(status.get("restartCount") or 0)
        said = str(terminated.get("message") or "").strip()  # the termination message, else the log's end
        tail = "\n".join(f"    {line}" for line in said.splitlines()[-15:]) if said else \
            _log_tail(core, pod, previous="terminated" not in state)
        return (f"pod {name}: the server exited with code {code} ({meaning}), restarted {restarts} times"
                + (f"; it said:\n{tail}" if tail else ""))
    if "running" in state:
        return (f"pod {name}: running, but /ping has not answered 200 yet: the model is still loading, or the "
                "server cannot load it (see its log)")
    return f"pod {name}: {waiting.get('reason') or pod.get('status', {}).get('phase', 'Pending')}"


def _log_tail(core: Any, pod: Mapping[str, Any], previous: bool, lines: int = 15) -> str:
    with contextlib.suppress(Exception):
        response = core.read_namespaced_pod_log(pod["metadata"]["name"], pod["metadata"]["namespace"],
                                                container=CONTAINER, tail_lines=lines, previous=previous,
                                                _preload_content=False)
        text: str = response.data.decode(errors="replace")
        return "\n".join(f"    {line}" for line in text.rstrip().splitlines())
    return ""


def undeploy(api: Any, name: str, namespace: str, *, wait: float | None = UNDEPLOY_WAIT_SECONDS) -> None:
    """Delete an endpoint: its autoscaler, Service, Deployment (with its pods) and Secret.

    Args:
        api: An ``ApiClient`` of the official client.
        name: The endpoint's name.
        namespace: Its namespace.
        wait: Seconds to wait for its pods to be gone (their servers stopped); None: do not wait.

    Raises:
        EndpointNotFound: Neither its Deployment nor its Service is there.
        EndpointError: Pods still there after ``wait``.
    """
    import kubernetes

    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    autoscaling = kubernetes.client.AutoscalingV2Api(api)
    deletes = (("autoscaler", autoscaling.delete_namespaced_horizontal_pod_autoscaler, name),
               ("service", core.delete_namespaced_service, name),
               ("deployment", apps.delete_namespaced_deployment, name),
               ("secret", core.delete_namespaced_secret, env_secret_name(name)))
    deleted = set()
    for kind, delete, object_name in deletes:
        try:
            delete(object_name, namespace, propagation_policy="Background", _preload_content=False)
            deleted.add(kind)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
    if not deleted & {"service", "deployment"}:
        raise EndpointNotFound(f"No endpoint {name!r} in namespace {namespace!r}. List them with "
                               "list_endpoints(api, namespace) (or `jmk serve list`).")
    deadline = time.monotonic() + (wait or 0)
    while wait is not None and (left := _pods(core, name, namespace)):
        if time.monotonic() >= deadline:
            raise EndpointError(f"Endpoint {namespace}/{name} is deleted but {len(left)} of its pods are still "
                                f"stopping after {wait:g} s; they go when their servers exit.")
        time.sleep(0.2)


def list_endpoints(api: Any, namespace: str) -> list[Endpoint]:
    """The namespace's endpoints (Deployments labelled as ours), by name."""
    import kubernetes

    apps = kubernetes.client.AppsV1Api(api)
    listed = json.loads(apps.list_namespaced_deployment(namespace, label_selector=SELECTOR,
                                                        _preload_content=False).data)
    autoscaled: set[str] = set()
    with contextlib.suppress(kubernetes.client.ApiException):  # no autoscaling/v2 on this cluster
        hpas = kubernetes.client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler(
            namespace, label_selector=SELECTOR, _preload_content=False)
        autoscaled = {item["metadata"]["name"] for item in json.loads(hpas.data)["items"]}
    endpoints = [_endpoint(item) for item in listed["items"]]
    return sorted((replace(e, autoscaled=e.name in autoscaled) for e in endpoints), key=lambda e: e.name)
