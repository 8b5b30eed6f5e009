"""What a pod of ours looks like beyond its command: :class:`PodSettings`, and the pod-spec pieces built from it.

Jobs, serving endpoints and scheduled CronJobs all take their pod settings from
:func:`jupyter_mlflow_k8s.k8s.presets.layered_settings` (configured traits, then a preset, then flags)
and place their pods with :func:`placement`, :func:`resources` and the volume helpers here, so a
toleration, pull secret or service account configured once reaches every pod. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PAYLOAD_MOUNT = "/var/run/jmk/payload"
SHM_MOUNT = "/dev/shm"  # noqa: S108 (a mount point in the pod, not a temporary file)
# Variables of the notebook's environment that a pod needs to reach storage and tracking. They travel
# in a Secret of the job or endpoint, never in its manifest.
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_INSECURE_TLS",
)
# A container waiting for one of these reasons will not start by itself: what each means, in words.
WAITING_FAILURES = {
    "ImagePullBackOff": "the image could not be pulled",
    "ErrImagePull": "the image could not be pulled",
    "InvalidImageName": "the image name is invalid",
    "CreateContainerConfigError": "the container could not be configured",
    "CreateContainerError": "the container could not be created",
}


@dataclass(frozen=True)
class PVCMount:
    """A PersistentVolumeClaim mounted into the job's container (``--volume pvc:CLAIM:/path[:ro]``)."""

    claim: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class PodSettings:
    """What a job's pod looks like beyond the cell: configured traits, then a preset, then flags.

    Quantities (``cpu``, ``memory``, ``shm_size``) are Kubernetes quantity strings such as
    ``"500m"`` or ``"16Gi"``; ``cpu`` and ``memory`` are both requested and limited.
    ``secrets`` are names of Secrets in ``namespace`` whose keys become environment variables:
    their values never appear in a manifest built here. ``shm_size`` sizes a memory-backed
    ``/dev/shm`` (PyTorch's DataLoader workers need more than the runtime's 64 MiB); ``None``
    leaves the runtime's. A GPU job gets a toleration of the ``gpu_resource`` taint unless one
    of ``tolerations`` already tolerates it.
    """

    namespace: str = "default"
    image: str = "python:3.11-slim"
    image_pull_policy: str | None = None
    python: str = "python"
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str | None = None
    memory: str | None = None
    gpus: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: Sequence[str] = ()
    runtime_class_name: str | None = None
    shm_size: str | None = "1Gi"
    ttl_seconds_after_finished: int | None = 86400
    retries: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Sequence[str] = ()
    volumes: Sequence[PVCMount] = ()


# -- pod spec pieces -------------------------------------------------------------------------


def placement(settings: PodSettings) -> dict[str, Any]:
    """The pod spec fields that place and run a pod (node, tolerations, service account, ...): jobs and endpoints."""
    return {
        "nodeSelector": dict(settings.node_selector),
        "tolerations": tolerations(settings),
        "affinity": plain(settings.affinity),
        "priorityClassName": settings.priority_class_name,
        "serviceAccountName": settings.service_account_name,
        "imagePullSecrets": [{"name": name} for name in settings.image_pull_secrets],
        "runtimeClassName": settings.runtime_class_name,
    }


def resources(settings: PodSettings) -> dict[str, Any]:
    """CPU and memory requested as much as limited; GPUs limited only (the request follows the limit)."""
    requests = {name: value for name, value in (("cpu", settings.cpu), ("memory", settings.memory)) if value}
    limits = dict(requests)
    if settings.gpus:
        limits[settings.gpu_resource] = str(settings.gpus)
    return compact({"requests": requests, "limits": limits})


def tolerations(settings: PodSettings) -> list[Any]:
    """The configured tolerations, plus one of the GPU resource's taint for a GPU pod that has none."""
    found = [plain(toleration) for toleration in settings.tolerations]
    if settings.gpus and not any(_tolerates(toleration, settings.gpu_resource) for toleration in found):
        found.append({"key": settings.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    return found


def _tolerates(toleration: Mapping[str, Any], key: str) -> bool:
    """Whether ``toleration`` tolerates a NoSchedule taint ``key``, the way GPU nodes are tainted."""
    key_matches = toleration.get("key") == key or (not toleration.get("key") and toleration.get("operator") == "Exists")
    return key_matches and toleration.get("effect") in (None, "", "NoSchedule")


# Each volume of the pod with its mount in the container.
Volume = tuple[dict[str, Any], dict[str, Any]]


def shm_volume(settings: PodSettings) -> list[Volume]:
    """The memory-backed ``/dev/shm`` of ``shm_size`` (none when it is None)."""
    if not settings.shm_size:
        return []
    volume = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}
    return [(volume, {"name": "dshm", "mountPath": SHM_MOUNT})]


def pvc_volumes(settings: PodSettings) -> list[Volume]:
    """The PersistentVolumeClaims of ``settings.volumes`` (``pvc-0``, ``pvc-1`` ...) with their mounts."""
    volumes = []
    for index, mount in enumerate(settings.volumes):
        name = f"pvc-{index}"
        read_only = mount.read_only or None
        volume = {"name": name, "persistentVolumeClaim": compact({"claimName": mount.claim, "readOnly": read_only})}
        volumes.append((volume, compact({"name": name, "mountPath": mount.path, "readOnly": read_only})))
    return volumes


def pod_spec(settings: PodSettings, containers: Sequence[Mapping[str, Any]], volumes: Sequence[Mapping[str, Any]], *,
             restart_policy: str, termination_grace_seconds: int | None = None) -> dict[str, Any]:
    """A pod spec of ours: its containers and volumes, placed by :func:`placement`; empty fields left out."""
    return compact({
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": termination_grace_seconds,
        "containers": [dict(container) for container in containers],
        "volumes": [dict(volume) for volume in volumes],
        **placement(settings),
    })


def compact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` without those that have no value (None or empty); 0 and False are values."""
    return {key: value for key, value in fields.items() if value is not None and value != {} and value != []}


def plain(value: Any) -> Any:
    """A copy of ``value`` as JSON data: mappings as dicts, lists and tuples as lists."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
