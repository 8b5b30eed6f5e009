"""The Kubernetes manifests of one ``%%train`` job: its batch/v1 Job and the Secrets the Job reads.

Pure functions of a job record and :class:`PodSettings`: no API call, no I/O. Every builder ends
with :func:`jupyter_mlflow_k8s.manifests.ensure_valid`, so a manifest it returns is one the API
server of Kubernetes 1.27+ accepts, and a bad value is refused before anything is submitted.

What a job's pod looks like comes in layers: the backend's configured traits, then a preset
(:func:`apply_preset`), then the cell's flags (``--image``, ``--cpu``, ``--volume`` ...), which the
backend folds into :class:`PodSettings` itself. Only the Secrets ever hold credentials or payload
bytes; the Job refers to them by name.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
import json
import math
import posixpath
import re
import string
import unicodedata
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import JMKUsageError
from ..manifests import check_dns1123_subdomain, check_quantity, ensure_valid
from ..models import JobRecord

RUNNER_MODULE = "jupyter_mlflow_k8s.runner"
MANAGED_BY = "jupyter-mlflow-k8s"
CONTAINER = "train"
PAYLOAD_MOUNT = "/var/run/jmk/payload"
SHM_MOUNT = "/dev/shm"  # noqa: S108 (a mount point in the pod, not a temporary file)
# Raw bytes of a payload carried in a Secret; base64 and the keys must stay under the API's 1 MiB.
PAYLOAD_LIMIT = 900 * 1024
# Annotations may hold 256 KiB in all; the record gets at most this much of it.
RECORD_ANNOTATION_LIMIT = 200 * 1024

JOB_ID_LABEL = "jmk.io/job-id"
USER_LABEL = "jmk.io/user"
RECORD_ANNOTATION = "jmk.io/record"
RECORD_OMITTED_ANNOTATION = "jmk.io/record-omitted"

_LABEL_MAX_LENGTH = 63
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


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


# -- names -----------------------------------------------------------------------------------


def _ascii(text: str) -> str:
    """``text`` with accents dropped and other non-ASCII characters removed: 'Zoë' -> 'Zoe'."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _dns_slug(text: str) -> str:
    """Lowercase letters and digits of ``text``, every other run of characters one '-'."""
    return re.sub("[^a-z0-9]+", "-", _ascii(text).lower()).strip("-")


def job_name(job_id: str, user: str) -> str:
    """The name of a job's Kubernetes Job: ``jmk-<user>-<job id>``.

    A Job's name becomes a label value on its pods, so it is an RFC 1123 label of at most 63
    characters: the user's name is slugged (lowercase, other characters as '-') and shortened
    to fit; the job id, unique per job, is kept whole.

    Args:
        job_id: The job's id, lowercase hex as the job store makes them.
        user: Who submits the job; may be any text.

    Returns:
        e.g. ``jmk-jane-doe-1a2b3c4d``, or ``jmk-1a2b3c4d`` when nothing of the user's name is usable.
    """
    budget = max(_LABEL_MAX_LENGTH - len("jmk--") - len(job_id), 0)
    slug = _dns_slug(user)[:budget].rstrip("-")
    return "-".join(part for part in ("jmk", slug, job_id) if part)


def label_value(text: str) -> str:
    """Any text as a valid label value, still recognisable.

    Accents are dropped, each run of characters other than letters, digits, '-', '_' and '.'
    becomes '-', and the ends are trimmed to a letter or digit. Text longer than 63 characters
    keeps its first 54 and a hash of the whole, so that long values stay distinct.

    Args:
        text: e.g. a user or notebook file name.

    Returns:
        e.g. ``Training-v2.ipynb`` for ``Training v2.ipynb``; empty when nothing is usable.
    """
    value = re.sub("[^A-Za-z0-9_.-]+", "-", _ascii(text)).strip("-_.")
    if len(value) <= _LABEL_MAX_LENGTH:
        return value
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{value[: _LABEL_MAX_LENGTH - len(digest) - 1].rstrip('-_.')}-{digest}"


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


