"""A monitored endpoint on the test cluster: its PodMonitor and PrometheusRule made, kept, replaced and deleted
by the real API server (the prometheus-operator's own CRDs installed into it), owned by the Deployment so the
real garbage collector deletes them with it; and, on a cluster without those CRDs, refused with nothing made.

No prometheus-operator runs here: what the objects make a Prometheus do is checked in
``test_serving_monitoring.py`` (the CRD schemas and promtool).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from helpers import wait_for
from k8s_fixtures import KubeTarget, custom
from serving_fixtures import Served

from jupyter_mlflow_k8s.cli import main
from jupyter_mlflow_k8s.k8s import missing_kinds
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.serving.kubernetes import (
    MONITOR_KINDS,
    EndpointError,
    EndpointSpec,
    deploy,
    endpoint_selector,
    undeploy,
)
from jupyter_mlflow_k8s.serving.targets.kubernetes import KubernetesTarget

pytestmark = pytest.mark.k8s



def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def our_objects(api: Any, namespace: str) -> list[str]:
    """Every object of the namespace that a deploy could have made (the Service account's token aside)."""
    apps, core = kubernetes.client.AppsV1Api(api), kubernetes.client.CoreV1Api(api)
    found = [f"Deployment/{d.metadata.name}" for d in apps.list_namespaced_deployment(namespace).items]
    found += [f"Service/{s.metadata.name}" for s in core.list_namespaced_service(namespace).items]
    found += [f"Secret/{s.metadata.name}" for s in core.list_namespaced_secret(namespace).items
              if s.type != "kubernetes.io/service-account-token"]
    return found


@pytest.fixture
def no_monitoring_crds(k8s_api: Any) -> None:
    assert missing_kinds(k8s_api, MONITOR_KINDS) == list(MONITOR_KINDS), "another test left the CRDs installed"


@pytest.fixture
def cluster_shell(shell: Any, k8s_cluster: KubeTarget, k8s_namespace: str, k8s_mlflow_server: str,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The test shell configured as a user's would be (c.KubernetesBackend), with the monitoring settings."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", k8s_mlflow_server)
    config = shell.config.KubernetesBackend
    config.kubeconfig, config.namespace = str(k8s_cluster.kubeconfig), k8s_namespace
    config.image = k8s_cluster.pod_image
    config.monitoring_labels = {"release": "kube-prometheus-stack"}
    try:
        yield shell
    finally:
        for key in ("kubeconfig", "namespace", "image", "monitoring_labels", "monitoring_interval"):
            config.pop(key, None)


def test_monitor_on_a_cluster_without_the_crds_is_refused_and_makes_nothing(
    no_monitoring_crds: None, k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], state_dir: Path,
) -> None:
    before = our_objects(k8s_api, k8s_namespace)
    settings = PodSettings(namespace=k8s_namespace, image=k8s_cluster.pod_image)
    with pytest.raises(EndpointError, match=r"no prometheus-operator CRDs for PodMonitor, PrometheusRule "
                                            r"\(monitoring.coreos.com/v1\); nothing was made.*drop --monitor"):
        deploy(k8s_api, EndpointSpec(name="iris-mon", model_uri="models:/iris/1", monitor=True), settings,
               credentials={}, pin_alias=False)
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    monkeypatch.setenv("JMK_K8S_NAMESPACE", k8s_namespace)
    assert main(["serve", "models:/iris/1", "--backend", "kubernetes", "--name", "iris-mon", "--monitor"]) == 2
    assert "the cluster has no prometheus-operator CRDs" in capsys.readouterr().err
    assert our_objects(k8s_api, k8s_namespace) == before


def test_a_monitored_endpoint_has_its_pod_monitor_and_rule_until_it_goes(
    monitoring_crds: None, cluster_shell: Any, k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str,
    k8s_served_model: Served,
) -> None:
    shell, served, port = cluster_shell, k8s_served_model, free_port()
    serve = f"{served.uri('1')} --backend kubernetes --name iris-mon --port {port}"
    apps = kubernetes.client.AppsV1Api(k8s_api)

    endpoint = shell.run_line_magic("serve", f"{serve} --monitor")
    assert (endpoint.name, endpoint.ready, endpoint.monitor) == ("iris-mon", True, True)
    deployment = apps.read_namespaced_deployment("iris-mon", k8s_namespace)
    monitor = custom(k8s_api, "PodMonitor", "iris-mon", k8s_namespace)
    rule = custom(k8s_api, "PrometheusRule", "iris-mon", k8s_namespace)
    assert monitor is not None and rule is not None
    for obj in (monitor, rule):
        assert [(o["kind"], o["name"], o["uid"]) for o in obj["metadata"]["ownerReferences"]] == [
            ("Deployment", "iris-mon", deployment.metadata.uid)]
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"] == {"matchLabels": endpoint_selector("iris-mon")}
    pods = kubernetes.client.CoreV1Api(k8s_api).list_namespaced_pod(
        k8s_namespace, label_selector=",".join(f"{k}={v}" for k, v in endpoint_selector("iris-mon").items())).items
    assert pods and all(p.metadata.labels["jmk.io/endpoint"] == "iris-mon" for p in pods)  # the selector's pods
    assert monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "30s"
    assert [r["alert"] for r in rule["spec"]["groups"][0]["rules"]] == ["JMKEndpointErrorRatio", "JMKFeatureDrift"]
    target = KubernetesTarget(config=shell.config)
    assert target.get("iris-mon").flags == {"monitor": True}

    # A redeploy with --monitor replaces them (the same objects, the new interval).
    shell.config.KubernetesBackend.monitoring_interval = "10s"
    shell.run_line_magic("serve", f"{serve} --monitor")
    again = custom(k8s_api, "PodMonitor", "iris-mon", k8s_namespace)
    assert again is not None and again["metadata"]["uid"] == monitor["metadata"]["uid"]
    assert again["spec"]["podMetricsEndpoints"][0]["interval"] == "10s"

    # Without --monitor they go; with it again they come back; stopping the endpoint removes them.
    assert shell.run_line_magic("serve", serve).monitor is False
    assert [custom(k8s_api, kind, "iris-mon", k8s_namespace) for kind in MONITOR_KINDS] == [None, None]
    assert target.get("iris-mon").flags == {}
    shell.run_line_magic("serve", f"{serve} --monitor")
    assert all(custom(k8s_api, kind, "iris-mon", k8s_namespace) for kind in MONITOR_KINDS)
    assert shell.run_line_magic("serve", "stop iris-mon --backend kubernetes") is None
    assert [custom(k8s_api, kind, "iris-mon", k8s_namespace) for kind in MONITOR_KINDS] == [None, None]


def test_deleting_the_deployment_deletes_its_monitoring(monitoring_crds: None, k8s_cluster: KubeTarget,
                                                        k8s_api: Any, k8s_namespace: str) -> None:
    """The ownerReference: whoever deletes the Deployment (kubectl), the garbage collector deletes the rest."""
    settings = PodSettings(namespace=k8s_namespace, image=k8s_cluster.pod_image)
    spec = EndpointSpec(name="iris-gc", model_uri="models:/iris/1", monitor=True, replicas=0)
    deploy(k8s_api, spec, settings, credentials={}, pin_alias=False)
    assert all(custom(k8s_api, kind, "iris-gc", k8s_namespace) for kind in MONITOR_KINDS)
    kubernetes.client.AppsV1Api(k8s_api).delete_namespaced_deployment("iris-gc", k8s_namespace,
                                                                      propagation_policy="Background")
    wait_for(lambda: not any(custom(k8s_api, kind, "iris-gc", k8s_namespace) for kind in MONITOR_KINDS),
             timeout=60, interval=0.5)
    undeploy(k8s_api, "iris-gc", k8s_namespace, wait=None)  # the Service and the Secret

