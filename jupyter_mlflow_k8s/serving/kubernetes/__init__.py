"""Serving endpoints on Kubernetes: a Deployment of inference servers, its Service, and an optional autoscaler.

Two layers, as for jobs. The builders (:func:`deployment_manifest`, :func:`service_manifest`,
:func:`hpa_manifest`, :func:`env_secret_manifest`, :func:`rollout_patch`) are pure functions of an
:class:`EndpointSpec` and the backend's :class:`PodSettings`: no API call, and each manifest they return
has passed :func:`jupyter_mlflow_k8s.k8s.ensure_valid`. Resources, the GPU toleration, volumes and
labels come from the Kubernetes layer (:mod:`jupyter_mlflow_k8s.k8s`), so an endpoint's pod is shaped
like a job's.

:func:`deploy`, :func:`wait_ready`, :func:`undeploy` and :func:`list_endpoints` talk to the API. A
second deploy of an endpoint is a rolling update: only the Deployment's pod template (and its labels)
is patched, so the selector stays and the old pods keep serving until the new ones are ready. They
refuse objects of the endpoint's names that this package did not make (:class:`ConflictError`).

A monitored endpoint (``EndpointSpec(monitor=True)``) also has a PodMonitor and a PrometheusRule of the
prometheus-operator (:func:`monitoring_manifests`), owned by its Deployment.

Modules: :mod:`.spec` (the spec, checks, names and labels), :mod:`.objects` (the builders, pure),
:mod:`.monitoring` (the prometheus-operator's objects, pure) and :mod:`.cluster` (deploy, wait, undeploy, list).
"""

from __future__ import annotations

from ..errors import EndpointNotFound
from .cluster import deploy, list_endpoints, resolve_alias, undeploy, wait_ready
from .monitoring import (
    ENDPOINT_SERIES_LABEL,
    MONITOR_KINDS,
    Monitoring,
    alert_rules,
    check_monitoring,
    monitoring_manifests,
    owned_by,
    pod_monitor_manifest,
    prometheus_rule_manifest,
)
from .objects import (
    credential_environment,
    deployment_manifest,
    endpoint_manifests,
    endpoint_settings,
    env_secret_manifest,
    hpa_manifest,
    rollout_patch,
    server_command,
    service_manifest,
)
from .spec import (
    COMPONENT,
    CONTAINER,
    CRASH_RESTARTS,
    DEFAULT_PORT,
    ENDPOINT_LABEL,
    MODEL_LABEL,
    MODEL_URI_ANNOTATION,
    MONITORING_ANNOTATION,
    SELECTOR,
    SERVICE_PORT,
    SERVING_MODULE,
    TERMINATION_GRACE_SECONDS,
    UNDEPLOY_WAIT_SECONDS,
    VERSION_LABEL,
    Autoscale,
    Endpoint,
    EndpointError,
    EndpointNotReady,
    EndpointSpec,
    check_spec,
    endpoint_labels,
    endpoint_selector,
    env_secret_name,
    model_identity,
)

__all__ = [
    "COMPONENT", "CONTAINER", "CRASH_RESTARTS", "DEFAULT_PORT", "ENDPOINT_LABEL", "ENDPOINT_SERIES_LABEL",
    "MODEL_LABEL", "MODEL_URI_ANNOTATION", "MONITORING_ANNOTATION", "MONITOR_KINDS", "SELECTOR", "SERVICE_PORT",
    "SERVING_MODULE", "TERMINATION_GRACE_SECONDS", "UNDEPLOY_WAIT_SECONDS", "VERSION_LABEL", "Autoscale", "Endpoint",
    "EndpointError", "EndpointNotFound", "EndpointNotReady", "EndpointSpec", "Monitoring", "alert_rules",
    "check_monitoring", "check_spec", "credential_environment", "deploy", "deployment_manifest",
    "endpoint_labels", "endpoint_manifests", "endpoint_selector", "endpoint_settings", "env_secret_manifest",
    "env_secret_name", "hpa_manifest", "list_endpoints", "model_identity", "monitoring_manifests", "owned_by",
    "pod_monitor_manifest", "prometheus_rule_manifest", "resolve_alias", "rollout_patch", "server_command",
    "service_manifest", "undeploy", "wait_ready",
]
