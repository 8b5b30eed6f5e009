"""A monitored Kubernetes endpoint's PodMonitor and PrometheusRule, without a cluster.

The objects are validated against the prometheus-operator's own CRD schemas (``tests/schemas/
prometheus-operator``, see its SOURCE.md), made strict: a field the CRD does not have is an error here,
where the API server would silently prune it. The alerting rules are read by a real ``promtool`` (Debian's
``prometheus`` package, ``tests/prometheus_server.py``): ``check rules``, and ``test rules`` with series of
two endpoints of one model, so an alert of one endpoint fires on its own series alone. The flags and
settings refuse bad input before anything starts. What needs an API server (the missing CRDs refused with
nothing made, ownership, deletion) is in ``test_serving_monitoring_k8s.py``.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from IPython.core.error import UsageError
from k8s_manifests import validate_manifest
from prometheus_server import prometheus_binaries
from traitlets import TraitError
from traitlets.config import Config

from jupyter_mlflow_k8s.backends.kubernetes import KubernetesBackend
from jupyter_mlflow_k8s.cli import main
from jupyter_mlflow_k8s.exceptions import InvalidManifest, JMKUsageError
from jupyter_mlflow_k8s.k8s import CUSTOM_KINDS
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.serving import promql
from jupyter_mlflow_k8s.serving.kubernetes import (
    MONITOR_KINDS,
    MONITORING_ANNOTATION,
    EndpointError,
    EndpointSpec,
    Monitoring,
    deployment_manifest,
    endpoint_selector,
    monitoring_manifests,
    owned_by,
    pod_monitor_manifest,
)
from jupyter_mlflow_k8s.serving.kubernetes.cluster import _endpoint
from jupyter_mlflow_k8s.serving.targets.kubernetes import summary
from jupyter_mlflow_k8s.serving.targets.local import LocalTarget

SCHEMAS = Path(__file__).parent / "schemas" / "prometheus-operator"
SPEC = EndpointSpec(name="churn", model_uri="models:/churn/3", monitor=True)
SETTINGS = PodSettings(namespace="ml", labels={"team": "risk"})
MONITORING = Monitoring(labels={"release": "kube-prometheus-stack"}, interval="15s")


def strict(schema: Any) -> Any:
    """The schema with every object closed to fields it does not name (the API server would prune them)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def crd(kind: str) -> dict[str, Any]:
    group, _, plural = CUSTOM_KINDS[kind]
    loaded = yaml.safe_load((SCHEMAS / f"{group}_{plural}.yaml").read_text())
    assert loaded["spec"]["group"] == group and loaded["spec"]["names"]["kind"] == kind
    assert isinstance(loaded, dict)
    return loaded


def validate_custom(obj: dict[str, Any]) -> None:
    """Fail with every problem the CRD's openAPIV3Schema (strict) finds in ``obj``."""
    definition = crd(obj["kind"])
    group, version, _ = CUSTOM_KINDS[obj["kind"]]
    assert obj["apiVersion"] == f"{group}/{version}"
    (served,) = [v for v in definition["spec"]["versions"] if v["name"] == version]
    assert served["served"] and served["storage"]
    validator = jsonschema.Draft7Validator(strict(served["schema"]["openAPIV3Schema"]))
    problems = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(obj)]
    assert not problems, "\n".join(problems)


# -- the objects -----------------------------------------------------------------------------------------------


def test_the_pod_monitor_and_the_rule_are_valid_for_the_operators_crds() -> None:
    monitor, rule = monitoring_manifests(SPEC, SETTINGS, MONITORING)
    assert [monitor["kind"], rule["kind"]] == list(MONITOR_KINDS)
    deployment = {"metadata": {"name": "churn", "uid": "5f1c3a5e-0000-4000-8000-000000000001"}}
    for obj in (monitor, rule, owned_by(monitor, deployment), owned_by(rule, deployment)):
        validate_custom(obj)
    with pytest.raises(AssertionError, match="Additional properties"):  # the strict schema does catch a typo
        validate_custom({**monitor, "spec": {**monitor["spec"], "podMetricEndpoints": []}})


def test_the_pod_monitor_scrapes_the_endpoints_pods_and_labels_their_series() -> None:
    monitor = pod_monitor_manifest(SPEC, SETTINGS, MONITORING)
    meta = monitor["metadata"]
    assert (meta["name"], meta["namespace"]) == ("churn", "ml")
    assert meta["labels"]["release"] == "kube-prometheus-stack" and meta["labels"]["team"] == "risk"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "jupyter-mlflow-k8s"
    assert monitor["spec"]["selector"] == {"matchLabels": endpoint_selector("churn")}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    container_ports = deployment_manifest(SPEC, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert endpoint["port"] in [port["name"] for port in container_ports]
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "15s")
    assert {(tuple(r["sourceLabels"]), r["targetLabel"]) for r in endpoint["relabelings"]} == {
        (("__meta_kubernetes_pod_label_jmk_io_endpoint",), "jmk_io_endpoint"),
        (("__meta_kubernetes_namespace",), "namespace")}


