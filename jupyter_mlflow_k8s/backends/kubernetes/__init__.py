"""The Kubernetes backend: each ``%%train`` job is a batch/v1 Job running the shared runner.

Submission: ``check`` validates everything it can without the API (preset, image, secrets, volumes),
then asks the API whether the namespace exists and the user may create Jobs there
(SelfSubjectAccessReview), and warns when no node can hold the GPUs asked for. ``launch`` creates a
per-job Secret with the credentials the pod needs (storage, tracking; never in the Job's manifest,
never logged), the Job, and makes the Job the Secret's owner so that both go together. A
distributed job (``--nodes N``) is a gang: the same Secrets, a headless Service, and one Indexed Job
or one Job per rank (whichever the cluster supports, asked once per namespace with a dry run); when
one rank fails, every Job of the gang is deleted at once, so that no rank waits for it forever.

This module is the orchestration, and it makes every request the backend sends (the list in
docs/kubernetes-rbac.yaml is read from it): configuration, namespace and pod settings come from
:mod:`jupyter_mlflow_k8s.k8s`; the Job and its Secrets are built in :mod:`.manifests`; the watch of
Jobs and pods and the log pump live in :mod:`.watch`; what a Job's state means, in :mod:`.diagnosis`.
A Job is created once, under a name unique to its job, so it is never replaced; API errors leave as
the error families.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, Int, List, TraitError, Unicode, default, validate

from ...exceptions import JMKError, JMKUsageError
from ...k8s import (
    CREDENTIAL_VARIABLES,
    MANAGED_BY,
    PAYLOAD_MOUNT,
    WAITING_FAILURES,
    PodSettings,
    api_client,
    api_error,
    label_value,
    layered_settings,
    parse_secret,
    raw_request,
    resolve_namespace,
    translated,
)
from ...k8s.validation import check_prometheus_duration
from ...lifecycle import end_job
from ...logchannel import PAYLOAD_ROOT_ENV
from ...models import JobRecord, JobSpec, JobState
from ...payload import Payload
from ...storage import get_storage, read_url
from ...util.identity import current_user
from ..base import Backend
from .diagnosis import EVENT_WAIT_SECONDS, Verdict, batch_failure, batch_running, diagnose
from .gang import (
    diagnose_gang,
    failed_pods,
    failure_message,
    first_error_time,
    first_failed_rank,
    gang_jobs,
    rank_lines,
    started_pods,
    status_key,
)
from .manifests import (
    CONTAINER,
    GANG_ANNOTATION,
    INDEXED,
    JOB_ID_LABEL,
    JOBS,
    RECORD_ANNOTATION,
    USER_LABEL,
    build_batch_job,
    build_env_secret,
    build_gang,
    build_gang_service,
    build_job,
    build_payload_secret,
    gang_name,
    indexed_job_probe,
    job_name,
)
from .watch import DELETED_PODS_KEPT, ClusterWatch, LogPump, result_storage

SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
# The namespace and permissions are reviewed again after this long (not at every submission).
ACCESS_CHECK_SECONDS = 300.0
# What the backend does in a job's namespace, checked with SelfSubjectAccessReviews before submitting.
NEEDED_ACCESS = (
    ("create", "batch", "jobs", ""), ("delete", "batch", "jobs", ""), ("watch", "batch", "jobs", ""),
    ("create", "", "secrets", ""), ("patch", "", "secrets", ""), ("watch", "", "pods", ""), ("get", "", "pods", "log"),
    ("create", "", "services", ""), ("delete", "", "services", ""),
)


__all__ = [
    "ACCESS_CHECK_SECONDS", "CONTAINER", "CREDENTIAL_VARIABLES", "DELETED_PODS_KEPT", "EVENT_WAIT_SECONDS",
    "NEEDED_ACCESS", "SELECTOR", "WAITING_FAILURES", "ClusterWatch", "JobFeatures", "KubernetesBackend", "LogPump",
    "Verdict",
    "diagnose", "gang_jobs", "payload_files", "rank_lines", "result_storage",
]


@dataclass(frozen=True)
class JobFeatures:
    """What a cluster's API server keeps of an Indexed Job: the form itself, and per-index retries."""

    indexed: bool
    per_index: bool


