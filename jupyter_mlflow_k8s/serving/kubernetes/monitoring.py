"""An endpoint's prometheus-operator objects: a PodMonitor that scrapes its pods, a PrometheusRule that alerts.

Pure functions of an :class:`EndpointSpec`, the backend's pod settings and :class:`Monitoring` (the
``c.KubernetesBackend.monitoring_*`` traits): no API call. The PodMonitor selects the endpoint's pods by
the labels that never change (:func:`endpoint_selector`) and scrapes the ``http`` container port's
``/metrics``, adding the label ``jmk_io_endpoint`` (the pod's ``jmk.io/endpoint``) and keeping
``namespace``. The PrometheusRule's alerts are :data:`~jupyter_mlflow_k8s.serving.promql.ALERTS`, each
expression narrowed to this endpoint's series (:func:`~jupyter_mlflow_k8s.serving.promql.scoped`), so two
endpoints of one model alert apart. Both are owned by the endpoint's Deployment (:func:`owned_by`): deleting
the Deployment deletes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...k8s.pods import PodSettings
from ...k8s.validation import check_prometheus_duration, ensure_valid
from ..promql import ALERTS, scoped
from .spec import ENDPOINT_LABEL, EndpointError, EndpointSpec, _labels, _metadata, check_spec, endpoint_selector

#: The kinds :func:`monitoring_manifests` builds, in the order they are applied (custom resources of the
#: prometheus-operator, ``monitoring.coreos.com/v1``).
MONITOR_KINDS = ("PodMonitor", "PrometheusRule")
API_VERSION = "monitoring.coreos.com/v1"
#: The label every scraped series of an endpoint gets: its name (from the pod label ``jmk.io/endpoint``).
ENDPOINT_SERIES_LABEL = "jmk_io_endpoint"
DEFAULT_INTERVAL = "30s"


@dataclass(frozen=True)
class Monitoring:
    """How an endpoint is monitored: extra ``labels`` on both objects, and the scrape ``interval``.

    ``labels`` are what an operator's Prometheus selects PodMonitors and rules by
    (``podMonitorSelector``, ``ruleSelector``), e.g. ``{"release": "kube-prometheus-stack"}``.
    """

    labels: Mapping[str, str] = field(default_factory=dict)
    interval: str = DEFAULT_INTERVAL


def check_monitoring(monitoring: Monitoring) -> None:
    """Refuse a scrape interval Prometheus would not read, before anything is built.

    Raises:
        EndpointError: Saying what to write instead.
    """
    problems = check_prometheus_duration(monitoring.interval, "the scrape interval (c.KubernetesBackend."
                                                              "monitoring_interval)")
    if problems:
        raise EndpointError(problems[0][0].upper() + problems[0][1:] + ".")


def _monitor_metadata(spec: EndpointSpec, settings: PodSettings, monitoring: Monitoring) -> dict[str, Any]:
    return _metadata(spec.name, settings, {**monitoring.labels, **_labels(spec, settings)})  # ours win


def pod_monitor_manifest(spec: EndpointSpec, settings: PodSettings, monitoring: Monitoring) -> dict[str, Any]:
    """The PodMonitor of an endpoint: every ``interval``, each pod's ``http`` port at ``/metrics``.

    Each series gets ``jmk_io_endpoint`` (the endpoint's name) and ``namespace``, which the alerts select on.

    Raises:
        EndpointError: A bad spec or scrape interval.
        InvalidManifest: Labels the API server would refuse.
    """
    check_spec(spec, settings)
    check_monitoring(monitoring)
    label = ENDPOINT_LABEL.replace(".", "_").replace("/", "_")  # as Kubernetes service discovery names it
    monitor = {
        "apiVersion": API_VERSION,
        "kind": "PodMonitor",
        "metadata": _monitor_metadata(spec, settings, monitoring),
        "spec": {
            "selector": {"matchLabels": endpoint_selector(spec.name)},
            "podMetricsEndpoints": [{
                "port": "http",
                "path": "/metrics",
                "interval": monitoring.interval,
                "relabelings": [
                    {"action": "replace", "sourceLabels": [f"__meta_kubernetes_pod_label_{label}"],
                     "targetLabel": ENDPOINT_SERIES_LABEL},
                    {"action": "replace", "sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"},
                ],
            }],
        },
    }
    ensure_valid(monitor)
    return monitor


def alert_rules(spec: EndpointSpec, namespace: str) -> list[dict[str, Any]]:
    """:data:`~jupyter_mlflow_k8s.serving.promql.ALERTS` as Prometheus alerting rules of this endpoint alone."""
    where = {"namespace": namespace, ENDPOINT_SERIES_LABEL: spec.name}
    return [{
        "alert": alert.name,
        "expr": scoped(alert.expr, where),
        "for": alert.for_,
        "labels": {"severity": alert.severity, **where},
        "annotations": {"summary": f"Endpoint {namespace}/{spec.name}: {alert.summary}",
                        "model_uri": spec.model_uri},
    } for alert in ALERTS]


def prometheus_rule_manifest(spec: EndpointSpec, settings: PodSettings, monitoring: Monitoring) -> dict[str, Any]:
    """The PrometheusRule of an endpoint: one group, ``jmk-endpoint-NAME``, of :func:`alert_rules`.

    Raises:
        EndpointError: A bad spec.
        InvalidManifest: Labels the API server would refuse.
    """
    check_spec(spec, settings)
    rule = {
        "apiVersion": API_VERSION,
        "kind": "PrometheusRule",
        "metadata": _monitor_metadata(spec, settings, monitoring),
        "spec": {"groups": [{"name": f"jmk-endpoint-{spec.name}", "rules": alert_rules(spec, settings.namespace)}]},
    }
    ensure_valid(rule)
    return rule


def monitoring_manifests(spec: EndpointSpec, settings: PodSettings, monitoring: Monitoring) -> list[dict[str, Any]]:
    """The PodMonitor and the PrometheusRule of an endpoint (:data:`MONITOR_KINDS`), both checked."""
    return [pod_monitor_manifest(spec, settings, monitoring), prometheus_rule_manifest(spec, settings, monitoring)]


def owned_by(manifest: Mapping[str, Any], deployment: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` owned by the endpoint's Deployment (as the API returned it, with its uid).

    The garbage collector then deletes it with the Deployment, whoever deletes that.
    """
    meta = deployment["metadata"]
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"], "uid": meta["uid"],
             "blockOwnerDeletion": False}
    return {**manifest, "metadata": {**manifest["metadata"], "ownerReferences": [owner]}}
