"""The scheduler (schedules and triggers) on a cluster: its manifests for 1.27-1.37, and the Lease that elects one replica."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from k8s_manifests import validate_manifest

from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.k8s.lease import LeaseHolder, build_lease, lease_decision, micro_time
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.k8s.scheduler import build_scheduler_manifests
from jupyter_mlflow_k8s.pipelines.schedule import Scheduler

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def settings(**extra: Any) -> PodSettings:
    return PodSettings(namespace="team-a", image="registry.example/jmk-runner:1.0", cpu="500m", memory="1Gi",
                       secrets=("aws-credentials",), **extra)


def test_scheduler_manifests_are_valid_for_every_supported_kubernetes() -> None:
    manifests = build_scheduler_manifests(settings(), state_claim="jmk-state", replicas=2)
    assert [m["kind"] for m in manifests] == ["ServiceAccount", "Role", "RoleBinding", "Deployment"]
    for manifest in manifests:
        validate_manifest(manifest)
    lease = build_lease("jmk-scheduler", "team-a", "pod-a", T0, acquired=T0 - timedelta(minutes=1), transitions=3)
    validate_manifest(lease)
    assert lease["spec"] == {"holderIdentity": "pod-a", "leaseDurationSeconds": 30,
                             "acquireTime": "2026-12-06T11:59:00.000000Z", "renewTime": "2026-12-06T12:00:00.000000Z",
                             "leaseTransitions": 3}


def test_the_deployment_runs_jmk_scheduler_holding_its_lease_with_the_state_on_the_claim() -> None:
    account, role, binding, deployment = build_scheduler_manifests(settings(), state_claim="jmk-state",
                                                                   poll_seconds=10, lease_seconds=20)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "jupyter_mlflow_k8s.cli", "scheduler", "--poll", "10", "--lease",
                                    "jmk-scheduler", "--lease-seconds", "20", "--triggers-from", "/var/run/jmk/triggers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JMK_STATE_DIR"]["value"] == "/var/run/jmk/state"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["envFrom"] == [{"secretRef": {"name": "aws-credentials"}}]
    assert {"name": "state", "persistentVolumeClaim": {"claimName": "jmk-state"}} in pod["volumes"]
    assert pod["serviceAccountName"] == account["metadata"]["name"] == "jmk-scheduler"
    assert pod["restartPolicy"] == "Always" and deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()
    # the Role lets it hold its own Lease, and nothing else
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["jmk-scheduler"],
         "verbs": ["get", "update", "patch"]},
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "jmk-scheduler", "namespace": "team-a"}]


def test_bad_scheduler_settings_are_refused_at_once() -> None:
    with pytest.raises(JMKUsageError) as caught:
        build_scheduler_manifests(settings(), state_claim="State_Claim", name="-x", replicas=0, lease_seconds=1)
    message = str(caught.value)
    assert "state_claim" in message and "name" in message and "replicas=0" in message and "lease_seconds=1" in message


@pytest.mark.parametrize(("lease", "action"), [
    (None, "create"),
    ({"spec": {"holderIdentity": "me", "renewTime": micro_time(T0), "leaseDurationSeconds": 30}}, "renew"),
    ({"spec": {"holderIdentity": "other", "renewTime": micro_time(T0 - timedelta(seconds=10)),
               "leaseDurationSeconds": 30}}, "wait"),
    ({"spec": {"holderIdentity": "other", "renewTime": micro_time(T0 - timedelta(seconds=30)),
               "leaseDurationSeconds": 30}}, "take"),
    ({"spec": {"renewTime": micro_time(T0)}}, "take"),  # released: no holder
    ({"spec": {"holderIdentity": "other"}}, "take"),  # never renewed
])
def test_lease_decision(lease: dict[str, Any] | None, action: str) -> None:
    assert lease_decision(lease, "me", T0).action == action


def test_a_gate_that_is_not_held_skips_the_ticks(state_dir: Any) -> None:
    ticks: list[datetime | None] = []

    class Recorder:
        def tick(self, now: datetime | None = None) -> list[str]:
            ticks.append(now)
            return []

    stop = threading.Event()
    answers = iter([False, False, True, True])

    def gate() -> bool:
        answer = next(answers, None)
        if answer is None:
            stop.set()
            return False
        return answer

    scheduler = Scheduler(tickers=[Recorder()])
    scheduler.serve(poll_seconds=0.01, stop=stop, gate=gate)
    assert len(ticks) == 2


def test_a_lease_holder_waits_for_the_lock_of_a_replica_still_stopping(state_dir: Any) -> None:
    """Replicas share one claim: the new holder evaluates only once the old one let go of the state dir's lock."""
    ticks: list[int] = []
    old = Scheduler(tickers=[])
    old.acquire()  # a replica still stopping

    class Recorder:
        def tick(self, now: datetime | None = None) -> list[str]:
            ticks.append(len(gates))
            return []

    stop = threading.Event()
    gates: list[bool] = []

    def gate() -> bool:
        gates.append(True)
        if len(gates) == 3:
            old.release()
        if len(gates) == 5:
            stop.set()
        return True

    Scheduler(tickers=[Recorder()]).serve(poll_seconds=0.01, stop=stop, gate=gate)
    assert ticks == [3, 4, 5]


