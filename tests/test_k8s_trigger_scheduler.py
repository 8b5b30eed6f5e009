"""The scheduler Deployment on the real node: it holds its Lease and fires a trigger exactly once.

The objects applied are the ones ``jmk scheduler --apply`` applies (ServiceAccount, Role, RoleBinding,
the trigger's ConfigMap, Deployment of the runner image built from this checkout). The trigger is
defined in another state directory (the user's machine) and reaches the pod only through its
ConfigMap. The pod's state directory is a PersistentVolumeClaim bound to a PersistentVolume of this
test's own state directory (``hostPath``: the real node is this machine), so the trigger the pod
synced, its cursor and history, and the pipeline run the pod launches are read here as a user's
``jmk`` reads them. The trigger watches a bucket of a moto S3 server the pods reach. Run with
``flock /tmp/jmk-cluster.lock`` around pytest (one node per machine).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from k8s_fixtures import KubeTarget
from trigger_fixtures import retrain_pipeline

from jupyter_mlflow_k8s.k8s import apply as apply_ours
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.k8s.scheduler import build_scheduler_manifests
from jupyter_mlflow_k8s.pipelines.engine import PipelineEngine
from jupyter_mlflow_k8s.pipelines.triggers.carry import carry, chosen
from jupyter_mlflow_k8s.pipelines.triggers.store import (
    add_trigger,
    build_trigger,
    get_trigger,
    load_cursor,
    read_history,
)

pytestmark = pytest.mark.k8s

NAME = "jmk-scheduler"
CLAIM = "jmk-state"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def open_up(folder: Path) -> None:
    """Let the runner image's user (uid 1000) write the state directory it gets through the claim."""
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777)
        for name in files:
            os.chmod(Path(root) / name, 0o666)


def fired(name: str) -> list[dict[str, Any]]:
    return [entry for entry in read_history(name) if entry["event"] == "fired"]


@pytest.fixture
def state_claim(real_node: KubeTarget, k8s_namespace: str, k8s_api: Any, state_dir: Path) -> Any:
    """The claim ``jmk-state`` in the test's namespace, bound to a hostPath volume of ``state_dir``."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(k8s_api)
    state_dir.mkdir(parents=True, exist_ok=True)
    volume = f"{k8s_namespace}-state"
    core.create_persistent_volume({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": volume, "labels": {"jmk.io/test": "true"}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": str(state_dir), "type": "Directory"},
                 "claimRef": {"namespace": k8s_namespace, "name": CLAIM}},
    })
    try:
        core.create_namespaced_persistent_volume_claim(k8s_namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": volume,
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
        wait_for(lambda: core.read_namespaced_persistent_volume_claim(CLAIM, k8s_namespace).status.phase == "Bound",
                 timeout=60, interval=0.5)
        yield CLAIM
    finally:
        core.delete_persistent_volume(volume)


def apply(api: Any, manifests: list[dict[str, Any]]) -> list[str]:
    """Apply as ``jmk scheduler --apply`` does (:func:`jupyter_mlflow_k8s.k8s.apply`, ours only)."""
    return [f"{apply_ours(api, manifest)[0]} {manifest['kind']}" for manifest in manifests]


def account_token_secret(api: Any, namespace: str, account: str) -> str:
    """The token Secret the controller made for ``account`` (1.20 still makes them)."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(api)

    def secret() -> str | None:
        secrets = core.read_namespaced_service_account(account, namespace).secrets or []
        return secrets[0].name if secrets else None

    return str(wait_for(secret, timeout=60, interval=0.5))


