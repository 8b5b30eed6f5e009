"""The Kubernetes manifests of one ``%%train`` job: its batch/v1 Job(s), the Secrets they read, a gang's Service.

Pure functions of a job record and :class:`~jupyter_mlflow_k8s.k8s.PodSettings`: no API call, no I/O.
Every builder ends with :func:`jupyter_mlflow_k8s.k8s.ensure_valid`, so a manifest it returns is one
the API server of Kubernetes 1.27+ accepts, and a bad value is refused before anything is submitted.
The pod is placed as every pod of ours is (:func:`jupyter_mlflow_k8s.k8s.pod_spec`). Only the
Secrets ever hold credentials or payload bytes; the Job refers to them by name.

A distributed job (``%%train --nodes N``) is a gang of N pods that find each other through a headless
Service: one Indexed Job where the cluster has them (:data:`INDEXED`), else one Job per rank
(:data:`JOBS`), which works on any cluster. Each pod runs the launcher
(``python -m jupyter_mlflow_k8s.distributed``) instead of the runner; see :func:`build_gang`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from ...exceptions import JMKUsageError
from ...k8s.names import MANAGED_BY, MANAGED_BY_LABEL, dns_slug, label_value, payload_key
from ...k8s.pods import PAYLOAD_MOUNT, PodSettings, Volume, compact, pod_spec, pvc_volumes, resources, shm_volume
from ...k8s.validation import ensure_valid
from ...models import JobRecord

RUNNER_MODULE = "jupyter_mlflow_k8s.runner"
LAUNCHER_MODULE = "jupyter_mlflow_k8s.distributed"
CONTAINER = "train"
# Raw bytes of a payload carried in a Secret; base64 and the keys must stay under the API's 1 MiB.
PAYLOAD_LIMIT = 900 * 1024
# Annotations may hold 256 KiB in all; the record gets at most this much of it.
RECORD_ANNOTATION_LIMIT = 200 * 1024

JOB_ID_LABEL = "jmk.io/job-id"
USER_LABEL = "jmk.io/user"
RECORD_ANNOTATION = "jmk.io/record"
RECORD_OMITTED_ANNOTATION = "jmk.io/record-omitted"
# On the first Job of a gang: its form, Service and Jobs (JSON), so that a notebook finding it rebuilds the gang.
GANG_ANNOTATION = "jmk.io/gang"
# The rank of a pod (and Job) of the one-Job-per-rank form; Indexed pods carry the Job controller's annotation.
NODE_RANK_LABEL = "jmk.io/node-rank"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# The two forms of a gang: one Indexed Job (Kubernetes 1.22+), or one Job per rank (any cluster).
INDEXED, JOBS = "indexed", "jobs"
# The shards an Indexed batch Job runs, in index order ("1,3": index 0 runs shard 1, index 1 shard 3).
BATCH_SHARDS_ENV = "JMK_BATCH_SHARDS"
RENDEZVOUS_PORT = 29400
RENDEZVOUS_PORT_NAME = "rendezvous"

_LABEL_MAX_LENGTH = 63


# -- names -----------------------------------------------------------------------------------


def job_name(job_id: str, user: str, reserve: int = 0) -> str:
    """The name of a job's Kubernetes Job: ``jmk-<user>-<job id>``.

    A Job's name becomes a label value on its pods, so it is an RFC 1123 label of at most 63
    characters: the user's name is slugged (lowercase, other characters as '-') and shortened
    to fit; the job id, unique per job, is kept whole.

    Args:
        job_id: The job's id, lowercase hex as the job store makes them.
        user: Who submits the job; may be any text.
        reserve: Characters to leave free for a suffix (a gang's ``-<rank>``, see :func:`gang_name`).

    Returns:
        e.g. ``jmk-jane-doe-1a2b3c4d``, or ``jmk-1a2b3c4d`` when nothing of the user's name is usable.
    """
    budget = max(_LABEL_MAX_LENGTH - reserve - len("jmk--") - len(job_id), 0)
    slug = dns_slug(user)[:budget].rstrip("-")
    return "-".join(part for part in ("jmk", slug, job_id) if part)


def gang_name(job_id: str, user: str, nodes: int) -> str:
    """The name of a distributed job's Service (and Indexed Job): :func:`job_name` with room for ``-<rank>``.

    Each pod's hostname, and each Job of the one-Job-per-rank form, is this name plus ``-<rank>``,
    which must still be an RFC 1123 label of at most 63 characters.
    """
    return job_name(job_id, user, reserve=len(f"-{max(nodes - 1, 0)}"))


def gang_hosts(name: str, namespace: str, cluster_domain: str) -> str:
    """The pods' DNS names with ``{rank}`` for the rank: ``<name>-{rank}.<name>.<namespace>.svc.<domain>``.

    A pod with ``hostname`` H and ``subdomain`` S gets the name ``H.S.<namespace>.svc.<domain>`` once a
    headless Service S selects it (:func:`build_gang_service`).
    """
    return f"{name}-{{rank}}.{name}.{namespace}.svc.{cluster_domain}"


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


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
        "spec": compact(
            {
                "backoffLimit": settings.retries,
                "activeDeadlineSeconds": _deadline(record.spec.timeout),
                "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
                "template": {
                    "metadata": compact(template_metadata),
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
    return compact({"name": name, "namespace": settings.namespace, "labels": dict(labels), "annotations": annotations})


def _deadline(timeout: float | None) -> int | None:
    return None if timeout is None else max(math.ceil(timeout), 1)


def _pod_spec(
    record: JobRecord,
    settings: PodSettings,
    payload_url: str,
    env_secret: str | None,
    payload_secret: str | None,
    payload_files: Collection[str],
    *,
    command: list[str] | None = None,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    volumes = [*shm_volume(settings), *pvc_volumes(settings), *_payload_volume(payload_secret, payload_files)]
    mounts = [mount for _, mount in volumes]
    command = command or [settings.python, "-m", RUNNER_MODULE, payload_url]
    container = _container(record, settings, command, env_secret, mounts, ports)
    return pod_spec(settings, [container], [volume for volume, _ in volumes], restart_policy="Never",
                    termination_grace_seconds=30)


def _container(
    record: JobRecord,
    settings: PodSettings,
    command: list[str],
    env_secret: str | None,
    mounts: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    env = {**settings.env, **record.spec.env, "JMK_JOB_ID": record.job_id, "PYTHONUNBUFFERED": "1"}
    secrets = [*settings.secrets, *([env_secret] if env_secret else [])]
    return compact(
        {
            "name": CONTAINER,
            "image": settings.image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": command,
            "env": [{"name": name, "value": value} for name, value in env.items()],
            "envFrom": [{"secretRef": {"name": name}} for name in secrets],
            "ports": ports,
            "resources": resources(settings),
            "volumeMounts": mounts,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )


def _payload_volume(payload_secret: str | None, payload_files: Collection[str]) -> list[Volume]:
    if not payload_secret:
        return []
    items = [{"key": payload_key(path), "path": path} for path in sorted(payload_files)]
    volume = {"name": "payload", "secret": compact({"secretName": payload_secret, "items": items})}
    return [(volume, {"name": "payload", "mountPath": PAYLOAD_MOUNT, "readOnly": True})]


# -- a distributed job: the gang of pods and their Service -------------------------------------


def build_gang(
    record: JobRecord,
    settings: PodSettings,
    *,
    user: str,
    payload_url: str,
    form: str,
    cluster_domain: str = "cluster.local",
    env_secret: str | None = None,
    payload_secret: str | None = None,
    payload_files: Collection[str] = (),
) -> list[dict[str, Any]]:
    """The Jobs of a distributed job: ``record.spec.nodes`` pods, each running the launcher.

    Each pod runs ``PYTHON -m jupyter_mlflow_k8s.distributed PAYLOAD_URL --nodes N --procs P --hosts
    HOSTS --port 29400 --rendezvous-timeout S``, where HOSTS are the pods' DNS names
    (:func:`gang_hosts`) under the Service :func:`build_gang_service` makes. The pods are alike but for
    their rank:

    - ``form="indexed"``: one Indexed Job (completions = parallelism = N); the Job controller names
      each pod's host ``<name>-<index>`` and gives the launcher its rank in ``$JOB_COMPLETION_INDEX``.
    - ``form="jobs"``: one Job per rank, ``<name>-<rank>``, its pod's ``hostname`` the same, labelled
      ``jmk.io/node-rank`` and given ``--node-rank R``: for clusters without Indexed Jobs (before 1.22).

    A gang is never retried (``backoffLimit: 0``): a pod started again would wait for peers that have
    moved on. The first Job carries the record (``jmk.io/record``) and the gang's names
    (``jmk.io/gang``); every pod carries the job's labels, which the Service selects on.

    Args:
        record: The job; its spec's ``nodes``, ``procs_per_node`` and ``rendezvous_timeout`` shape the gang.
        settings: Each pod's settings (``gpus`` is per pod).
        user: Who submits the job.
        payload_url: Where the launcher finds the payload (the same for every pod).
        form: :data:`INDEXED` or :data:`JOBS`.
        cluster_domain: The cluster's DNS domain.
        env_secret: As for :func:`build_job`.
        payload_secret: As for :func:`build_job`.
        payload_files: As for :func:`build_job`.

    Returns:
        The Jobs as plain JSON data, the first one (rank 0's, or the Indexed Job) first.

    Raises:
        InvalidManifest: The settings make a Job the API server would refuse.
        ValueError: ``form`` is neither form.
    """
    if form not in (INDEXED, JOBS):
        raise ValueError(f"form {form!r} is not {INDEXED!r} or {JOBS!r}")
    nodes = record.spec.nodes
    name = gang_name(record.job_id, user, nodes)
    hosts = gang_hosts(name, settings.namespace, cluster_domain)
    job_names = gang_job_names(name, nodes, form)
    gang = {"form": form, "service": name, "jobs": ",".join(job_names), "nodes": str(nodes)}
    ranks: list[int | None] = [None] if form == INDEXED else list(range(nodes))
    jobs = []
    for rank, job_name_ in zip(ranks, job_names, strict=True):
        labels = _labels(record, settings, user) | ({NODE_RANK_LABEL: str(rank)} if rank is not None else {})
        annotations = dict(settings.annotations)
        if rank in (None, 0):
            annotations |= {**_job_annotations(record), GANG_ANNOTATION: json.dumps(gang, sort_keys=True)}
        command = launcher_command(record, settings, payload_url, hosts, rank)
        pod = _pod_spec(record, settings, payload_url, env_secret, payload_secret, payload_files, command=command,
                        ports=[{"name": RENDEZVOUS_PORT_NAME, "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}])
        pod = {**pod, "subdomain": name} | ({"hostname": job_name_} if rank is not None else {})
        count = nodes if rank is None else 1
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _metadata(job_name_, settings, labels, annotations),
            "spec": compact(
                {
                    "completionMode": "Indexed" if rank is None else None,
                    "completions": count,
                    "parallelism": count,
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": _deadline(record.spec.timeout),
                    "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
                    "template": {
                        "metadata": compact({"labels": labels, "annotations": dict(settings.annotations)}),
                        "spec": pod,
                    },
                }
            ),
        }
        ensure_valid(job)
        jobs.append(job)
    return jobs


def gang_job_names(name: str, nodes: int, form: str) -> list[str]:
    """The names of a gang's Jobs: ``[name]`` for an Indexed Job, else ``name-0`` ... ``name-<N-1>``."""
    return [name] if form == INDEXED else [f"{name}-{rank}" for rank in range(nodes)]


def launcher_command(
    record: JobRecord, settings: PodSettings, payload_url: str, hosts: str, node_rank: int | None = None
) -> list[str]:
    """The command of a gang's pod: the launcher, which runs the cell under torchrun (no ``--node-rank``: Indexed)."""
    spec = record.spec
    command = [
        settings.python, "-m", LAUNCHER_MODULE, payload_url,
        "--nodes", str(spec.nodes), "--procs", str(spec.procs_per_node), "--hosts", hosts,
        "--port", str(RENDEZVOUS_PORT), "--rendezvous-timeout", str(int(spec.rendezvous_timeout)),
    ]
    return command + (["--node-rank", str(node_rank)] if node_rank is not None else [])


def build_gang_service(
    record: JobRecord, settings: PodSettings, name: str, *, user: str, owner: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The headless Service that gives a gang's pods their DNS names, ready or not.

    ``clusterIP: None`` makes each selected pod with ``subdomain: <name>`` and a ``hostname`` resolvable
    as ``<hostname>.<name>.<namespace>.svc.<domain>``; ``publishNotReadyAddresses`` publishes them as
    soon as the pods have addresses (the pods have no readiness probe, and must find each other before
    the rendezvous). It selects the job's pods by ``jmk.io/job-id``.

    Args:
        record: The job.
        settings: The pods' settings (namespace, configured labels).
        name: The Service's name (:func:`gang_name`), which every pod's ``subdomain`` names.
        user: Who submits the job.
        owner: An ownerReference (the gang's first Job), so that the Service goes with it.

    Returns:
        A v1 Service as plain JSON data.
    """
    metadata = _metadata(name, settings, _labels(record, settings, user))
    if owner is not None:
        metadata["ownerReferences"] = [dict(owner)]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_ID_LABEL: record.job_id},
            "ports": [{"name": RENDEZVOUS_PORT_NAME, "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                       "protocol": "TCP"}],
        },
    }
    ensure_valid(service)
    return service


def indexed_job_probe(settings: PodSettings, *, per_index: bool = False) -> dict[str, Any]:
    """A tiny Indexed Job to create with ``dryRun=All``: where ``spec.completionMode`` comes back, Indexed Jobs work.

    Clusters before 1.21 (or with the IndexedJob feature gate off) drop the field they do not know
    without an error, so only the answer tells; nothing is stored by a dry run. With ``per_index``
    it also sets ``backoffLimitPerIndex`` (kept from 1.29 on, or 1.28 with its feature gate on), so
    the one answer tells both.
    """
    container = {"name": CONTAINER, "image": settings.image, "command": [settings.python, "-c", "pass"]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "jmk-indexed-job-probe", "namespace": settings.namespace,
                     "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "spec": {"completionMode": "Indexed", "completions": 1, "parallelism": 1,
                 **({"backoffLimitPerIndex": 0} if per_index else {"backoffLimit": 0}),
                 "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


# -- the shards of a batch prediction as one Indexed Job ---------------------------------------


def build_batch_job(
    record: JobRecord,
    settings: PodSettings,
    *,
    user: str,
    payload_url: str,
    shards: Sequence[int],
    per_index: bool,
    env_secret: str | None = None,
    payload_secret: str | None = None,
    payload_files: Collection[str] = (),
) -> dict[str, Any]:
    """The shards of one batch prediction still to run, as ONE Indexed Job (Kubernetes 1.22+).

    The Job is :func:`build_job`'s (the same pod, runner, labels, Secrets, deadline and TTL) with
    ``completionMode: Indexed`` and ``completions = parallelism = len(shards)``: the pod of index I
    runs shard ``shards[I]``, which it reads from ``$JOB_COMPLETION_INDEX`` (set by the Job
    controller) and :data:`BATCH_SHARDS_ENV` (``"1,3"``: the unfinished shards, in index order; the
    finished ones are left out of the Job). Retries:

    - ``per_index=True`` (the API server keeps ``backoffLimitPerIndex``: 1.29+ beta, 1.33 GA): each
      index is retried ``settings.retries`` times on its own, and one shard that keeps failing does
      not stop the others (the Job fails at the end, naming its failed indexes).
    - ``per_index=False``: ``backoffLimit`` is the Job's budget for all its pods,
      ``settings.retries`` per shard run (``retries * len(shards)``), as the same number of
      one-Job-per-shard Jobs would have together.

    Args:
        record: The job whose code runs each index's shard (see ``batch.service.indexed_shard_code``).
        settings: Each pod's settings.
        user: Who submits the job.
        payload_url: Where the runner finds the payload (the same for every pod).
        shards: The shard numbers to run, at least one, each once.
        per_index: Whether to retry each index on its own (``backoffLimitPerIndex``).
        env_secret: As for :func:`build_job`.
        payload_secret: As for :func:`build_job`.
        payload_files: As for :func:`build_job`.

    Returns:
        The Job as plain JSON data, without null or empty fields.

    Raises:
        InvalidManifest: The settings make a Job the API server would refuse.
        ValueError: No shard, a shard given twice, or a negative one.
    """
    if not shards or len(set(shards)) != len(shards) or min(shards) < 0:
        raise ValueError(f"shards {list(shards)!r}: give each shard to run once, at least one")
    env = {**settings.env, BATCH_SHARDS_ENV: ",".join(str(shard) for shard in shards)}
    job = build_job(record, replace(settings, env=env), user=user, payload_url=payload_url, env_secret=env_secret,
                    payload_secret=payload_secret, payload_files=payload_files)
    retries = settings.retries
    spec = {key: value for key, value in job["spec"].items() if key != "backoffLimit"}
    limits = {"backoffLimitPerIndex": retries} if per_index else {"backoffLimit": retries * len(shards)}
    job["spec"] = {"completionMode": "Indexed", "completions": len(shards), "parallelism": len(shards), **limits,
                   **spec}
    ensure_valid(job)
    return job


def shard_of_index(index: str | None, shards: str | None) -> int:
    """The shard an Indexed batch Job's pod runs: ``shards`` (:data:`BATCH_SHARDS_ENV`) at ``index``.

    Raises:
        ValueError: Either is missing or malformed, or the index is past the list (the pod was not
            started by :func:`build_batch_job`'s Job).
    """
    try:
        listed = [int(part) for part in (shards or "").split(",")]
        position = int(index or "")
    except ValueError:
        listed, position = [], -1
    if not 0 <= position < len(listed):
        raise ValueError(
            f"JOB_COMPLETION_INDEX={index!r} and {BATCH_SHARDS_ENV}={shards!r} name no shard: this pod is not "
            "one of a batch prediction's Indexed Job"
        )
    return listed[position]


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