# -- flags: --volume, --secret, --image ------------------------------------------------------

_VOLUME_FORM = "pvc:CLAIM:/path[:ro]"
_NAME_RULE = "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"


def parse_volume(text: str) -> PVCMount:
    """Parse ``--volume pvc:CLAIM:/path`` (read-write) or ``pvc:CLAIM:/path:ro`` (read-only).

    Args:
        text: The flag's value.

    Returns:
        The mount of that PersistentVolumeClaim.

    Raises:
        JMKUsageError: ``text`` is not of that form, the claim is not a Kubernetes name, or the path
            is not absolute, not normalized, has whitespace, or is ``/``, ``/dev/shm`` or the payload's.
    """
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[0] != "pvc" or parts[3:] not in ([], ["ro"]):
        raise JMKUsageError(f"--volume {text!r} is not {_VOLUME_FORM}. Write --volume pvc:datasets:/data")
    _, claim, path, *mode = parts
    suffix = ":ro" if mode else ""
    if check_dns1123_subdomain(claim, "claim"):
        example = _dns_slug(claim) or "datasets"
        raise JMKUsageError(
            f"--volume {text!r}: {claim!r} is not a PersistentVolumeClaim name ({_NAME_RULE}). "
            f"Write --volume pvc:{example}:{path}{suffix}"
        )
    problem = _mount_path_problem(path)
    if problem:
        raise JMKUsageError(f"--volume {text!r}: the mount path {path!r} {problem}, e.g. --volume pvc:{claim}:/data")
    return PVCMount(claim, path, read_only=bool(mode))


def _mount_path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return "must be absolute"
    if re.search(r"\s", path):
        return "must not contain whitespace"
    if posixpath.normpath(path) != path:
        return f"must be normalized ({posixpath.normpath(path)!r})"
    if path == "/":
        return "would hide the whole image; mount the claim on a folder"
    if _is_within(path, SHM_MOUNT):
        return "is the job's shared memory; mount the claim elsewhere"
    if _is_within(path, PAYLOAD_MOUNT):
        return "is where the job's inputs are mounted; mount the claim elsewhere"
    return None


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(f"{folder}/")


def parse_secret(text: str) -> str:
    """Check ``--secret NAME``: the name of a Secret whose keys become the job's environment variables.

    Args:
        text: The flag's value.

    Returns:
        ``text``, a valid Secret name.

    Raises:
        JMKUsageError: ``text`` is not a Kubernetes object name (an RFC 1123 subdomain).
    """
    if check_dns1123_subdomain(text, "--secret"):
        example = _dns_slug(text) or "my-credentials"
        raise JMKUsageError(
            f"--secret {text!r} is not a Secret name: use {_NAME_RULE}, at most 253 characters, e.g. --secret {example}"
        )
    return text


