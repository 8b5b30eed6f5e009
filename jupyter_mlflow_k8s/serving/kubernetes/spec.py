"""An endpoint on Kubernetes as data: its spec, what the cluster reports, its checks, names and labels.

Pure: no API call, nothing from Kubernetes imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...exceptions import JMKUsageError
from ...k8s.names import MANAGED_BY, label_value
from ...k8s.pods import PodSettings, compact
from ...k8s.validation import check_dns1035_label
from ...tracking.refs import ModelRef

SERVING_MODULE = "jupyter_mlflow_k8s.serving"
CONTAINER = "server"
COMPONENT = "serving"
DEFAULT_PORT = 8080
SERVICE_PORT = 80
ENDPOINT_LABEL = "jmk.io/endpoint"
MODEL_LABEL = "jmk.io/model"
VERSION_LABEL = "jmk.io/model-version"
MODEL_URI_ANNOTATION = "jmk.io/model-uri"
#: On the Deployment: the endpoint has its PodMonitor and PrometheusRule (``--monitor``, see :mod:`.monitoring`).
MONITORING_ANNOTATION = "jmk.io/monitoring"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component={COMPONENT}"
# A pod restarting this often (CrashLoopBackOff) will not come up by waiting: wait_ready says why.
CRASH_RESTARTS = 3
# How long a server has to stop after SIGTERM before the kubelet kills it; an undeploy waits for that, then
# twice as long for the node to tear the pod down (a busy node's kubelet takes tens of seconds).
TERMINATION_GRACE_SECONDS = 30
UNDEPLOY_WAIT_SECONDS = 3.0 * TERMINATION_GRACE_SECONDS


class EndpointError(JMKUsageError):
    """An endpoint that cannot be deployed as asked, or did not come up; the message says what to do."""
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
    probe starts ``load_seconds`` after the container, time enough to load the model. ``monitor`` puts a
    PodMonitor and a PrometheusRule of the prometheus-operator beside the Deployment (:mod:`.monitoring`).
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
    monitor: bool = False


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
    port: int = DEFAULT_PORT
    #: The server flags its pods run with (``ServingManager.start``'s keywords), read back from their command.
    flags: dict[str, Any] = field(default_factory=dict, compare=False)
    #: Whether a PodMonitor and a PrometheusRule stand beside it (the Deployment's ``jmk.io/monitoring`` annotation).
    monitor: bool = False

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
        try:
            ref = ModelRef.parse(model_uri)
        except JMKUsageError:  # labels of what was asked for, even when it is malformed
            return model_uri.removeprefix("models:/").strip("/").partition("/")[0], ""
        return ref.name, ref.selector
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
    return compact({"name": name, "namespace": settings.namespace, "labels": dict(labels),
                     "annotations": dict(annotations or {})})


def env_secret_name(name: str) -> str:
    """The Secret holding an endpoint's credentials (read whole through ``envFrom``)."""
    return f"{name}-env"