def test_our_labels_win_over_the_monitoring_labels() -> None:
    clash = Monitoring(labels={"app.kubernetes.io/managed-by": "helm", "jmk.io/endpoint": "other"})
    for obj in monitoring_manifests(SPEC, SETTINGS, clash):
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "jupyter-mlflow-k8s"
        assert obj["metadata"]["labels"]["jmk.io/endpoint"] == "churn"


def test_the_rule_holds_every_alert_scoped_to_the_endpoint() -> None:
    _, rule = monitoring_manifests(SPEC, SETTINGS, MONITORING)
    (group,) = rule["spec"]["groups"]
    assert group["name"] == "jmk-endpoint-churn"
    assert [r["alert"] for r in group["rules"]] == [alert.name for alert in promql.ALERTS]
    for rendered, alert in zip(group["rules"], promql.ALERTS, strict=True):
        assert rendered["expr"] == promql.scoped(alert.expr, {"namespace": "ml", "jmk_io_endpoint": "churn"})
        assert rendered["for"] == alert.for_
        assert rendered["labels"] == {"severity": alert.severity, "namespace": "ml", "jmk_io_endpoint": "churn"}
        assert rendered["annotations"]["summary"].startswith("Endpoint ml/churn: ")


def test_the_deployment_says_it_is_monitored_and_reads_back_so() -> None:
    deployment = deployment_manifest(SPEC, SETTINGS)
    assert deployment["metadata"]["annotations"][MONITORING_ANNOTATION] == "true"
    validate_manifest(deployment)
    live = copy.deepcopy(deployment) | {"status": {}}
    assert _endpoint(live).monitor is True
    assert summary(_endpoint(live)).flags == {"monitor": True}
    plain = deployment_manifest(EndpointSpec(name="churn", model_uri="models:/churn/3"), SETTINGS)
    assert MONITORING_ANNOTATION not in plain["metadata"]["annotations"]
    assert _endpoint(plain | {"status": {}}).monitor is False and summary(_endpoint(plain | {"status": {}})).flags == {}


def test_owned_by_makes_the_deployment_the_owner_of_a_copy() -> None:
    monitor = pod_monitor_manifest(SPEC, SETTINGS, MONITORING)
    owned = owned_by(monitor, {"metadata": {"name": "churn", "uid": "u-1"}})
    assert owned["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "churn", "uid": "u-1", "blockOwnerDeletion": False}]
    assert "ownerReferences" not in monitor["metadata"]


# -- promtool ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> Path:
    return prometheus_binaries()[1]


def rules_file(tmp_path: Path) -> Path:
    _, rule = monitoring_manifests(SPEC, SETTINGS, MONITORING)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def test_promtool_checks_the_rule_group(promtool: Path, tmp_path: Path) -> None:
    result = subprocess.run([str(promtool), "check", "rules", str(rules_file(tmp_path))], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rules found" in result.stdout


def test_the_alerts_fire_on_the_endpoints_own_series_alone(promtool: Path, tmp_path: Path) -> None:
    """Two endpoints serve the same model version: churn fails half its requests and one feature drifts,
    the other answers a hundred times more requests, all well, while another feature of it drifts. Unscoped, the
    error ratio would be under 1% and the other endpoint's drift would alert for churn."""

    def series(endpoint: str, **labels: str) -> str:
        every = {"model": "churn", "version": "3", "namespace": "ml", "jmk_io_endpoint": endpoint, **labels}
        return "{" + ",".join(f'{key}="{value}"' for key, value in every.items()) + "}"

    rules = rules_file(tmp_path)
    where = {"model": "churn", "version": "3", "severity": "warning", "namespace": "ml", "jmk_io_endpoint": "churn"}
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": "jmk_requests_total" + series("churn", code="200"), "values": "0+600x30"},
            {"series": "jmk_requests_total" + series("churn", code="500"), "values": "0+600x30"},
            {"series": "jmk_requests_total" + series("other", code="200"), "values": "0+60000x30"},
            {"series": "jmk_feature_drift_psi" + series("churn", feature="age"), "values": "0.1x30"},
            {"series": "jmk_feature_drift_psi" + series("churn", feature="plan"), "values": "0.4x30"},
            {"series": "jmk_feature_drift_psi" + series("other", feature="age"), "values": "0.9x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "JMKEndpointErrorRatio", "exp_alerts": [{
                "exp_labels": where,
                "exp_annotations": {"summary": "Endpoint ml/churn: churn version 3: 50% of requests failed over "
                                               "5 minutes", "model_uri": "models:/churn/3"}}]},
            {"eval_time": "20m", "alertname": "JMKFeatureDrift", "exp_alerts": [{
                "exp_labels": {**where, "feature": "plan"},
                "exp_annotations": {"summary": "Endpoint ml/churn: churn version 3: feature plan drifted (PSI 0.4)",
                                    "model_uri": "models:/churn/3"}}]},
        ],
    }]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run([str(promtool), "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- scoped() ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "expected"), [
    ("jmk_requests_in_flight", 'jmk_requests_in_flight{namespace="ml",jmk_io_endpoint="churn"}'),
    ('rate(jmk_requests_total{code!~"2.."}[5m])',
     'rate(jmk_requests_total{code!~"2..",namespace="ml",jmk_io_endpoint="churn"}[5m])'),
    ("jmk_a{} + jmk_b {x='1',} ", 'jmk_a{namespace="ml",jmk_io_endpoint="churn"} + '
                                  "jmk_b{x='1',namespace=\"ml\",jmk_io_endpoint=\"churn\"} "),
    ('histogram_quantile(0.9, sum by (model, version, le) (rate(jmk_request_duration_seconds_bucket[5m])))',
     'histogram_quantile(0.9, sum by (model, version, le) (rate(jmk_request_duration_seconds_bucket'
     '{namespace="ml",jmk_io_endpoint="churn"}[5m])))'),
    # a string that looks like a metric, a brace inside a string, and names that only end in jmk_ stay
    ('jmk_x{path="}jmk_y{"} + label_replace(up, "dst", "jmk_z", "", "") + not_jmk_w',
     'jmk_x{path="}jmk_y{",namespace="ml",jmk_io_endpoint="churn"} + label_replace(up, "dst", "jmk_z", "", "") '
     "+ not_jmk_w"),
])
def test_scoped_adds_the_matchers_to_every_selector_of_ours(expr: str, expected: str) -> None:
    assert promql.scoped(expr, {"namespace": "ml", "jmk_io_endpoint": "churn"}) == expected