# Image references as github.com/distribution/reference parses them.
_ALPHANUMERIC = "[a-z0-9]+"
_PATH_COMPONENT = f"{_ALPHANUMERIC}(?:(?:[._]|__|-+){_ALPHANUMERIC})*"
_IMAGE_PATH = re.compile(f"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IMAGE_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_IMAGE_TAG = re.compile("[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_DIGEST = re.compile("[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_IMAGE_NAME_MAX_LENGTH = 255
_IMAGE_FORM = (
    "An image reference is [registry[:port]/]repository[:tag][@digest], e.g. python:3.11-slim or ghcr.io/org/train:1.2"
)


def check_image(image: str) -> None:
    """Check a container image reference as the container runtime will parse it.

    The grammar is Docker's: ``[host[:port]/]path[:tag][@digest]``. The first component is the
    registry when it has a '.' or ':' or is ``localhost``; otherwise the reference is on Docker
    Hub and the first component is part of the path, which must be lowercase.

    Args:
        image: e.g. ``python:3.11-slim``, ``ghcr.io/org/train:1.2`` or ``localhost:5000/train@sha256:...``.

    Raises:
        JMKUsageError: Saying what is wrong with ``image``.
    """
    problem = _image_problem(image)
    if problem:
        raise JMKUsageError(f"Image {image!r} {problem}. {_IMAGE_FORM}.")


def _image_problem(image: str) -> str | None:
    if not image:
        return "is empty"
    if re.search(r"\s", image):
        return "contains whitespace"
    name, at, digest = image.partition("@")
    if at and not _IMAGE_DIGEST.fullmatch(digest):
        return f"has an invalid digest {digest!r} (algorithm:hex, e.g. sha256: and 64 hex digits)"
    repository, tag = _split_tag(name)
    if tag is not None and not _IMAGE_TAG.fullmatch(tag):
        return f"has an invalid tag {tag!r} (up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')"
    registry, path = _split_registry(repository)
    if registry is not None and not _IMAGE_DOMAIN.fullmatch(registry):
        return f"has an invalid registry {registry!r} (a host name or [IPv6 address], then maybe :port)"
    if path != path.lower():
        return f"has uppercase letters in its repository {path!r}: repositories are lowercase, {path.lower()!r}"
    if not _IMAGE_PATH.fullmatch(path):
        return f"has an invalid repository {path!r} (lowercase letters and digits, separated by '/', '.', '_' or '-')"
    if len(repository) > _IMAGE_NAME_MAX_LENGTH:
        return f"has a name longer than {_IMAGE_NAME_MAX_LENGTH} characters"
    return None


def _split_tag(name: str) -> tuple[str, str | None]:
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :]
    return name, None


def _split_registry(repository: str) -> tuple[str | None, str]:
    first, slash, rest = repository.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, repository


# -- presets ---------------------------------------------------------------------------------


def _invalid(key: str, value: object, detail: str) -> JMKUsageError:
    return JMKUsageError(f"{key}: invalid value {value!r}: {detail}")


def _optional(convert: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``convert``, also letting a preset clear the setting with ``None``."""

    def convert_or_none(key: str, value: Any) -> Any:
        return None if value is None else convert(key, value)

    return convert_or_none


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid(key, value, "must be a non-empty string")
    return value


def _image(key: str, value: Any) -> str:
    image = _text(key, value)
    check_image(image)
    return image


def _pull_policy(key: str, value: Any) -> str:
    if value not in _PULL_POLICIES:
        raise _invalid(key, value, f"must be one of {', '.join(_PULL_POLICIES)}")
    return str(value)


def _quantity(key: str, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    problems = check_quantity(value, key)
    if problems:
        raise JMKUsageError(problems[0])
    return str(value)


def _count(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(key, value, "must be a whole number, 0 or more")
    return value


def _object_name(key: str, value: Any) -> str:
    name = _text(key, value)
    problems = check_dns1123_subdomain(name, key)
    if problems:
        raise JMKUsageError(problems[0])
    return name


def _list(key: str, value: Any) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise _invalid(key, value, "must be a list")
    return value


def _object_names(key: str, value: Any) -> tuple[str, ...]:
    return tuple(_object_name(key, item) for item in _list(key, value))


def _secrets(key: str, value: Any) -> tuple[str, ...]:
    return tuple(parse_secret(_text(key, item)) for item in _list(key, value))


def _volumes(key: str, value: Any) -> tuple[PVCMount, ...]:
    return tuple(parse_volume(_text(key, item)) for item in _list(key, value))


def _object(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid(key, value, "must be a mapping")
    return value


def _objects(key: str, value: Any) -> tuple[Mapping[str, Any], ...]:
    return tuple(_object(key, item) for item in _list(key, value))


def _strings(key: str, value: Any) -> dict[str, str]:
    mapping = _object(key, value)
    if not all(isinstance(item, str) for pair in mapping.items() for item in pair):
        raise _invalid(key, value, "must map strings to strings")
    return dict(mapping)


# What a preset may set, and how its value is checked. Not the namespace: a preset shapes the pod,
# and the configured Secrets and claims it names exist in the configured namespace.
_PRESET_VALUES: dict[str, Callable[[str, Any], Any]] = {
    "image": _image,
    "image_pull_policy": _optional(_pull_policy),
    "python": _text,
    "gpu_resource": _text,
    "cpu": _optional(_quantity),
    "memory": _optional(_quantity),
    "gpus": _count,
    "node_selector": _strings,
    "tolerations": _objects,
    "affinity": _optional(_object),
    "priority_class_name": _optional(_object_name),
    "service_account_name": _optional(_object_name),
    "image_pull_secrets": _object_names,
    "runtime_class_name": _optional(_object_name),
    "shm_size": _optional(_quantity),
    "ttl_seconds_after_finished": _optional(_count),
    "retries": _count,
    "labels": _strings,
    "annotations": _strings,
    "env": _strings,
    "secrets": _secrets,
    "volumes": _volumes,
}
PRESET_KEYS = frozenset(_PRESET_VALUES)


def apply_preset(settings: PodSettings, name: str, presets: Mapping[str, Mapping[str, Any]]) -> PodSettings:
    """``settings`` with the values of a configured preset, e.g. ``{"gpus": 1, "memory": "32Gi"}``.

    A preset's value replaces the configured one, lists and mappings included. Volumes are written
    as for ``--volume`` (``"pvc:CLAIM:/path[:ro]"``), secrets as Secret names; quantities may be
    numbers (``cpu: 4``).

    Args:
        settings: The configured settings.
        name: The preset's name (``--preset NAME``).
        presets: The configured presets by name; each may set the keys in :data:`PRESET_KEYS`.

    Returns:
        The new settings.

    Raises:
        JMKUsageError: The preset is not configured, sets a key it may not, or sets a bad value.
    """
    preset = presets.get(name)
    if preset is None:
        known = ", ".join(sorted(presets)) or "none"
        raise JMKUsageError(f"Unknown preset {name!r}. Configured presets: {known}.")
    unknown = sorted(set(preset) - PRESET_KEYS)
    if unknown:
        raise JMKUsageError(
            f"Preset {name!r} sets {', '.join(map(_unknown_key, unknown))}. "
            f"A preset may set {', '.join(sorted(PRESET_KEYS))}."
        )
    changes: dict[str, Any] = {}
    for key, value in preset.items():
        try:
            changes[key] = _PRESET_VALUES[key](key, value)
        except JMKUsageError as exc:
            raise JMKUsageError(f"Preset {name!r} is invalid: {exc}") from None
    return dataclasses.replace(settings, **changes)


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, PRESET_KEYS, n=1)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


# -- labels and annotations ------------------------------------------------------------------


def job_labels(record: JobRecord, user: str) -> dict[str, str]:
    """The labels of a job's Job, its pod and its Secrets: who made it, for which job, cell and run.

    Args:
        record: The job.
        user: Who submits it.

    Returns:
        Standard ``app.kubernetes.io`` labels, then ``jmk.io/job-id``, ``jmk.io/user``,
        ``jmk.io/cell-hash`` (16 hex digits of the code's SHA-256), and ``jmk.io/notebook``
        (the notebook's file name) and ``jmk.io/mlflow-run-id`` when known.
    """
    labels = {
        "app.kubernetes.io/name": MANAGED_BY,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": "train",
        JOB_ID_LABEL: record.job_id,
        USER_LABEL: label_value(user),
        "jmk.io/cell-hash": hashlib.sha256(record.spec.code.encode()).hexdigest()[:16],
    }
    if record.spec.notebook:
        labels["jmk.io/notebook"] = label_value(_file_name(record.spec.notebook))
    if record.run_id:
        labels["jmk.io/mlflow-run-id"] = label_value(record.run_id)
    return labels


def _labels(record: JobRecord, settings: PodSettings, user: str) -> dict[str, str]:
    """Configured labels, then ours (which a configured label cannot replace)."""
    return {**settings.labels, **job_labels(record, user)}


def _job_annotations(record: JobRecord) -> dict[str, str]:
    """Where the job comes from and its whole record (``jmk.io/record``), unless that is too large."""
    annotations = {
        "jmk.io/notebook": record.spec.notebook,
        "jmk.io/experiment": record.spec.experiment,
        "jmk.io/tracking-uri": _without_password(record.tracking_uri),
    }
    record_json = _record_json(record)
    if len(record_json) <= RECORD_ANNOTATION_LIMIT:
        annotations[RECORD_ANNOTATION] = record_json
    else:
        annotations[RECORD_OMITTED_ANNOTATION] = f"{len(record_json)} bytes, over {RECORD_ANNOTATION_LIMIT}"
    return {key: value for key, value in annotations.items() if value}


def _record_json(record: JobRecord) -> str:
    """The record as compact, ASCII-only JSON (so its length is its size in bytes)."""
    data = record.to_dict()
    data["tracking_uri"] = _without_password(record.tracking_uri)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _without_password(uri: str | None) -> str | None:
    """``uri`` with the password of its user info, if any, replaced by ``***``."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


# -- the Job ---------------------------------------------------------------------------------


def build_job(
    record: JobRecord,
    settings: PodSettings,
    *,
    user: str,
    payload_url: str,
    env_secret: str | None = None,
    payload_secret: str | None = None,
    payload_files: Collection[str] = (),
) -> dict[str, Any]:
    """The batch/v1 Job that runs one job: one pod, one container running the job's runner.

    The container runs ``PYTHON -m jupyter_mlflow_k8s.runner PAYLOAD_URL``. Its environment is the
    configured ``env``, then the cell's, then ``JMK_JOB_ID`` and ``PYTHONUNBUFFERED``; the configured
    Secrets and then ``env_secret`` come in whole through ``envFrom`` (on a clash of keys the later
    Secret wins, and a plain variable beats them all). The Job is labelled with
    :func:`job_labels`, is retried ``settings.retries`` times, runs at most the spec's timeout
    (rounded up to a second) and is deleted ``ttl_seconds_after_finished`` after it ends.

    Args:
        record: The job; its spec's code, env, timeout, notebook and experiment are used.
        settings: The pod's settings.
        user: Who submits the job (see :func:`job_name`).
        payload_url: Where the runner finds the payload.
        env_secret: The job's own Secret of credentials (see :func:`build_env_secret`), if any.
        payload_secret: The Secret holding the payload's files (see :func:`build_payload_secret`),
            mounted read-only at :data:`PAYLOAD_MOUNT`, if any.
        payload_files: The relative paths of those files; each is projected from its key (see
            :func:`payload_key`) back to its path under :data:`PAYLOAD_MOUNT`.

    Returns:
        The Job as plain JSON data, without null or empty fields.

    Raises:
        InvalidManifest: The settings make a Job the API server would refuse (e.g. a bad quantity).
    """
    labels = _labels(record, settings, user)
    template_metadata = {"labels": labels, "annotations": dict(settings.annotations)}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(
            job_name(record.job_id, user), settings, labels, {**settings.annotations, **_job_annotations(record)}
        ),
        "spec": _compact(
            {
                "backoffLimit": settings.retries,
                "activeDeadlineSeconds": _deadline(record.spec.timeout),
                "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
                "template": {
                    "metadata": _compact(template_metadata),
                    "spec": _pod_spec(record, settings, payload_url, env_secret, payload_secret, payload_files),
                },
            }
        ),
    }
    ensure_valid(job)
    return job


def _metadata(
    name: str, settings: PodSettings, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return _compact({"name": name, "namespace": settings.namespace, "labels": dict(labels), "annotations": annotations})


def _deadline(timeout: float | None) -> int | None:
    return None if timeout is None else max(math.ceil(timeout), 1)


def _pod_spec(
    record: JobRecord,
    settings: PodSettings,
    payload_url: str,
    env_secret: str | None,
    payload_secret: str | None,
    payload_files: Collection[str],
) -> dict[str, Any]:
    volumes = [*_shm_volume(settings), *_pvc_volumes(settings), *_payload_volume(payload_secret, payload_files)]
    mounts = [mount for _, mount in volumes]
    return _compact(
        {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [_container(record, settings, payload_url, env_secret, mounts)],
            "volumes": [volume for volume, _ in volumes],
            **placement(settings),
        }
    )


def placement(settings: PodSettings) -> dict[str, Any]:
    """The pod spec fields that place and run a pod (node, tolerations, service account, ...): jobs and endpoints."""
    return {
        "nodeSelector": dict(settings.node_selector),
        "tolerations": _tolerations(settings),
        "affinity": _plain(settings.affinity),
        "priorityClassName": settings.priority_class_name,
        "serviceAccountName": settings.service_account_name,
        "imagePullSecrets": [{"name": name} for name in settings.image_pull_secrets],
        "runtimeClassName": settings.runtime_class_name,
    }


def _container(
    record: JobRecord, settings: PodSettings, payload_url: str, env_secret: str | None, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    env = {**settings.env, **record.spec.env, "JMK_JOB_ID": record.job_id, "PYTHONUNBUFFERED": "1"}
    secrets = [*settings.secrets, *([env_secret] if env_secret else [])]
    return _compact(
        {
            "name": CONTAINER,
            "image": settings.image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": [settings.python, "-m", RUNNER_MODULE, payload_url],
            "env": [{"name": name, "value": value} for name, value in env.items()],
            "envFrom": [{"secretRef": {"name": name}} for name in secrets],
            "resources": _resources(settings),
            "volumeMounts": mounts,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )


def _resources(settings: PodSettings) -> dict[str, Any]:
    """CPU and memory requested as much as limited; GPUs limited only (the request follows the limit)."""
    requests = {name: value for name, value in (("cpu", settings.cpu), ("memory", settings.memory)) if value}
    limits = dict(requests)
    if settings.gpus:
        limits[settings.gpu_resource] = str(settings.gpus)
    return _compact({"requests": requests, "limits": limits})


def _tolerations(settings: PodSettings) -> list[Any]:
    tolerations = [_plain(toleration) for toleration in settings.tolerations]
    if settings.gpus and not any(_tolerates(toleration, settings.gpu_resource) for toleration in tolerations):
        tolerations.append({"key": settings.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _tolerates(toleration: Mapping[str, Any], key: str) -> bool:
    """Whether ``toleration`` tolerates a NoSchedule taint ``key``, the way GPU nodes are tainted."""
    key_matches = toleration.get("key") == key or (not toleration.get("key") and toleration.get("operator") == "Exists")
    return key_matches and toleration.get("effect") in (None, "", "NoSchedule")


# Each volume of the pod with its mount in the container.
_Volume = tuple[dict[str, Any], dict[str, Any]]


def _shm_volume(settings: PodSettings) -> list[_Volume]:
    if not settings.shm_size:
        return []
    volume = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}
    return [(volume, {"name": "dshm", "mountPath": SHM_MOUNT})]


def _pvc_volumes(settings: PodSettings) -> list[_Volume]:
    volumes = []
    for index, mount in enumerate(settings.volumes):
        name = f"pvc-{index}"
        read_only = mount.read_only or None
        volume = {"name": name, "persistentVolumeClaim": _compact({"claimName": mount.claim, "readOnly": read_only})}
        volumes.append((volume, _compact({"name": name, "mountPath": mount.path, "readOnly": read_only})))
    return volumes


def _payload_volume(payload_secret: str | None, payload_files: Collection[str]) -> list[_Volume]:
    if not payload_secret:
        return []
    items = [{"key": payload_key(path), "path": path} for path in sorted(payload_files)]
    volume = {"name": "payload", "secret": _compact({"secretName": payload_secret, "items": items})}
    return [(volume, {"name": "payload", "mountPath": PAYLOAD_MOUNT, "readOnly": True})]


# -- the Secrets -----------------------------------------------------------------------------


def build_env_secret(
    record: JobRecord, settings: PodSettings, name: str, env: Mapping[str, str], *, user: str
) -> dict[str, Any]:
    """The job's own Secret of environment variables: the credentials its pod needs for storage and tracking.

    The Job reads it whole through ``envFrom`` (``build_job(..., env_secret=name)``), so the values
    never appear in the Job. The Secret is immutable and labelled like the Job.

    Args:
        record: The job.
        settings: The pod's settings (for the namespace and the configured labels).
        name: The Secret's name.
        env: The variables.
        user: Who submits the job.

    Returns:
        A v1 Secret of type Opaque, the variables as ``stringData``.

    Raises:
        InvalidManifest: A variable's name is not a valid key, or the Secret is over 1 MiB.
    """
    return _secret(record, settings, name, user, {"stringData": dict(env)})


def build_payload_secret(
    record: JobRecord, settings: PodSettings, name: str, files: Mapping[str, bytes], *, user: str
) -> dict[str, Any]:
    """A Secret carrying a small payload's files to the pod, when there is no object storage to stage them in.

    Each file is stored under :func:`payload_key` of its path; ``build_job(..., payload_secret=name,
    payload_files=files)`` mounts them back at their paths under :data:`PAYLOAD_MOUNT`.

    Args:
        record: The job.
        settings: The pod's settings (for the namespace and the configured labels).
        name: The Secret's name.
        files: File contents by relative path, e.g. ``{"jobs/1a2b3c4d/payload.json": b"..."}``.
        user: Who submits the job.

    Returns:
        An immutable v1 Secret of type Opaque, the files base64-encoded in ``data``.

    Raises:
        JMKUsageError: The files hold more than :data:`PAYLOAD_LIMIT` bytes.
        ValueError: A path is absolute or not normalized.
    """
    size = sum(len(content) for content in files.values())
    if size > PAYLOAD_LIMIT:
        raise JMKUsageError(
            f"The job's inputs take {size / 1024:,.0f} KiB, more than the {PAYLOAD_LIMIT // 1024} KiB a Kubernetes "
            "Secret can carry to the pod. Configure object storage (JMK_STORAGE_URL=s3://bucket/prefix) for "
            "larger inputs."
        )
    data = {payload_key(path): base64.b64encode(content).decode("ascii") for path, content in sorted(files.items())}
    return _secret(record, settings, name, user, {"data": data})


_KEY_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-.")


def payload_key(path: str) -> str:
    """The Secret key of a payload file: its path, with each byte but ASCII letters, digits, '-' and '.' as ``_xx``.

    ``xx`` is the byte in hex, so the mapping is one-to-one: ``jobs/1a2b/payload.json`` is stored as
    ``jobs_2f1a2b_2fpayload.json`` and ``a_b`` as ``a_5fb``.

    Args:
        path: A relative, normalized path such as ``blobs/sha256/ab/ab12...``.

    Returns:
        A valid Secret key.

    Raises:
        ValueError: ``path`` is absolute, not normalized, or starts with '..'.
    """
    if path.startswith(("/", "..")) or path in ("", ".") or posixpath.normpath(path) != path:
        raise ValueError(f"payload file path {path!r} must be relative and normalized, e.g. 'jobs/1a2b/payload.json'")
    return "".join(chr(byte) if chr(byte) in _KEY_CHARACTERS else f"_{byte:02x}" for byte in path.encode())


def _secret(record: JobRecord, settings: PodSettings, name: str, user: str, data: dict[str, Any]) -> dict[str, Any]:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, settings, _labels(record, settings, user)),
        "type": "Opaque",
        "immutable": True,
        **data,
    }
    ensure_valid(secret)
    return secret


# -- plain data ------------------------------------------------------------------------------


def _compact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` without those that have no value (None or empty); 0 and False are values."""
    return {key: value for key, value in fields.items() if value is not None and value != {} and value != []}


def _plain(value: Any) -> Any:
    """A copy of ``value`` as JSON data: mappings as dicts, lists and tuples as lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