def test_a_replica_that_loses_the_lease_lets_go_of_the_lock(state_dir: Any) -> None:
    answers = iter([True, False])
    stop = threading.Event()
    other = Scheduler(tickers=[])

    def gate() -> bool:
        answer = next(answers, None)
        if answer is None:
            other.acquire()  # raises SchedulerRunning if the replica still held the lock
            stop.set()
            return False
        return answer

    Scheduler(tickers=[]).serve(poll_seconds=0.01, stop=stop, gate=gate)
    other.release()


@pytest.mark.k8s
def test_two_holders_on_a_real_cluster_only_one_leads_and_the_other_takes_over(k8s_cluster: Any,
                                                                               k8s_namespace: str) -> None:
    kubeconfig = str(k8s_cluster.kubeconfig)
    first = LeaseHolder("jmk-scheduler", k8s_namespace, "pod-a", duration=15, kubeconfig=kubeconfig)
    second = LeaseHolder("jmk-scheduler", k8s_namespace, "pod-b", duration=15, kubeconfig=kubeconfig)
    assert first.held(T0) is True
    assert second.held(T0 + timedelta(seconds=1)) is False
    assert first.held(T0 + timedelta(seconds=10)) is True  # renewed
    assert second.held(T0 + timedelta(seconds=20)) is False  # 10 s after the renewal: still valid
    assert second.held(T0 + timedelta(seconds=26)) is True  # first stopped renewing: expired at 25 s
    assert first.held(T0 + timedelta(seconds=27)) is False
    lease = second.api.read_namespaced_lease("jmk-scheduler", k8s_namespace)
    assert lease.spec.holder_identity == "pod-b" and lease.spec.lease_transitions == 1


def test_jmk_scheduler_print_manifests(state_dir: Any, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from jupyter_mlflow_k8s.cli import main as jmk

    monkeypatch.setenv("JMK_K8S_NAMESPACE", "team-b")
    assert jmk(["scheduler", "--print-manifests", "--state-claim", "jmk-state", "--image", "reg.example/runner:2",
                "--replicas", "2"]) == 0
    manifests = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [m["kind"] for m in manifests] == ["ServiceAccount", "Role", "RoleBinding", "Deployment"]
    deployment = manifests[-1]
    assert deployment["metadata"]["namespace"] == "team-b" and deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/runner:2"
    for manifest in manifests:
        validate_manifest(manifest)
    assert jmk(["scheduler", "--print-manifests"]) == 2
    assert "--print-manifests needs --state-claim NAME" in capsys.readouterr().err
    assert jmk(["scheduler", "--state-claim", "x", "--replicas", "3"]) == 2
    assert "--state-claim, --replicas only go with --print-manifests" in capsys.readouterr().err
