"""A schedule as Kubernetes objects: the CronJob running the pipeline, and the ConfigMap of its files.

Pure builders: no API call. The pod takes its settings from the Kubernetes backend's (traits, presets),
as jobs and endpoints do (:func:`cronjob_settings`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ...exceptions import JMKUsageError
from ...k8s.names import MANAGED_BY, label_value, payload_key
from ...k8s.pods import PodSettings, compact, pod_spec, pvc_volumes, resources, shm_volume
from ...k8s.presets import check_image, layered_settings
from ...k8s.validation import ensure_valid
from ..model import Pipeline
from .cron import TIME_ZONE, UTC, next_fire
from .store import SKIP_GRACE_SECONDS, _check_missed, _override_texts, check_schedule_name, schedule_name

PIPELINE_MOUNT = "/var/run/jmk/pipeline"
STATE_MOUNT = "/var/run/jmk/state"
PIPELINE_FILE = "pipeline.yaml"
CONTAINER = "pipeline"
# The pipeline's files in the ConfigMap: its data may hold 1 MiB, keys included.
CONFIGMAP_LIMIT = 1000 * 1024
SCHEDULE_LABEL = "jmk.io/schedule"
PIPELINE_LABEL = "jmk.io/pipeline"
DEFAULT_IMAGE = "jupyter-mlflow-k8s-runner:latest"
# This package's folder: notebooks of step kinds under it are in every runner image.
PACKAGE = Path(__file__).resolve().parents[2]


# -- Kubernetes: a CronJob and the ConfigMap of the pipeline's files -------------------------


def default_image() -> str:
    """The runner image, as the Kubernetes backend picks it: the notebook's own under JupyterHub, else ours."""
    return os.environ.get("JUPYTER_IMAGE_SPEC") or os.environ.get("JUPYTER_IMAGE") or DEFAULT_IMAGE


def _relative(path: Path, folder: Path, pipeline: Pipeline) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        raise JMKUsageError(
            f"The notebook {path} of pipeline {pipeline.name!r} is outside the pipeline's folder {folder}: "
            "only files under that folder are carried to the cluster. Move it there."
        ) from None


def _without_outputs(content: bytes) -> bytes:
    """A notebook without cell outputs (papermill does not need them; they can be large images)."""
    try:
        document = json.loads(content)
        for cell in document.get("cells", []):
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None
    except (ValueError, AttributeError, TypeError):
        return content
    return json.dumps(document, indent=1, ensure_ascii=False).encode()


def pipeline_files(pipeline_path: Path, pipeline: Pipeline) -> dict[str, bytes]:
    """The files a pod needs to run the pipeline: ``pipeline.yaml`` and its notebooks, by path in the mount.

    Notebooks keep their paths relative to the pipeline file's folder, without their outputs. A step
    kind's own notebook (``batch_predict``'s, in this package) is not carried: the image has it.

    Raises:
        JMKUsageError: A notebook is outside that folder, or a file cannot be read.
    """
    source = Path(pipeline_path).absolute()
    folder = source.parent
    try:
        files = {PIPELINE_FILE: source.read_bytes()}
        for step in pipeline.steps.values():
            notebook = Path(os.path.normpath(step.notebook))
            if notebook.is_relative_to(PACKAGE):
                continue
            relative = _relative(notebook, folder, pipeline)
            files.setdefault(relative, _without_outputs(step.notebook.read_bytes()))
    except OSError as exc:
        raise JMKUsageError(f"Cannot read the pipeline's files: {exc}") from None
    return files


def _labels(pipeline: Pipeline, name: str, extra: Mapping[str, str]) -> dict[str, str]:
    return {
        **extra,
        "app.kubernetes.io/name": MANAGED_BY,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": "pipeline-schedule",
        PIPELINE_LABEL: label_value(pipeline.name),
        SCHEDULE_LABEL: name,
    }


def _cronjob_name(name: str | None, pipeline: Pipeline) -> str:
    name = schedule_name(pipeline.name) if name is None else name
    check_schedule_name(name)
    return name


def configmap_name(name: str) -> str:
    """The ConfigMap carrying the files of the schedule ``name``'s pipeline."""
    return f"{name}-pipeline"