def test_the_scheduler_deployment_holds_its_lease_and_fires_a_trigger_once(
    real_node: KubeTarget, k8s_namespace: str, k8s_api: Any, state_dir: Path, state_claim: str,
    k8s_s3_server: Any, k8s_s3_bucket: str, k8s_mlflow_server: str,
) -> None:
    import kubernetes

    # The user's machine: the pipeline and the trigger live there, not on the claim.
    laptop = state_dir.parent / "laptop"
    pipeline = retrain_pipeline(laptop / "retrain")
    os.environ["JMK_STATE_DIR"] = str(laptop / "state")
    try:
        add_trigger(build_trigger(pipeline, name="new-data",
                                  on_new_objects=f"s3://{k8s_s3_bucket}/in/", pattern="*.parquet", min_new=3))
        carried = carry(chosen([]), scheduler=NAME, namespace=k8s_namespace)
    finally:
        os.environ["JMK_STATE_DIR"] = str(state_dir)
    open_up(state_dir)

    env = {**k8s_s3_server.environment(), "AWS_EC2_METADATA_DISABLED": "true",
           "MLFLOW_TRACKING_URI": k8s_mlflow_server}
    settings = PodSettings(namespace=k8s_namespace, image=real_node.pod_image, env=env, shm_size=None)
    manifests = build_scheduler_manifests(settings, state_claim=state_claim, name=NAME, poll_seconds=1,
                                          lease_seconds=10, carried=carried)
    deployment = manifests[-1]
    if real_node.local:
        # The test cluster's API server runs without the ServiceAccount admission plugin, which on any other
        # cluster mounts the account's token: mount the token Secret where that plugin would.
        assert apply(k8s_api, manifests[:-1]) == ["created ServiceAccount", "created Role", "created RoleBinding",
                                                  "created ConfigMap"]
        secret = account_token_secret(k8s_api, k8s_namespace, NAME)
        pod = deployment["spec"]["template"]["spec"]
        pod["volumes"].append({"name": "token", "secret": {"secretName": secret}})
        pod["containers"][0]["volumeMounts"].append({"name": "token", "mountPath": TOKEN_MOUNT, "readOnly": True})
        apply(k8s_api, [deployment])
    else:
        apply(k8s_api, manifests)

    core = kubernetes.client.CoreV1Api(k8s_api)
    coordination = kubernetes.client.CoordinationV1Api(k8s_api)
    selector = f"app.kubernetes.io/name={NAME}"

    def holder() -> str | None:
        """The pod holding the Lease, once renewed, when it is a running pod not being deleted."""
        pods = [p.metadata.name for p in core.list_namespaced_pod(k8s_namespace, label_selector=selector).items
                if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]
        try:
            lease = coordination.read_namespaced_lease(NAME, k8s_namespace)
        except kubernetes.client.ApiException:
            return None
        held = lease.spec.holder_identity  # a new Lease names its creator at once: held once renewed
        return held if held in pods and lease.spec.renew_time is not None else None

    try:
        pod_name = wait_for(holder, timeout=300, interval=1)
    except AssertionError:
        for p in core.list_namespaced_pod(k8s_namespace, label_selector=selector).items:
            print(p.metadata.name, p.status.phase, p.status.container_statuses)
            try:
                print(core.read_namespaced_pod_log(p.metadata.name, k8s_namespace, tail_lines=50))
            except kubernetes.client.ApiException as exc:
                print(exc)
        raise
    renewed = coordination.read_namespaced_lease(NAME, k8s_namespace).spec.renew_time
    # The pod synced the carried trigger into the claim's state, naming the pipeline in its ConfigMap.
    wait_for(lambda: load_cursor("new-data").last_check is not None, timeout=60, interval=0.5)  # the pod ticks
    assert get_trigger("new-data").pipeline == "/var/run/jmk/triggers/new-data/pipeline.yaml"
    assert apply(k8s_api, manifests[3:4]) == ["replaced ConfigMap"]  # applied again: replaced, ours

    client = k8s_s3_server.client()
    keys = [f"s3://{k8s_s3_bucket}/in/{n}.parquet" for n in ("a", "b", "c")]
    for key in keys:
        client.put_object(Bucket=k8s_s3_bucket, Key=key.split("/", 3)[3], Body=b"rows")

    def ended() -> dict[str, Any] | None:
        return next((e for e in read_history("new-data") if e["event"] == "run-ended"), None)

    try:
        end = wait_for(ended, timeout=300, interval=1)
    except AssertionError:
        print(read_history("new-data"), load_cursor("new-data"))
        for log_file in sorted((state_dir / "pipelines" / "triggers" / "new-data" / "logs").glob("*.log")):
            print(log_file.read_text()[-3000:])
        print(core.read_namespaced_pod_log(pod_name, k8s_namespace, tail_lines=50))
        raise
    assert end["exit"] == 0, end
    # Later ticks of the holder launch nothing more.
    checked = load_cursor("new-data").last_check
    assert checked is not None
    wait_for(lambda: (load_cursor("new-data").last_check or checked).timestamp() > checked.timestamp() + 2,
             timeout=60, interval=0.5)
    (entry,) = fired("new-data")
    (run,) = PipelineEngine().list()
    assert entry["run_id"] == run.run_id == load_cursor("new-data").last_run_id
    assert run.state == "succeeded" and run.parameters["new_objects"] == sorted(keys)
    assert run.steps["train"].outputs == {"objects": sorted(keys)}
    lease = coordination.read_namespaced_lease(NAME, k8s_namespace).spec
    assert lease.holder_identity == pod_name and lease.renew_time > renewed  # the holder keeps renewing

    # The pod deleted: the Deployment's next pod takes the Lease over and continues from the same cursor,
    # launching nothing again.
    core.delete_namespaced_pod(pod_name, k8s_namespace)
    wait_for(lambda: holder() not in (None, pod_name), timeout=300, interval=1)
    assert coordination.read_namespaced_lease(NAME, k8s_namespace).spec.lease_transitions == 1
    after = datetime.now(timezone.utc)
    wait_for(lambda: (load_cursor("new-data").last_check or after).timestamp() > after.timestamp() + 2,
             timeout=120, interval=0.5)
    assert len(fired("new-data")) == 1 and len(PipelineEngine().list()) == 1
