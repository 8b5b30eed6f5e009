"""The embedded scheduler on a cluster: a small Deployment of the runner image, one replica evaluating.

Pure builders (no API call): the ServiceAccount, the Role that lets it hold its Lease (and nothing
else), the RoleBinding and the Deployment running ``jmk scheduler --lease NAME``. Its state
directory (schedules, triggers, their cursors and histories) is a PersistentVolumeClaim, so a
replica that takes over continues from the same cursors. Each replica renews or waits for the
Lease before each tick (:mod:`.lease`): during a rollout, or with ``replicas`` above one, only the
holder evaluates. Triggers defined elsewhere come as ConfigMaps (:class:`MountedFiles`, built by the
pipelines layer), mounted read-only under :data:`TRIGGERS_MOUNT`, which the scheduler syncs into its
state directory before each tick (``--triggers-from``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..exceptions import JMKUsageError
from .names import MANAGED_BY
from .pods import PodSettings, compact, pod_spec, pvc_volumes, resources
from .validation import check_dns1123_label, ensure_valid

STATE_MOUNT = "/var/run/jmk/state"
#: Where the carried triggers' ConfigMaps are mounted, one folder per trigger.
TRIGGERS_MOUNT = "/var/run/jmk/triggers"
CONTAINER = "scheduler"
COMPONENT_LABEL = "jmk.io/component"
COMPONENT = "scheduler"
#: The Deployment's, the Lease's and the ServiceAccount's name unless another is given.
DEFAULT_NAME = "jmk-scheduler"


@dataclasses.dataclass(frozen=True)
class MountedFiles:
    """A ConfigMap to mount read-only at ``TRIGGERS_MOUNT/<folder>``, its keys at the paths ``items`` give."""

    folder: str
    configmap: Mapping[str, Any]
    items: Sequence[Mapping[str, str]]


def _labels(name: str, extra: dict[str, str]) -> dict[str, str]:
    return {**extra, "app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": MANAGED_BY,
            COMPONENT_LABEL: COMPONENT}


def build_scheduler_manifests(settings: PodSettings, *, state_claim: str, name: str = DEFAULT_NAME,
                              replicas: int = 1, poll_seconds: float = 15.0, lease_seconds: int = 30,
                              carried: Sequence[MountedFiles] = ()) -> list[dict[str, Any]]:
    """ServiceAccount, Role, RoleBinding, the ConfigMaps and the Deployment of the scheduler ``name``.

    Everything is in ``settings.namespace``. The scheduler runs with ``--triggers-from``
    :data:`TRIGGERS_MOUNT`: the triggers there (those ``carried``, none when there is none) are the
    ones carried to it, synced into its state before each tick.

    Args:
        settings: The pod's settings (image, namespace, resources, secrets, placement), as jobs get them.
        state_claim: The PersistentVolumeClaim holding the state directory (ReadWriteMany when replicas
            may run on several nodes).
        name: The Deployment's, the Lease's and the ServiceAccount's name.
        replicas: Replicas; one holds the Lease and evaluates, the others wait to take over.
        poll_seconds: ``jmk scheduler --poll``.
        lease_seconds: ``leaseDurationSeconds``: how long a dead holder blocks the others.
        carried: ConfigMaps of triggers and their pipelines, each mounted in a folder of its own.

    Raises:
        JMKUsageError: A bad name, claim or count (every problem at once).
        InvalidManifest: Settings that make objects the API server would refuse.
    """
    problems = check_dns1123_label(name, "name") + check_dns1123_label(state_claim, "state_claim")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        problems.append(f"replicas={replicas!r}: give a whole number of at least 1")
    if not poll_seconds > 0:
        problems.append(f"poll_seconds={poll_seconds!r}: give a positive number of seconds, e.g. 15")
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int) or lease_seconds < 5:
        problems.append(f"lease_seconds={lease_seconds!r}: give a whole number of seconds of at least 5, e.g. 30")
    folders = [files.folder for files in carried]
    for folder in sorted({f for f in folders if folders.count(f) > 1}):
        problems.append(f"carried: two ConfigMaps for the folder {folder!r}; carry each trigger once")
    for files in carried:
        if files.configmap["metadata"].get("namespace") != settings.namespace:
            problems.append(f"carried: the ConfigMap {files.configmap['metadata']['name']!r} is not in the "
                            f"scheduler's namespace {settings.namespace!r}")
    if problems:
        raise JMKUsageError("\n".join(problems))
    namespace = settings.namespace
    labels = _labels(name, dict(settings.labels))
    selector = {"app.kubernetes.io/name": name, COMPONENT_LABEL: COMPONENT}
    account = settings.service_account_name or name
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    service_account: dict[str, Any] = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata}
    role: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata,
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [name],
             "verbs": ["get", "update", "patch"]},
        ],
    }
    binding: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
    pod = dataclasses.replace(settings, service_account_name=account, gpus=0)
    volumes = [
        ({"name": "state", "persistentVolumeClaim": {"claimName": state_claim}},
         {"name": "state", "mountPath": STATE_MOUNT}),
        *((
            {"name": f"trigger-{index}",
             "configMap": {"name": files.configmap["metadata"]["name"], "items": [dict(i) for i in files.items]}},
            {"name": f"trigger-{index}", "mountPath": f"{TRIGGERS_MOUNT}/{files.folder}", "readOnly": True},
        ) for index, files in enumerate(carried)),
        *pvc_volumes(pod),
    ]
    env = [
        {"name": "JMK_STATE_DIR", "value": STATE_MOUNT},
        *({"name": key, "value": value} for key, value in pod.env.items()),
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    container = compact({
        "name": CONTAINER,
        "image": pod.image,
        "imagePullPolicy": pod.image_pull_policy,
        "command": [pod.python, "-m", "jupyter_mlflow_k8s.cli", "scheduler", "--poll", f"{poll_seconds:g}",
                    "--lease", name, "--lease-seconds", str(lease_seconds), "--triggers-from", TRIGGERS_MOUNT],
        "env": env,
        "envFrom": [{"secretRef": {"name": secret}} for secret in pod.secrets],
        "resources": resources(pod),
        "volumeMounts": [mount for _, mount in volumes],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
    spec = pod_spec(pod, [container], [volume for volume, _ in volumes], restart_policy="Always",
                    termination_grace_seconds=30)
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": compact({**metadata, "annotations": dict(settings.annotations)}),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": compact({"labels": labels, "annotations": dict(settings.annotations)}),
                         "spec": spec},
        },
    }
    configmaps = [dict(files.configmap) for files in carried]
    manifests: list[dict[str, Any]] = [service_account, role, binding, *configmaps, deployment]
    for manifest in manifests:
        ensure_valid(manifest)
    return manifests