def test_scoped_quotes_values_and_refuses_bad_label_names() -> None:
    assert promql.scoped("jmk_a", {"n": 'say "hi"\\'}) == 'jmk_a{n="say \\"hi\\"\\\\"}'
    assert promql.scoped("jmk_a", {}) == "jmk_a"
    with pytest.raises(ValueError, match=r"'jmk\.io/endpoint'"):
        promql.scoped("jmk_a", {"jmk.io/endpoint": "churn"})


# -- flags and settings ---------------------------------------------------------------------------------------


def test_monitor_without_kubernetes_is_refused_before_anything_starts(state_dir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "models:/churn/3", "--monitor"]) == 2
    assert "--monitor puts a PodMonitor and a PrometheusRule" in capsys.readouterr().err
    assert main(["serve", "models:/churn/3", "--monitor", "--backend", "local"]) == 2
    assert "add --backend kubernetes, or drop --monitor" in capsys.readouterr().err
    assert main(["serve", "list", "--monitor"]) == 2
    assert "jmk serve list takes no --monitor" in capsys.readouterr().err
    assert not (state_dir / "serving").exists() or not any((state_dir / "serving").iterdir())
    with pytest.raises(JMKUsageError, match="kubernetes target"):
        LocalTarget().deploy("models:/churn/3", monitor=True)


def test_monitor_in_the_magic_says_the_same(shell: Any) -> None:
    with pytest.raises(UsageError, match="add --backend kubernetes, or drop --monitor"):
        shell.run_line_magic("serve", "models:/churn/3 --monitor")
    with pytest.raises(UsageError, match="takes no --monitor"):
        shell.run_line_magic("serve", "list --monitor")


@pytest.mark.parametrize("interval", ["30 s", "0", "", "1.5m", "30sec", "5m1h"])
def test_a_bad_scrape_interval_is_refused(interval: str) -> None:
    config = Config()
    config.KubernetesBackend.monitoring_interval = interval
    with pytest.raises(TraitError, match=r"monitoring_interval: .* is not a Prometheus duration.*'1m30s'"):
        KubernetesBackend(None, config=config)
    with pytest.raises(EndpointError, match=r"The scrape interval .*is not a Prometheus duration"):
        pod_monitor_manifest(SPEC, SETTINGS, Monitoring(interval=interval))


def test_the_monitoring_settings_and_their_defaults() -> None:
    backend = KubernetesBackend(None)
    assert (backend.endpoint_monitoring, backend.monitoring_labels, backend.monitoring_interval) == (False, {}, "30s")
    config = Config()
    config.KubernetesBackend.monitoring_interval = "1m30s"
    config.KubernetesBackend.monitoring_labels = {"release": "kube-prometheus-stack"}
    assert KubernetesBackend(None, config=config).monitoring_interval == "1m30s"
    with pytest.raises(InvalidManifest, match=r"metadata\.labels"):
        pod_monitor_manifest(SPEC, SETTINGS, Monitoring(labels={"not a label!": "x"}))