def build_pipeline_configmap(
    pipeline_path: Path, pipeline: Pipeline, *, namespace: str, name: str, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ConfigMap carrying ``pipeline.yaml`` and its notebooks (keys as ``payload_key`` maps paths).

    Raises:
        JMKUsageError: The files are over :data:`CONFIGMAP_LIMIT` (bake them into the image instead), or
            a notebook is outside the pipeline's folder.
    """
    files = pipeline_files(pipeline_path, pipeline)
    metadata = {"name": configmap_name(name), "namespace": namespace, "labels": _labels(pipeline, name, labels or {})}
    return files_configmap(files, metadata, instead="Bake the pipeline and its notebooks into the runner image "
                           "and run `jmk pipeline run` on it from your own CronJob")


def files_configmap(files: Mapping[str, bytes], metadata: Mapping[str, Any], *, instead: str) -> dict[str, Any]:
    """A ConfigMap carrying ``files`` (path to content) under the keys ``payload_key`` maps their paths to.

    Args:
        files: What to carry; text as ``data``, anything else base64 in ``binaryData``.
        metadata: The ConfigMap's metadata.
        instead: What to do when the files are too large for a ConfigMap (said in the error).

    Raises:
        JMKUsageError: The files are over :data:`CONFIGMAP_LIMIT`.
    """
    size = sum(len(content) for content in files.values())
    if size > CONFIGMAP_LIMIT:
        raise JMKUsageError(
            f"The pipeline's files take {size / 1024:,.0f} KiB (notebooks without outputs), more than the "
            f"{CONFIGMAP_LIMIT // 1024} KiB a ConfigMap can carry to the pod. {instead}, or make the notebooks "
            "smaller (move data and code they embed into files the image has)."
        )
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for path, content in sorted(files.items()):
        try:
            data[payload_key(path)] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[payload_key(path)] = base64.b64encode(content).decode("ascii")
    configmap: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": dict(metadata), "data": data}
    if binary:
        configmap["binaryData"] = binary
    ensure_valid(configmap)
    return configmap


def step_resources(pipeline: Pipeline) -> dict[str, Any]:
    """The most any local step asks for: its steps run in the one pod (one or a few at a time)."""
    from ...models import parse_cpu, parse_memory

    local = [step.resources for step in pipeline.steps.values() if step.backend == "local"]
    cpus = [r.cpu for r in local if r.cpu]
    memories = [r.memory for r in local if r.memory]
    return {
        "cpu": max(cpus, key=parse_cpu) if cpus else None,
        "memory": max(memories, key=parse_memory) if memories else None,
        "gpus": max((r.gpus for r in local), default=0),
    }


def build_cronjob(
    pipeline_path: Path,
    pipeline: Pipeline,
    cron: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    namespace: str | None = None,
    image: str | None = None,
    name: str | None = None,
    settings: PodSettings | None = None,
    missed: str = "run-once",
    overlap: bool = False,
) -> dict[str, Any]:
    """The batch/v1 CronJob running ``jmk pipeline run`` on the pipeline in the runner image, in UTC.

    The pod mounts the ConfigMap of :func:`build_pipeline_configmap` at :data:`PIPELINE_MOUNT` and
    runs ``python -m jupyter_mlflow_k8s.cli pipeline run /var/run/jmk/pipeline/pipeline.yaml -p ...``
    with its state directory on an ``emptyDir``. ``concurrencyPolicy`` is ``Forbid`` unless
    ``overlap``; ``startingDeadlineSeconds`` is :data:`SKIP_GRACE_SECONDS` for ``missed="skip"`` and
    unset for ``run-once`` (the controller then starts one Job for the latest missed slot). Jobs are
    not retried (``backoffLimit: 0``: steps have their own ``retries``); 3 succeeded and 3 failed
    Jobs are kept.

    Args:
        pipeline_path: The pipeline file.
        pipeline: The pipeline loaded from it (with ``overrides``).
        cron: The schedule, in UTC.
        overrides: ``-p`` values for each run.
        namespace: Default: ``settings.namespace``.
        image: The runner image (with this package, papermill and the notebooks' needs). Default:
            ``settings.image`` when ``settings`` is given, else :func:`default_image`.
        name: The CronJob's name (RFC 1123 label, at most 52); default: the pipeline's name, slugged.
        settings: ``PodSettings`` for the pod (resources, node selector, secrets ...). Default: the
            most any local step asks for.
        missed: ``"run-once"`` or ``"skip"``.
        overlap: Allow a run to start while the previous one runs.

    Raises:
        CronError: The schedule is invalid or never fires.
        JMKUsageError: A bad name, image or policy.
        InvalidManifest: Settings that make a CronJob the API server would refuse.
    """
    _check_missed(missed)
    next_fire(cron, datetime.now(UTC))  # valid, and fires at all
    name = _cronjob_name(name, pipeline)
    pod = settings if settings is not None else PodSettings(**step_resources(pipeline))
    pod = dataclasses.replace(
        pod,
        namespace=namespace or pod.namespace,
        image=image or (pod.image if settings is not None else default_image()),
    )
    check_image(pod.image)
    labels = _labels(pipeline, name, pod.labels)
    files = pipeline_files(pipeline_path, pipeline)
    items = [{"key": payload_key(path), "path": path} for path in sorted(files)]
    files_volume = {"name": "pipeline", "configMap": {"name": configmap_name(name), "items": items}}
    state_volume = {"name": "state", "emptyDir": {}}
    volumes = [
        (files_volume, {"name": "pipeline", "mountPath": PIPELINE_MOUNT, "readOnly": True}),
        (state_volume, {"name": "state", "mountPath": STATE_MOUNT}),
        *shm_volume(pod),
        *pvc_volumes(pod),
    ]
    parameters = [item for k, v in _override_texts(overrides).items() for item in ("-p", f"{k}={v}")]
    env = {"JMK_STATE_DIR": STATE_MOUNT, **pod.env, "PYTHONUNBUFFERED": "1"}
    container = compact(
        {
            "name": CONTAINER,
            "image": pod.image,
            "imagePullPolicy": pod.image_pull_policy,
            "command": [pod.python, "-m", "jupyter_mlflow_k8s.cli", "pipeline", "run",
                        f"{PIPELINE_MOUNT}/{PIPELINE_FILE}", *parameters],
            "env": [{"name": key, "value": value} for key, value in env.items()],
            "envFrom": [{"secretRef": {"name": secret}} for secret in pod.secrets],
            "resources": resources(pod),
            "volumeMounts": [mount for _, mount in volumes],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )
    spec = pod_spec(pod, [container], [volume for volume, _ in volumes], restart_policy="Never")
    annotations = {**pod.annotations, "jmk.io/pipeline-file": str(Path(pipeline_path).absolute())}
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": compact({"name": name, "namespace": pod.namespace, "labels": labels, "annotations": annotations}),
        "spec": compact(
            {
                "schedule": cron.strip(),
                "timeZone": TIME_ZONE,
                "concurrencyPolicy": "Allow" if overlap else "Forbid",
                "startingDeadlineSeconds": SKIP_GRACE_SECONDS if missed == "skip" else None,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "backoffLimit": 0,
                        "template": {
                            "metadata": compact({"labels": labels, "annotations": dict(pod.annotations)}),
                            "spec": spec,
                        },
                    },
                },
            }
        ),
    }
    ensure_valid(cronjob)
    return cronjob


def cronjob_settings(pipeline: Pipeline, *, namespace: str | None = None, image: str | None = None,
                     env: Mapping[str, str] | None = None, config: Any = None) -> PodSettings:
    """The pod settings of a scheduled pipeline's CronJob: the Kubernetes backend's, as jobs get them.

    The configured ``c.KubernetesBackend`` settings (from ``config``; tolerations, image pull secrets,
    service account, node selector, env, Secrets, volumes ...) and its namespace (the one resolver),
    then the most any local step asks for, then ``namespace``, ``image`` and ``env`` when given.

    Raises:
        JMKUsageError: A bad configured setting or image.
    """
    from ...backends.kubernetes import KubernetesBackend

    backend = KubernetesBackend(None, **({"config": config} if config is not None else {}))
    needs = step_resources(pipeline)
    return layered_settings(backend.configured_settings(), backend.presets, namespace=namespace, image=image,
                            cpu=needs["cpu"], memory=needs["memory"], gpus=needs["gpus"], env=env)


def build_schedule_manifests(
    pipeline_path: Path,
    pipeline: Pipeline,
    cron: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    namespace: str | None = None,
    image: str | None = None,
    name: str | None = None,
    settings: PodSettings | None = None,
    missed: str = "run-once",
    overlap: bool = False,
) -> list[dict[str, Any]]:
    """The ConfigMap of the pipeline's files, then the CronJob (see :func:`build_cronjob`)."""
    cronjob = build_cronjob(
        pipeline_path, pipeline, cron, overrides, namespace=namespace, image=image, name=name, settings=settings,
        missed=missed, overlap=overlap,
    )
    metadata = cronjob["metadata"]
    configmap = build_pipeline_configmap(
        pipeline_path, pipeline, namespace=metadata["namespace"], name=metadata["name"],
        labels=settings.labels if settings is not None else None,
    )
    return [configmap, cronjob]