class KubernetesBackend(Backend):
    """Runs jobs as Kubernetes Jobs."""

    name = "kubernetes"

    namespace = Unicode(
        help="Namespace for jobs; default: the kubeconfig context's namespace (or the pod's own, in a "
        "cluster), else 'default'. Env: JMK_K8S_NAMESPACE. Example: c.KubernetesBackend.namespace = 'team-a'",
    ).tag(config=True)
    kubeconfig = Unicode(
        help="kubeconfig file; default: $KUBECONFIG or ~/.kube/config, or the pod's service account in a "
        "cluster. Example: c.KubernetesBackend.kubeconfig = '/home/jovyan/.kube/config'",
    ).tag(config=True)
    context = Unicode(
        help="kubeconfig context to use; default: the kubeconfig's current context. "
        "Example: c.KubernetesBackend.context = 'gpu-cluster'",
    ).tag(config=True)
    image = Unicode(
        help="Image jobs run in; default: the notebook's own image under JupyterHub (JUPYTER_IMAGE_SPEC), "
        "else jupyter-mlflow-k8s-runner:latest (docs/kubernetes.md builds it). "
        "Example: c.KubernetesBackend.image = 'registry.example.com/team/runner:2026.11'",
    ).tag(config=True)
    image_pull_policy = Unicode(
        None, allow_none=True,
        help="Always, IfNotPresent or Never. Example: c.KubernetesBackend.image_pull_policy = 'Always'",
    ).tag(config=True)
    python = Unicode(
        "python", help="Interpreter in the image. Example: c.KubernetesBackend.python = '/opt/conda/bin/python'",
    ).tag(config=True)
    gpu_resource = Unicode(
        "nvidia.com/gpu",
        help="Extended resource GPUs are requested as. Example: c.KubernetesBackend.gpu_resource = 'amd.com/gpu'",
    ).tag(config=True)
    node_selector = Dict(
        help="Node labels jobs must run on. "
        "Example: c.KubernetesBackend.node_selector = {'cloud.google.com/gke-accelerator': 'nvidia-a100-80gb'}",
    ).tag(config=True)
    tolerations: List[dict[str, Any]] = List(
        help="Pod tolerations; jobs asking for GPUs also tolerate the GPU resource's taint. Example: "
        "c.KubernetesBackend.tolerations = [{'key': 'dedicated', 'operator': 'Equal', 'value': 'ml', "
        "'effect': 'NoSchedule'}]",
    ).tag(config=True)
    affinity = Dict(
        help="Pod affinity, as in a pod spec. Example: c.KubernetesBackend.affinity = {'nodeAffinity': {...}}",
    ).tag(config=True)
    priority_class_name = Unicode(
        None, allow_none=True, help="Example: c.KubernetesBackend.priority_class_name = 'batch-low'",
    ).tag(config=True)
    service_account_name = Unicode(
        None, allow_none=True, help="Example: c.KubernetesBackend.service_account_name = 'trainer'",
    ).tag(config=True)
    image_pull_secrets = List(
        Unicode(), help="Example: c.KubernetesBackend.image_pull_secrets = ['regcred']",
    ).tag(config=True)
    runtime_class_name = Unicode(
        None, allow_none=True, help="Example: c.KubernetesBackend.runtime_class_name = 'nvidia'",
    ).tag(config=True)
    shm_size = Unicode(
        "1Gi", allow_none=True,
        help="Size of the memory-backed /dev/shm (PyTorch DataLoader workers); None: none. "
        "Example: c.KubernetesBackend.shm_size = '8Gi'",
    ).tag(config=True)
    ttl_seconds_after_finished = Int(
        86400, allow_none=True,
        help="Seconds a finished Job (and its pod's log) is kept. "
        "Example: c.KubernetesBackend.ttl_seconds_after_finished = 3600",
    ).tag(config=True)
    labels = Dict(
        help="Extra labels on Jobs and pods. Example: c.KubernetesBackend.labels = {'team': 'vision'}",
    ).tag(config=True)
    annotations = Dict(
        help="Extra annotations on Jobs. Example: c.KubernetesBackend.annotations = {'cost-center': '42'}",
    ).tag(config=True)
    env = Dict(
        help="Plain environment variables for every job. Example: c.KubernetesBackend.env = {'HF_HOME': '/data/hf'}",
    ).tag(config=True)
    secrets = List(
        Unicode(),
        help="Secrets every job gets as environment (envFrom). Example: c.KubernetesBackend.secrets = ['wandb']",
    ).tag(config=True)
    presets = Dict(
        help="Named pod settings for --preset. Example: c.KubernetesBackend.presets = {'a100': {'gpus': 1, "
        "'memory': '80Gi', 'node_selector': {'gpu': 'a100'}}}",
    ).tag(config=True)
    pods_share_filesystem = Bool(
        False, help="Pods see this machine's filesystem at the same paths (a shared home, or the test cluster), so "
        "file:// storage and a SQLite tracking store work. Example: c.KubernetesBackend.pods_share_filesystem = True",
    ).tag(config=True)
    api_patience_seconds = Float(
        300.0, help="A cell following a job stops waiting (the job keeps running) after the Kubernetes API has not "
        "answered for this long. Example: c.KubernetesBackend.api_patience_seconds = 900",
    ).tag(config=True)
    cluster_domain = Unicode(
        "cluster.local", help="The cluster's DNS domain, in the names a distributed job's pods find each other by. "
        "Example: c.KubernetesBackend.cluster_domain = 'cluster.example.internal'",
    ).tag(config=True)
    distributed_form = Unicode(
        "auto", help="How a distributed job (--nodes N) runs: 'indexed' (one Indexed Job, Kubernetes 1.22+), "
        "'jobs' (one Job per rank, any cluster), or 'auto' (indexed where the API server keeps an Indexed Job's "
        "completionMode, asked once per namespace). Example: c.KubernetesBackend.distributed_form = 'jobs'",
    ).tag(config=True)
    image_pull_failure_seconds = Float(
        30.0, help="A job whose image cannot be pulled for this long fails (the kubelet would retry forever). "
        "Example: c.KubernetesBackend.image_pull_failure_seconds = 120",
    ).tag(config=True)

    endpoint_monitoring = Bool(
        False, help="Every Kubernetes endpoint gets a PodMonitor and a PrometheusRule of the prometheus-operator "
        "(as with --monitor); the cluster must serve their CRDs. "
        "Example: c.KubernetesBackend.endpoint_monitoring = True",
    ).tag(config=True)
    monitoring_labels = Dict(
        value_trait=Unicode(), help="Extra labels on a monitored endpoint's PodMonitor and PrometheusRule, so that "
        "the operator's Prometheus picks them (its podMonitorSelector and ruleSelector). "
        "Example: c.KubernetesBackend.monitoring_labels = {'release': 'kube-prometheus-stack'}",
    ).tag(config=True)
    monitoring_interval = Unicode(
        "30s", help="How often Prometheus scrapes a monitored endpoint's pods (a Prometheus duration). "
        "Example: c.KubernetesBackend.monitoring_interval = '15s'",
    ).tag(config=True)

    @validate("monitoring_interval")
    def _check_monitoring_interval(self, proposal: Any) -> str:
        problems = check_prometheus_duration(proposal["value"], "c.KubernetesBackend.monitoring_interval")
        if problems:
            raise TraitError(problems[0])
        return str(proposal["value"])

    @default("namespace")
    def _default_namespace(self) -> str:
        return resolve_namespace(kubeconfig=self.kubeconfig, context=self.context)

    @default("image")
    def _default_image(self) -> str:
        notebook_image = os.environ.get("JUPYTER_IMAGE_SPEC") or os.environ.get("JUPYTER_IMAGE")
        return notebook_image or "jupyter-mlflow-k8s-runner:latest"

    def __init__(self, store: Any, **kwargs: object) -> None:
        super().__init__(store, **kwargs)
        self._api: Any = None
        self._lock = threading.Lock()
        self._pumps: dict[str, LogPump] = {}
        self._access_checked: dict[str, float] = {}  # namespace -> when its access was last reviewed
        # (namespace, per_index asked) -> what its API server keeps of an Indexed Job (distributed_form 'auto')
        self._features: dict[tuple[str, bool], JobFeatures] = {}
        # job id -> (what the pods were, when, the times their logs first showed an error): see error_times
        self._error_times: dict[str, tuple[Any, float, dict[int, float]]] = {}

    # -- the API ------------------------------------------------------------------------------

    @property
    def api(self) -> Any:
        """The official client's ``ApiClient`` (:func:`jupyter_mlflow_k8s.k8s.api_client` of the settings)."""
        with self._lock:
            if self._api is None:
                self._api = api_client(self.kubeconfig, self.context)
            return self._api

    def watch(self) -> ClusterWatch:
        """The shared watch of this backend's namespace (started on first use)."""
        return ClusterWatch.for_namespace(self.api, self.namespace, self.list_objects)

    def watch_of(self, record: JobRecord) -> ClusterWatch:
        """The shared watch of the namespace ``record``'s Job went to."""
        namespace = record.backend_ref.get("namespace") or self.namespace
        return ClusterWatch.for_namespace(self.api, namespace, self.list_objects)

    # -- the requests the watch and the log pump make (docs/kubernetes-rbac.yaml grants them) --

    def list_objects(self, kind: str, namespace: str, **options: Any) -> Any:
        """List (or with ``watch=True`` watch) our ``"jobs"`` or ``"pods"`` in ``namespace``: the raw response."""
        import kubernetes

        if kind == "jobs":
            return kubernetes.client.BatchV1Api(self.api).list_namespaced_job(
                namespace, label_selector=SELECTOR, _preload_content=False, **options)
        return kubernetes.client.CoreV1Api(self.api).list_namespaced_pod(
            namespace, label_selector=SELECTOR, _preload_content=False, **options)

    def read_pod_log(self, pod: str, namespace: str, **options: Any) -> Any:
        """A job pod's log: the raw, streaming response.

        ``options`` are the API's ``PodLogOptions`` in snake case (``follow``, ``timestamps``, ``tail_lines``,
        ``since_time`` ...). ``since_time`` (RFC 3339) is sent, though the generated client leaves it out:
        ``since_seconds`` counts back from when the kubelet gets the request, and one retried while the API
        server restarts gets there seconds after it was made.
        """
        query = [(_camel(key), str(value).lower() if isinstance(value, bool) else value)
                 for key, value in options.items() if value is not None]
        return raw_request(self.api, "GET", f"/api/v1/namespaces/{namespace}/pods/{pod}/log", query=query)

    # -- settings -----------------------------------------------------------------------------

    def configured_settings(self) -> PodSettings:
        """The pod settings the traits configure, before any preset or flag."""
        return PodSettings(
            namespace=self.namespace, image=self.image, image_pull_policy=self.image_pull_policy, python=self.python,
            gpu_resource=self.gpu_resource, node_selector=dict(self.node_selector), tolerations=tuple(self.tolerations),
            affinity=dict(self.affinity) or None, priority_class_name=self.priority_class_name,
            service_account_name=self.service_account_name, image_pull_secrets=tuple(self.image_pull_secrets),
            runtime_class_name=self.runtime_class_name, shm_size=self.shm_size,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished, labels=dict(self.labels),
            annotations=dict(self.annotations), env=dict(self.env),
            secrets=tuple(parse_secret(s) for s in self.secrets),
        )

    def pod_settings(self, spec: JobSpec) -> PodSettings:
        """Traits, then the preset, then the job's flags (:func:`~jupyter_mlflow_k8s.k8s.layered_settings`).

        Raises:
            JMKUsageError: A bad preset, image, Secret or volume.
        """
        return layered_settings(
            self.configured_settings(), self.presets, preset=spec.preset, image=spec.image,
            cpu=spec.resources.cpu, memory=spec.resources.memory, gpus=spec.resources.gpus, retries=spec.retries,
            secrets=spec.secrets, volumes=spec.volumes,
        )

    # -- hooks --------------------------------------------------------------------------------

    def check(self, spec: JobSpec) -> None:
        """Flags and configuration first (no API call), then namespace, permissions and GPU capacity."""
        if spec.distributed and spec.retries:
            raise JMKUsageError(
                f"--retries {spec.retries} cannot be used with --nodes/--procs on Kubernetes: the pods of a "
                "distributed job start, wait for each other and fail together, and one pod started again would "
                "wait for peers that have stopped. Leave out --retries and run the cell again if it fails (or "
                "checkpoint to storage and resume from there)."
            )
        if self.distributed_form not in ("auto", INDEXED, JOBS):
            raise JMKUsageError(
                f"c.KubernetesBackend.distributed_form = {self.distributed_form!r} is not one of 'auto', "
                f"'{INDEXED}', '{JOBS}'. Use 'auto' unless the cluster needs one form, e.g. 'jobs'."
            )
        if spec.batch_shards and spec.distributed:
            raise JMKUsageError(
                "A batch prediction's Indexed Job runs one pod per shard; it cannot also be a distributed job "
                "(--nodes/--procs). Leave those out."
            )
        if spec.batch_shards and self.distributed_form == JOBS:
            raise JMKUsageError(
                f"c.KubernetesBackend.distributed_form = '{JOBS}' runs no Indexed Job, and this job runs batch "
                f"shards {', '.join(map(str, spec.batch_shards))} as one. Run jmk batch-predict again (it runs one "
                f"Job per shard with that setting), or set distributed_form = 'auto'."
            )
        settings = self.pod_settings(spec)
        self.check_cluster(settings, nodes=spec.nodes)

    def check_environment(self, storage_url: str, tracking_uri: str) -> None:
        """Pods must be able to reach the tracking store (payloads without object storage go in a Secret)."""
        if self.pods_share_filesystem:
            return
        if tracking_uri.startswith(("sqlite:", "file:", "/")) or "://" not in tracking_uri:
            raise JMKUsageError(
                f"Kubernetes pods cannot record into {tracking_uri} on this machine. Set MLFLOW_TRACKING_URI to an "
                "MLflow server the cluster can reach (http://mlflow.example:5000), or set "
                "c.KubernetesBackend.pods_share_filesystem = True if pods mount this filesystem at the same paths."
            )

    def check_cluster(self, settings: PodSettings, nodes: int = 1) -> None:
        """Access to the namespace (reviewed every few minutes, not at each job); warn if the GPUs are not there."""
        last = self._access_checked.get(settings.namespace)
        if last is None or time.monotonic() - last > ACCESS_CHECK_SECONDS:
            self.check_access(settings)
            self._access_checked[settings.namespace] = time.monotonic()
        self.warn_about_gpus(settings, nodes)

    def check_access(self, settings: PodSettings) -> None:
        """The namespace exists and every verb jobs need is allowed there (SelfSubjectAccessReviews)."""
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.api)
        try:
            core.read_namespace(settings.namespace, _preload_content=False)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                raise JMKUsageError(
                    f"Namespace {settings.namespace!r} does not exist. Set c.KubernetesBackend.namespace (or "
                    "JMK_K8S_NAMESPACE) to one you may use."
                ) from exc
            if exc.status != 403:  # many users may not read namespaces; the access review below still tells
                raise api_error(exc, f"read namespace {settings.namespace!r}") from exc
        except Exception as exc:
            raise JMKUsageError(f"Cannot reach the Kubernetes API at {self.api.configuration.host}: {exc}") from exc
        authz = kubernetes.client.AuthorizationV1Api(self.api)
        for verb, group, resource, subresource in NEEDED_ACCESS:
            attributes = {"namespace": settings.namespace, "verb": verb, "group": group, "resource": resource,
                          "subresource": subresource}
            review = {"spec": {"resourceAttributes": attributes}}
            with translated(f"review your access to {resource} in namespace {settings.namespace!r}"):
                answer = json.loads(authz.create_self_subject_access_review(review, _preload_content=False).data)
            if not answer.get("status", {}).get("allowed"):
                what = f"{resource}/{subresource}" if subresource else resource
                raise JMKUsageError(
                    f"You may not {verb} {what} in namespace {settings.namespace!r}, which jobs need. Ask your "
                    "platform team for the Role in docs/kubernetes-rbac.yaml, or use another namespace."
                )

    def warn_about_gpus(self, settings: PodSettings, nodes: int = 1) -> None:
        """Warn (before submitting) when no node can hold a pod's GPUs, or the nodes cannot hold all ``nodes`` pods.

        Only a warning: the cluster may grow (an autoscaler adds nodes for pods that wait).
        """
        if not settings.gpus:
            return
        counts = self.gpus_per_node(settings.gpu_resource)
        if counts is None:
            return
        most, resource = max(counts, default=0), settings.gpu_resource
        if most < settings.gpus:
            print(f"[jmk] warning: No node of the cluster has {settings.gpus} {resource} (the most "
                  f"on one node: {most}). The job will stay Pending unless the cluster grows.", file=sys.stderr)
            return
        room = sum(count // settings.gpus for count in counts)
        if room < nodes:
            having = sum(1 for count in counts if count >= settings.gpus)
            print(f"[jmk] warning: --nodes {nodes} asks for {nodes} pods with {settings.gpus} {resource} each; only "
                  f"{having} node{'s' if having != 1 else ''} of the cluster {'have' if having != 1 else 'has'} that "
                  f"many, room for {room} such pod{'s' if room != 1 else ''} at once: the job will wait in Pending "
                  "until the cluster grows.", file=sys.stderr)

    def most_gpus_on_a_node(self, resource: str) -> int | None:
        """The largest allocatable count of ``resource`` on any node; None when nodes cannot be listed."""
        counts = self.gpus_per_node(resource)
        return None if counts is None else max(counts, default=0)

    def gpus_per_node(self, resource: str) -> list[int] | None:
        """The allocatable count of ``resource`` on each node; None when nodes cannot be listed."""
        import kubernetes

        try:
            nodes = json.loads(kubernetes.client.CoreV1Api(self.api).list_node(_preload_content=False).data)["items"]
        except kubernetes.client.ApiException:
            return None
        return [int(n.get("status", {}).get("allocatable", {}).get(resource, "0")) for n in nodes]

    def pod_events(self, pod: str) -> list[dict[str, Any]]:
        """The events about pod ``pod`` (namespace of this backend's jobs); empty when they cannot be read."""
        import kubernetes

        try:
            listed = kubernetes.client.CoreV1Api(self.api).list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.name={pod}", _preload_content=False, _request_timeout=10
            )
            return list(json.loads(listed.data)["items"])
        except Exception:
            return []

    def launch(self, record: JobRecord) -> JobRecord:
        """Create the job's Secrets and Job (a gang: its Service and every Job); the (first) Job owns the rest."""
        import kubernetes

        settings = self.pod_settings(record.spec)
        user = current_user()
        distributed = record.spec.distributed
        name = gang_name(record.job_id, user, record.spec.nodes) if distributed else job_name(record.job_id, user)
        env = {k: v for k, v in os.environ.items() if k in CREDENTIAL_VARIABLES}
        env.update(self.job_environment)
        core, batch = kubernetes.client.CoreV1Api(self.api), kubernetes.client.BatchV1Api(self.api)
        secrets = [build_env_secret(record, settings, f"{name}-env", env, user=user)]
        job_args: dict[str, Any] = {"payload_url": str(record.payload_uri), "env_secret": f"{name}-env"}
        if self.payload_in_secret(record):
            files = payload_files(record)
            secrets.append(build_payload_secret(record, settings, f"{name}-payload", files, user=user))
            payload_path = f"{PAYLOAD_MOUNT}/jobs/{record.job_id}/payload.json"
            job_args.update(payload_url=payload_path, payload_secret=f"{name}-payload", payload_files=list(files))
            settings = replace(settings, env={**settings.env, PAYLOAD_ROOT_ENV: PAYLOAD_MOUNT})
        form = self.gang_form(settings) if distributed else ""
        shards = record.spec.batch_shards
        per_index = bool(shards) and self.job_features(settings, per_index=True).per_index
        if distributed:
            manifests = build_gang(record, settings, user=user, form=form, cluster_domain=self.cluster_domain,
                                   **job_args)
        elif shards:
            manifests = [build_batch_job(record, settings, user=user, shards=shards, per_index=per_index, **job_args)]
        else:
            manifests = [build_job(record, settings, user=user, **job_args)]
        first = manifests[0]["metadata"]["name"]
        created_secrets: list[str] = []
        try:
            with translated(f"create Job {settings.namespace}/{first} and its Secrets"):
                for secret in secrets:
                    core.create_namespaced_secret(settings.namespace, secret)
                    created_secrets.append(secret["metadata"]["name"])
                created = json.loads(
                    batch.create_namespaced_job(settings.namespace, manifests[0], _preload_content=False).data)
        except Exception:
            for secret_name in created_secrets:
                with contextlib.suppress(Exception):
                    core.delete_namespaced_secret(secret_name, settings.namespace)
            raise
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": first, "uid": created["metadata"]["uid"],
                 "blockOwnerDeletion": False}
        with translated(f"make Job {settings.namespace}/{first} the owner of its Secrets"):
            for secret_name in created_secrets:
                core.patch_namespaced_secret(secret_name, settings.namespace,
                                             {"metadata": {"ownerReferences": [owner]}})
        backend_ref = {"namespace": settings.namespace, "name": first, "uid": created["metadata"]["uid"]}
        message = f"submitted Job {settings.namespace}/{first}"
        if distributed:
            self.create_gang(record, settings, user, name, manifests[1:], owner)
            backend_ref |= {"form": form, "service": name, "nodes": str(record.spec.nodes),
                            "jobs": ",".join(m["metadata"]["name"] for m in manifests)}
            what = "an Indexed Job" if form == INDEXED else f"{len(manifests)} Jobs"
            message = (f"submitted {record.spec.nodes} pods as {what} ({settings.namespace}/{first}"
                       f"{' ...' if len(manifests) > 1 else ''}) with Service {name}")
        elif shards:  # no "form" here: that key means a gang (refresh_gang)
            backend_ref |= {"batch": INDEXED, "per_index": "true" if per_index else "false",
                            "shards": ",".join(map(str, shards))}
            message = f"submitted shard(s) {backend_ref['shards']} as one Indexed Job {settings.namespace}/{first}"
            if created.get("spec", {}).get("completionMode") != "Indexed":
                message += (" (the API server dropped its completionMode: its pods get no completion index and "
                            "will fail; c.KubernetesBackend.distributed_form = 'auto' runs one Job per shard)")
        log_path = str(self.store.job_dir(record.job_id) / "output.log")
        Path(log_path).touch()
        self.watch()  # start watching now: the first events come while the cell sets up its view
        return self.store.update(record.job_id, log_path=log_path, backend_ref=backend_ref, message=message)

    def create_gang(self, record: JobRecord, settings: PodSettings, user: str, service: str,
                    rest: list[dict[str, Any]], owner: dict[str, Any]) -> None:
        """Create a gang's headless Service and its other Jobs, all owned by its first Job (already created).

        If one cannot be created, the first Job is deleted (and with it whatever it owns): a gang missing
        a rank would wait for it until its rendezvous times out.
        """
        import kubernetes

        core, batch = kubernetes.client.CoreV1Api(self.api), kubernetes.client.BatchV1Api(self.api)
        namespace = settings.namespace
        try:
            with translated(f"create Service {namespace}/{service} for the pods of job {record.job_id}"):
                core.create_namespaced_service(
                    namespace, build_gang_service(record, settings, service, user=user, owner=owner))
            for job in rest:
                owned = {**job, "metadata": {**job["metadata"], "ownerReferences": [owner]}}
                with translated(f"create Job {namespace}/{job['metadata']['name']}"):
                    batch.create_namespaced_job(namespace, owned, _preload_content=False)
        except Exception:
            with contextlib.suppress(Exception):
                batch.delete_namespaced_job(owner["name"], namespace, propagation_policy="Background")
            raise

    def gang_form(self, settings: PodSettings) -> str:
        """The form of a gang on this cluster: ``distributed_form``, or (``auto``) what the API server supports."""
        if self.distributed_form != "auto":
            return str(self.distributed_form)
        return INDEXED if self.job_features(settings).indexed else JOBS

    def batch_form(self, spec: JobSpec) -> tuple[str, bool]:
        """How the shards of one batch prediction run here: (form, whether each index is retried on its own).

        The same choice as a gang's (``distributed_form``; ``auto`` asks the API server once per
        namespace): :data:`INDEXED`, one Indexed Job for all the shards to run
        (:func:`~.manifests.build_batch_job`), with ``backoffLimitPerIndex`` where the server keeps it;
        else :data:`JOBS`, one Job per shard, which works on any cluster.
        """
        if self.distributed_form == JOBS:
            return JOBS, False
        features = self.job_features(self.pod_settings(spec), per_index=True)
        indexed = features.indexed or self.distributed_form == INDEXED
        return (INDEXED, features.per_index) if indexed else (JOBS, False)

    def job_features(self, settings: PodSettings, *, per_index: bool = False) -> JobFeatures:
        """What the API server keeps of an Indexed Job (:meth:`probe_job_features`), asked once per namespace."""
        key = (settings.namespace, per_index)
        features = self._features.get(key)
        if features is None:
            features = self._features[key] = self.probe_job_features(settings, per_index=per_index)
        return features

    def probe_indexed_jobs(self, settings: PodSettings) -> str:
        """``indexed`` when the API server keeps an Indexed Job's ``completionMode``, else ``jobs`` (asked now)."""
        return INDEXED if self.probe_job_features(settings).indexed else JOBS

    def probe_job_features(self, settings: PodSettings, *, per_index: bool = False) -> JobFeatures:
        """Whether the API server keeps ``completionMode: Indexed`` (and ``backoffLimitPerIndex``): a dry run.

        Before 1.21, or with the IndexedJob feature gate off, the server drops the field without an
        error (and ``backoffLimitPerIndex`` before 1.29, or 1.28 without its gate), so the version number
        alone does not tell. Any refusal means neither: one Job per rank or shard, which works anywhere.
        """
        import kubernetes

        try:
            answer = kubernetes.client.BatchV1Api(self.api).create_namespaced_job(
                settings.namespace, indexed_job_probe(settings, per_index=per_index), dry_run="All",
                _preload_content=False)
            spec = json.loads(answer.data).get("spec", {})
        except Exception as exc:
            self.log.warning("cannot tell whether the cluster has Indexed Jobs (%s); one Job per rank it is", exc)
            return JobFeatures(indexed=False, per_index=False)
        indexed = spec.get("completionMode") == "Indexed"
        return JobFeatures(indexed=indexed, per_index=indexed and per_index and "backoffLimitPerIndex" in spec)

    def discover(self) -> list[JobRecord]:
        """Rebuild the records of this user's Jobs in the namespace from their ``jmk.io/record`` annotation."""
        watch = self.watch()
        user = label_value(current_user())
        with watch.lock:
            jobs = list(watch.jobs.values())
        found = []
        for job in jobs:
            meta = job["metadata"]
            labels, annotations = meta.get("labels", {}), meta.get("annotations", {})
            job_id = labels.get(JOB_ID_LABEL, "")
            if labels.get(USER_LABEL) != user or not job_id or RECORD_ANNOTATION not in annotations:
                continue
            folder = self.store.job_dir(job_id)
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # known here already
            record = JobRecord.from_dict(json.loads(annotations[RECORD_ANNOTATION]))
            record.log_path, record.watcher_pid = str(folder / "output.log"), None
            record.backend_ref = {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}
            if GANG_ANNOTATION in annotations:  # the first Job of a gang: its Service and the other ranks' Jobs
                record.backend_ref |= {k: str(v) for k, v in json.loads(annotations[GANG_ANNOTATION]).items()}
            if record.spec.batch_shards:  # a batch prediction's Indexed Job
                record.backend_ref |= {"batch": INDEXED, "shards": ",".join(map(str, record.spec.batch_shards))}
            record.message = f"found on the cluster: Job {meta['namespace']}/{meta['name']}"
            Path(record.log_path).touch()
            self.store.save(record)
            found.append(record)
        return found

    def payload_in_secret(self, record: JobRecord) -> bool:
        """Whether the job's payload must travel in a Secret (local storage pods cannot see)."""
        return str(record.payload_uri).startswith("file:") and not self.pods_share_filesystem

    def cancel(self, record: JobRecord) -> None:
        """Delete the Job (a gang: every Job and its Service) and the pods (SIGTERM, then SIGKILL)."""
        if record.backend_ref:
            self.delete_job(record)
        self.stop_pump(record.job_id)
        self.save_log(record)
        end_job(self.store, record.job_id, JobState.CANCELLED, "cancelled: the Job and its pods were deleted")

    def refresh(self, record: JobRecord) -> JobRecord:
        """The record, reconciled with the Job and its pods as the watch last saw them."""
        if record.state.terminal or not record.backend_ref:
            return record
        try:
            watch = self.watch_of(record)
        except Exception as exc:  # no cluster configured or reachable here: the record stays as it was
            self.log.warning("cannot look at job %s on the cluster: %s", record.job_id, exc)
            return record
        if record.backend_ref.get("form"):
            return self.refresh_gang(record, watch)
        job = watch.job(record.backend_ref["name"])
        pods = watch.pods(record.backend_ref["name"], with_deleted=True)
        if job is None:
            if not watch.synced or time.time() - record.created < 5:
                return record
            return self.gone(record)
        verdict = diagnose(job, pods, self.image_pull_failure_seconds)
        if verdict.needs_events:
            verdict = diagnose(job, pods, self.image_pull_failure_seconds, self.pod_events(verdict.needs_events))
        shards = record.spec.batch_shards
        if shards:  # a batch prediction's Indexed Job: its failure names the shards; it runs while any pod does
            failure = batch_failure(job, shards)
            if failure and verdict.state is JobState.FAILED:
                verdict.message = f"{failure}; {verdict.message}"
            elif not verdict.state.terminal:
                verdict = batch_running(pods, shards, self.image_pull_failure_seconds) or verdict
        if verdict.state.terminal:
            if verdict.state is not JobState.SUCCEEDED:
                tail = self.save_log(record)
                message = verdict.message + (f"\nLast lines of the log:\n{tail}" if tail and verdict.with_log else "")
            else:
                self.save_log(record)
                message = verdict.message
            if verdict.delete:
                self.delete_job(record)
            return end_job(self.store, record.job_id, verdict.state, message, verdict.exit_code)
        return self.update_waiting(record, verdict)

    def update_waiting(self, record: JobRecord, verdict: Verdict) -> JobRecord:
        """Record that a job runs, or why it waits (with the cluster's GPU capacity, said once)."""
        gpus = f"Insufficient {self.gpu_resource}"
        if gpus in verdict.message and gpus in record.message:
            verdict.message = record.message  # already said, with the cluster's capacity
        elif gpus in verdict.message:
            most = self.most_gpus_on_a_node(self.gpu_resource)
            if most is not None:
                verdict.message += f" The cluster's nodes have at most {most} {self.gpu_resource} each."
        changes: dict[str, Any] = {}
        if verdict.state is JobState.RUNNING and record.state is JobState.QUEUED:
            # A pod's start time is in whole seconds, rounded down: never before the job was created.
            changes.update(state=JobState.RUNNING, started=max(verdict.started or time.time(), record.created))
        if verdict.message != record.message:
            changes["message"] = verdict.message
        return self.store.update(record.job_id, **changes) if changes else record

    def refresh_gang(self, record: JobRecord, watch: ClusterWatch) -> JobRecord:
        """A distributed job's record, reconciled with its Jobs and every rank's pod.

        When one rank fails, its log lines are kept first (its pod may go with the Jobs), then every
        Job of the gang is deleted at once: the other ranks would otherwise wait for it until the
        rendezvous or a collective times out.
        """
        names = gang_jobs(record)
        jobs = [job for name in names if (job := watch.job(name)) is not None]
        if len(jobs) < len(names):
            if not watch.synced or time.time() - record.created < 5:
                return record
            self.delete_job(record)  # a rank's Job was deleted: the others cannot go on without it
            return self.gone(record)
        spec = record.spec
        pods = watch.job_pods(record.job_id, with_deleted=True)

        error_times = self.error_times(record, started_pods(pods)) if failed_pods(pods) else {}

        def judge(events: list[dict[str, Any]] | None = None) -> Any:
            return diagnose_gang(jobs, pods, nodes=spec.nodes, procs=spec.procs_per_node,
                                 pull_grace=self.image_pull_failure_seconds, events=events,
                                 failed_first=first_failed_rank(record), error_times=error_times)

        verdict = judge()
        if verdict.needs_events:
            verdict = judge(self.pod_events(verdict.needs_events))
        if not verdict.state.terminal:
            return self.update_waiting(record, verdict)
        tail = self.save_log(record)
        if verdict.delete:
            self.delete_job(record)
        return end_job(self.store, record.job_id, verdict.state, failure_message(record, verdict, tail),
                       verdict.exit_code)

    def error_times(self, record: JobRecord, pods: dict[int, Any]) -> dict[int, float]:
        """When each pod's log first showed an error (its own lines, with the kubelet's timestamps), by rank.

        Asked once a rank has failed (at most once a second per job), to tell the cause from its
        consequences; a log that cannot be read (the pod is gone) leaves that rank out.
        """
        key = (record.job_id, tuple(sorted((rank, status_key(pod)) for rank, pod in pods.items())))
        cached = self._error_times.get(record.job_id)
        if cached is not None and cached[0] == key and time.monotonic() - cached[1] < 1.0:
            return cached[2]
        times = {}
        for rank, pod in pods.items():
            try:
                response = self.read_pod_log(pod["metadata"]["name"], record.backend_ref["namespace"],
                                             container=CONTAINER, timestamps=True, tail_lines=2000,
                                             _request_timeout=5)
                log = response.data.decode(errors="replace")
            except Exception:  # noqa: S112 (the others still tell; the pod's end time stands in)
                continue
            found = first_error_time(log)
            if found is not None:
                times[rank] = found
        self._error_times[record.job_id] = (key, time.monotonic(), times)
        return times

    def gone(self, record: JobRecord) -> JobRecord:
        """The Job is not on the cluster any more: deleted, or cleaned up after it ended (its TTL)."""
        self.save_log(record)
        try:
            document = json.loads(read_url(str(record.result_uri))) if record.result_uri else None
        except (OSError, ValueError):
            document = None
        if document is not None:  # it ran to its end: the runner wrote its result
            state = JobState.SUCCEEDED if document.get("ok") else JobState.FAILED
            return end_job(self.store, record.job_id, state, "ended (its Job has since been removed from the cluster)")
        return end_job(self.store, record.job_id, JobState.CANCELLED,
                       "the Job is gone from the cluster (deleted outside this notebook, or removed after it ended)")

    def delete_job(self, record: JobRecord) -> None:
        """Delete the Job (a gang: each of its Jobs, then its Service); pods go with them (propagation Background)."""
        import kubernetes

        namespace = record.backend_ref["namespace"]
        for name in gang_jobs(record):
            with contextlib.suppress(kubernetes.client.ApiException):
                kubernetes.client.BatchV1Api(self.api).delete_namespaced_job(
                    name, namespace, propagation_policy="Background")
        service = record.backend_ref.get("service")
        if service:
            with contextlib.suppress(kubernetes.client.ApiException):
                kubernetes.client.CoreV1Api(self.api).delete_namespaced_service(service, namespace,
                                                                                _preload_content=False)

    # -- logs ---------------------------------------------------------------------------------

    def follow_log(self, job_id: str, offset: int = 0, poll: float = 0.02) -> Iterator[bytes | JobRecord]:
        """Stream the pod log into the job's log file while following it like a local one."""
        record = self.store.load(job_id)
        if not record.state.terminal and record.backend_ref:
            self.start_pump(record)
        try:
            for item in super().follow_log(job_id, offset, poll):
                yield item
                if not item and record.backend_ref:
                    self.check_contact(record)
        finally:
            self.stop_pump(job_id)

    def check_contact(self, record: JobRecord) -> None:
        """Give up following (not the job) when the API has not answered for ``api_patience_seconds``."""
        watch = self.watch_of(record)
        if watch.failing_since is not None and time.time() - watch.failing_since > self.api_patience_seconds:
            raise JMKError(
                f"No answer from the Kubernetes API for {time.time() - watch.failing_since:.0f} s "
                f"({watch.last_error}). Job {record.job_id} may still be running: %job attach {record.job_id} "
                "once the cluster answers again."
            )

    def start_pump(self, record: JobRecord) -> LogPump:
        """Start copying the job's pod log into its log file (once per job)."""
        with self._lock:
            pump = self._pumps.get(record.job_id)
            if pump is None or not pump.thread.is_alive():
                pump = LogPump(self, record)
                self._pumps[record.job_id] = pump
                pump.thread.start()
            return pump

    def stop_pump(self, job_id: str) -> None:
        """Stop copying a job's pod log."""
        with self._lock:
            pump = self._pumps.pop(job_id, None)
        if pump is not None:
            pump.stop()

    def save_log(self, record: JobRecord) -> str:
        """Complete the local log from the API (pods finished or gone); returns its last lines."""
        if not record.backend_ref or not record.log_path:
            return ""
        pump = self._pumps.get(record.job_id)
        if pump is not None:
            pump.finish()
        else:
            LogPump(self, record).catch_up()
        try:
            lines = Path(record.log_path).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-20:])


def payload_files(record: JobRecord) -> dict[str, bytes]:
    """The payload document and its input values, by storage key, for a payload Secret."""
    document = read_url(str(record.payload_uri))
    payload = Payload.from_json(document)
    storage = get_storage(payload.storage_url)
    files = {f"jobs/{record.job_id}/payload.json": document}
    for entry in payload.inputs:
        files[entry.key] = storage.get_bytes(entry.key)
    return files


def _camel(name: str) -> str:
    """A snake-case option as the API's query parameter: ``tail_lines`` -> ``tailLines``."""
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)
