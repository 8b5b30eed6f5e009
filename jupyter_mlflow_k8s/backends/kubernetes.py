"""The Kubernetes backend: each ``%%train`` job is a batch/v1 Job running the shared runner.

Submission: ``check`` validates everything it can without the API (preset, image, secrets, volumes),
then asks the API whether the namespace exists and the user may create Jobs there
(SelfSubjectAccessReview), and warns when no node can hold the GPUs asked for. ``launch`` creates a
per-job Secret with the credentials the pod needs (storage, tracking; never in the Job's manifest,
never logged), the Job, and makes the Job the Secret's owner so that both go together.

Watching: one :class:`ClusterWatch` per namespace (a list, then a watch resumed from the last
resourceVersion, re-listed after 410 Gone, retried with back-off) keeps every job's Job and pods in
memory; ``refresh`` reads that cache, so following many jobs costs no request per job. A followed
job's pod log is streamed into the job's local log file and reconnected from the last timestamp,
skipping what was already written, so nothing is lost or doubled when the API server goes away.

Diagnosis: a pending job says why (the scheduler's message, image pull errors, missing Secrets);
a failed one says how, in the user's words (OOMKilled with the limit, deadline, retries, eviction,
the exit code with the last log lines).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from traitlets import Bool, Dict, Float, Int, List, Unicode, default

from ..exceptions import JMKError, JMKUsageError
from ..lifecycle import end_job
from ..logchannel import PAYLOAD_ROOT_ENV, FrameCollector
from ..models import JobRecord, JobSpec, JobState
from ..payload import Payload
from ..storage import get_storage, read_url
from ..util.identity import current_user
from .base import Backend, backends
from .kubernetes_manifests import (
    JOB_ID_LABEL,
    MANAGED_BY,
    PAYLOAD_MOUNT,
    RECORD_ANNOTATION,
    USER_LABEL,
    PodSettings,
    apply_preset,
    build_env_secret,
    build_job,
    build_payload_secret,
    check_image,
    job_name,
    label_value,
    parse_secret,
    parse_volume,
)

CONTAINER = "train"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
DELETED_PODS_KEPT = 500  # per namespace watch
# Variables of the notebook's environment that a pod needs to reach storage and tracking. They travel
# in the job's own Secret, never in the Job manifest.
CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_INSECURE_TLS",
)
# The namespace and permissions are reviewed again after this long (not at every submission).
ACCESS_CHECK_SECONDS = 300.0
# What the backend does in a job's namespace, checked with SelfSubjectAccessReviews before submitting.
NEEDED_ACCESS = (
    ("create", "batch", "jobs", ""), ("delete", "batch", "jobs", ""), ("watch", "batch", "jobs", ""),
    ("create", "", "secrets", ""), ("patch", "", "secrets", ""), ("watch", "", "pods", ""), ("get", "", "pods", "log"),
)
EVENT_WAIT_SECONDS = 3.0  # how long a pod deleted under a running job waits for the scheduler's Preempted event
WAITING_FAILURES = {
    "ImagePullBackOff": "the image could not be pulled",
    "ErrImagePull": "the image could not be pulled",
    "InvalidImageName": "the image name is invalid",
    "CreateContainerConfigError": "the container could not be configured",
    "CreateContainerError": "the container could not be created",
}


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
    image_pull_failure_seconds = Float(
        30.0, help="A job whose image cannot be pulled for this long fails (the kubelet would retry forever). "
        "Example: c.KubernetesBackend.image_pull_failure_seconds = 120",
    ).tag(config=True)

    @default("namespace")
    def _default_namespace(self) -> str:
        if os.environ.get("JMK_K8S_NAMESPACE"):
            return os.environ["JMK_K8S_NAMESPACE"]
        service_account = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        if self._in_cluster() and service_account.exists():
            return service_account.read_text().strip()
        try:
            import kubernetes

            _, context = kubernetes.config.list_kube_config_contexts(config_file=self._kubeconfig_path() or None)
            return str(context.get("context", {}).get("namespace") or "default")
        except Exception:
            return "default"

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

    # -- the API ------------------------------------------------------------------------------

    def _kubeconfig_path(self) -> str:
        return self.kubeconfig or os.environ.get("KUBECONFIG", "")

    def _in_cluster(self) -> bool:
        """In a pod with no kubeconfig: the pod's service account talks to the API."""
        no_kubeconfig = not self._kubeconfig_path() and not Path("~/.kube/config").expanduser().exists()
        return no_kubeconfig and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))

    @property
    def api(self) -> Any:
        """The official client's ``ApiClient`` (kubeconfig, else in-cluster)."""
        with self._lock:
            if self._api is None:
                import kubernetes

                if self._in_cluster():
                    configuration = kubernetes.client.Configuration()
                    kubernetes.config.load_incluster_config(client_configuration=configuration)
                    self._api = kubernetes.client.ApiClient(configuration)
                else:
                    self._api = kubernetes.config.new_client_from_config(config_file=self._kubeconfig_path() or None)
            return self._api

    def watch(self) -> ClusterWatch:
        """The shared watch of this backend's namespace (started on first use)."""
        return ClusterWatch.for_namespace(self.api, self.namespace)

    def watch_of(self, record: JobRecord) -> ClusterWatch:
        """The shared watch of the namespace ``record``'s Job went to."""
        return ClusterWatch.for_namespace(self.api, record.backend_ref.get("namespace") or self.namespace)

    # -- settings -----------------------------------------------------------------------------

    def pod_settings(self, spec: JobSpec) -> PodSettings:
        """Traits, then the preset, then the job's flags; raises JMKUsageError on bad values."""
        settings = PodSettings(
            namespace=self.namespace, image=self.image, image_pull_policy=self.image_pull_policy, python=self.python,
            gpu_resource=self.gpu_resource, node_selector=dict(self.node_selector), tolerations=tuple(self.tolerations),
            affinity=dict(self.affinity) or None, priority_class_name=self.priority_class_name,
            service_account_name=self.service_account_name, image_pull_secrets=tuple(self.image_pull_secrets),
            runtime_class_name=self.runtime_class_name, shm_size=self.shm_size,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished, labels=dict(self.labels),
            annotations=dict(self.annotations), env=dict(self.env),
            secrets=tuple(parse_secret(s) for s in self.secrets),
        )
        if spec.preset:
            settings = apply_preset(settings, spec.preset, self.presets)
        changes: dict[str, Any] = {"retries": spec.retries}
        if spec.image:
            changes["image"] = spec.image
        if spec.resources.cpu:
            changes["cpu"] = spec.resources.cpu
        if spec.resources.memory:
            changes["memory"] = spec.resources.memory
        if spec.resources.gpus:
            changes["gpus"] = spec.resources.gpus
        changes["secrets"] = (*settings.secrets, *(parse_secret(s) for s in spec.secrets))
        changes["volumes"] = (*settings.volumes, *(parse_volume(v) for v in spec.volumes))
        settings = replace(settings, **changes)
        check_image(settings.image)
        return settings

    # -- hooks --------------------------------------------------------------------------------

    def check(self, spec: JobSpec) -> None:
        """Flags and configuration first (no API call), then namespace, permissions and GPU capacity."""
        settings = self.pod_settings(spec)
        self.check_cluster(settings)

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

    def check_cluster(self, settings: PodSettings) -> None:
        """Access to the namespace (reviewed every few minutes, not at each job); warn if no node has the GPUs."""
        last = self._access_checked.get(settings.namespace)
        if last is None or time.monotonic() - last > ACCESS_CHECK_SECONDS:
            self.check_access(settings)
            self._access_checked[settings.namespace] = time.monotonic()
        self.warn_about_gpus(settings)

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
                raise
        except Exception as exc:
            raise JMKUsageError(f"Cannot reach the Kubernetes API at {self.api.configuration.host}: {exc}") from exc
        authz = kubernetes.client.AuthorizationV1Api(self.api)
        for verb, group, resource, subresource in NEEDED_ACCESS:
            attributes = {"namespace": settings.namespace, "verb": verb, "group": group, "resource": resource,
                          "subresource": subresource}
            review = {"spec": {"resourceAttributes": attributes}}
            answer = json.loads(authz.create_self_subject_access_review(review, _preload_content=False).data)
            if not answer.get("status", {}).get("allowed"):
                what = f"{resource}/{subresource}" if subresource else resource
                raise JMKUsageError(
                    f"You may not {verb} {what} in namespace {settings.namespace!r}, which jobs need. Ask your "
                    "platform team for the Role in docs/kubernetes-rbac.yaml, or use another namespace."
                )

    def warn_about_gpus(self, settings: PodSettings) -> None:
        """Warn (before submitting) when no node can hold the GPUs asked for."""
        if settings.gpus:
            most = self.most_gpus_on_a_node(settings.gpu_resource)
            if most is not None and most < settings.gpus:
                print(f"[jmk] warning: No node of the cluster has {settings.gpus} {settings.gpu_resource} (the most "
                      f"on one node: {most}). The job will stay Pending unless the cluster grows.", file=sys.stderr)

    def most_gpus_on_a_node(self, resource: str) -> int | None:
        """The largest allocatable count of ``resource`` on any node; None when nodes cannot be listed."""
        import kubernetes

        try:
            nodes = json.loads(kubernetes.client.CoreV1Api(self.api).list_node(_preload_content=False).data)["items"]
        except kubernetes.client.ApiException:
            return None
        return max((int(n.get("status", {}).get("allocatable", {}).get(resource, "0")) for n in nodes), default=0)

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
        """Create the job's Secret and Job; the Job owns the Secret."""
        import kubernetes

        settings = self.pod_settings(record.spec)
        user = current_user()
        name = job_name(record.job_id, user)
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
        manifest = build_job(record, settings, user=user, **job_args)
        created_secrets: list[str] = []
        try:
            for secret in secrets:
                core.create_namespaced_secret(settings.namespace, secret)
                created_secrets.append(secret["metadata"]["name"])
            created = json.loads(batch.create_namespaced_job(settings.namespace, manifest, _preload_content=False).data)
        except Exception:
            for secret_name in created_secrets:
                with contextlib.suppress(Exception):
                    core.delete_namespaced_secret(secret_name, settings.namespace)
            raise
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created["metadata"]["uid"],
                 "blockOwnerDeletion": False}
        for secret_name in created_secrets:
            core.patch_namespaced_secret(secret_name, settings.namespace, {"metadata": {"ownerReferences": [owner]}})
        log_path = str(self.store.job_dir(record.job_id) / "output.log")
        Path(log_path).touch()
        self.watch()  # start watching now: the first events come while the cell sets up its view
        return self.store.update(
            record.job_id, log_path=log_path,
            backend_ref={"namespace": settings.namespace, "name": name, "uid": created["metadata"]["uid"]},
            message=f"submitted Job {settings.namespace}/{name}",
        )

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
            record.message = f"found on the cluster: Job {meta['namespace']}/{meta['name']}"
            Path(record.log_path).touch()
            self.store.save(record)
            found.append(record)
        return found

    def payload_in_secret(self, record: JobRecord) -> bool:
        """Whether the job's payload must travel in a Secret (local storage pods cannot see)."""
        return str(record.payload_uri).startswith("file:") and not self.pods_share_filesystem

    def cancel(self, record: JobRecord) -> None:
        """Delete the Job and its pods (their processes get SIGTERM, then SIGKILL)."""
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
        job = watch.job(record.backend_ref["name"])
        pods = watch.pods(record.backend_ref["name"], with_deleted=True)
        if job is None:
            if not watch.synced or time.time() - record.created < 5:
                return record
            return self.gone(record)
        verdict = diagnose(job, pods, self.image_pull_failure_seconds)
        if verdict.needs_events:
            verdict = diagnose(job, pods, self.image_pull_failure_seconds, self.pod_events(verdict.needs_events))
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
        gpus = f"Insufficient {self.gpu_resource}"
        if gpus in verdict.message and gpus in record.message:
            verdict.message = record.message  # already said, with the cluster's capacity
        elif gpus in verdict.message:
            most = self.most_gpus_on_a_node(self.gpu_resource)
            if most is not None:
                verdict.message += f" The cluster's nodes have at most {most} {self.gpu_resource} each."
        changes: dict[str, Any] = {}
        if verdict.state is JobState.RUNNING and record.state is JobState.QUEUED:
            changes.update(state=JobState.RUNNING, started=verdict.started or time.time())
        if verdict.message != record.message:
            changes["message"] = verdict.message
        return self.store.update(record.job_id, **changes) if changes else record

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
        """Delete the Job; its pods go with it (propagation Background)."""
        import kubernetes

        with contextlib.suppress(kubernetes.client.ApiException):
            kubernetes.client.BatchV1Api(self.api).delete_namespaced_job(
                record.backend_ref["name"], record.backend_ref["namespace"], propagation_policy="Background")

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


def result_storage(record: JobRecord) -> Any:
    """The storage the job's results belong in (where ``result_uri`` points)."""
    suffix = f"jobs/{record.job_id}/result.json"
    return get_storage(str(record.result_uri)[: -len(suffix)].rstrip("/"))


class Verdict:
    """What a Job and its pods mean for the record."""

    def __init__(self, state: JobState, message: str, exit_code: int | None = None, started: float | None = None,
                 with_log: bool = False, delete: bool = False, needs_events: str = "") -> None:
        self.state, self.message, self.exit_code, self.started = state, message, exit_code, started
        self.with_log, self.delete = with_log, delete
        # The pod whose events would say more (a pod deleted under the job: preempted or evicted?)
        self.needs_events = needs_events


def _time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    import datetime as dt

    return dt.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()


def diagnose(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], pull_grace: float,
             events: Sequence[Mapping[str, Any]] | None = None) -> Verdict:
    """A Job's state in the user's words: why it waits, how it ended.

    ``pods`` may include pods already deleted (their last state). ``events`` are those of the last failed
    pod when a first verdict asked for them (``needs_events``): before Kubernetes 1.26 a pod that was
    preempted or evicted through the API has no condition saying so, only the scheduler's event or none.
    """
    status = job.get("status", {})
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")] or pods
    latest = max(live, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)
    resources = job["spec"]["template"]["spec"]["containers"][0].get("resources", {})
    if "Complete" in conditions:
        return Verdict(JobState.SUCCEEDED, "succeeded", 0)
    if "Failed" in conditions:
        return _failure(conditions["Failed"], pods, resources, events)
    # Before 1.26 a pod deleted under a running Job (preempted, evicted through the API, drained, deleted by
    # hand) is not counted as a failure: the Job controller starts the cell again in a new pod, whatever its
    # backoffLimit. Beyond --retries this ends the job, as 1.26+ does (it counts such pods as failed).
    lost = [p for p in pods
            if p["metadata"].get("deletionTimestamp") and p.get("status", {}).get("phase") != "Succeeded"]
    if lost and not job["metadata"].get("deletionTimestamp") and len(lost) > job["spec"].get("backoffLimit", 6):
        last = max(lost, key=lambda p: p["metadata"].get("creationTimestamp", ""))
        return _deleted_under_the_job(last, events, still_coming=True)
    if latest is None:
        return Verdict(JobState.QUEUED, "waiting for the Job controller to create the pod")
    phase = latest.get("status", {}).get("phase", "Pending")
    state = _container_state(latest)
    if phase == "Running" or "running" in state:
        return Verdict(JobState.RUNNING, f"running in pod {latest['metadata']['name']}",
                       started=_time(state.get("running", {}).get("startedAt")))
    if phase == "Failed" and latest.get("status", {}).get("reason") == "Evicted":
        why = latest["status"].get("message", "")
        return Verdict(JobState.QUEUED, f"pod evicted ({why}); the Job controller may retry")
    waiting = state.get("waiting", {})
    reason = waiting.get("reason", "")
    if reason in WAITING_FAILURES:
        since = _time(latest["metadata"].get("creationTimestamp")) or time.time()
        message = f"{WAITING_FAILURES[reason]}: {reason}: {waiting.get('message', '')}".rstrip(": ")
        if reason in ("ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError") and \
                time.time() - since >= pull_grace:
            return Verdict(JobState.FAILED, message, delete=True)
        return Verdict(JobState.QUEUED, message)
    for condition in latest.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return Verdict(JobState.QUEUED, f"Pending: {condition.get('reason', 'Unschedulable')}: "
                                            f"{condition.get('message', '')}".rstrip())
    if reason:
        return Verdict(JobState.QUEUED, f"Pending: {reason}")
    return Verdict(JobState.QUEUED, "Pending: waiting for a node")


def _failure(condition: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], resources: Mapping[str, Any],
             events: Sequence[Mapping[str, Any]] | None = None) -> Verdict:
    reason = condition.get("reason", "")
    failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]
    last = max(failed, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)
    terminated = _container_state(last).get("terminated", {}) if last is not None else {}
    if last is not None and last["status"].get("reason") == "Evicted":
        return Verdict(JobState.FAILED, f"evicted: {last['status'].get('message', 'the node ran short of resources')}")
    disruption = _disruption(last) if last is not None else None
    if disruption is not None:
        return Verdict(JobState.FAILED, disruption)
    if (last is not None and last["status"].get("reason") == "DeadlineExceeded") or reason == "DeadlineExceeded":
        return Verdict(JobState.FAILED, "deadline exceeded: the job ran longer than --timeout and was stopped",
                       with_log=True)
    if last is not None and last["metadata"].get("deletionTimestamp") and terminated.get("reason") != "OOMKilled":
        return _deleted_under_the_job(last, events)
    if terminated.get("reason") == "OOMKilled":
        limit = (resources.get("limits") or {}).get("memory", "its memory limit")
        return Verdict(JobState.FAILED, f"OOMKilled: the job used more than its memory limit ({limit}). Ask for more "
                                        "with --memory, or use less (smaller batches).", terminated.get("exitCode"))
    exit_code = terminated.get("exitCode")
    attempts = len(failed)
    prefix = f"failed after {attempts} attempts" if attempts > 1 else "failed"
    if exit_code is not None:
        return Verdict(JobState.FAILED, f"{prefix}: the cell's process exited with code {exit_code}", exit_code,
                       with_log=True)
    return Verdict(JobState.FAILED, f"{prefix}: {reason}: {condition.get('message', '')}".rstrip(": "), with_log=True)


def _deleted_under_the_job(pod: Mapping[str, Any], events: Sequence[Mapping[str, Any]] | None,
                           still_coming: bool = False) -> Verdict:
    """A job's pod deleted by someone else than the job: preempted (the scheduler's event says so) or stopped.

    ``still_coming``: the Job has not failed yet, so its controller may still be at work (its deadline
    deletes pods before the Job's Failed condition) and the scheduler records ``Preempted`` just after
    the delete: for ``EVENT_WAIT_SECONDS`` after the deletion was asked, a pod without that event waits.
    """
    name = pod["metadata"]["name"]
    running = JobState.RUNNING if still_coming else JobState.FAILED
    if events is None:
        return Verdict(running, f"pod {name} is being deleted", needs_events=name)
    preempted = next((e for e in events if e.get("reason") == "Preempted"), None)
    if preempted is not None:
        return Verdict(JobState.FAILED, "preempted: the scheduler stopped it for a higher-priority pod "
                                        f"({preempted.get('message', '')})", delete=still_coming)
    meta = pod["metadata"]
    asked = (_time(meta.get("deletionTimestamp")) or 0) - (meta.get("deletionGracePeriodSeconds") or 0)
    if still_coming and 0 <= time.time() - asked < EVENT_WAIT_SECONDS:
        return Verdict(JobState.RUNNING, f"pod {name} is being deleted")
    terminated = _container_state(pod).get("terminated", {})
    return Verdict(JobState.FAILED, f"stopped: pod {name} was deleted while the job ran (evicted through the "
                                    "Eviction API, drained from its node, or deleted by hand); resubmit the cell",
                   terminated.get("exitCode"), with_log=True, delete=still_coming)


def _disruption(pod: Mapping[str, Any]) -> str | None:
    """Why Kubernetes stopped a pod that was fine (1.26+: the DisruptionTarget condition), in words."""
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            reason = condition.get("reason", "")
            if reason == "PreemptionByScheduler":
                return f"preempted: the scheduler stopped it for a higher-priority pod ({condition.get('message', '')})"
            return f"disrupted: {reason}: {condition.get('message', '')}".rstrip(": ")
    return None


class ClusterWatch:
    """Every job's Job and pods in one namespace, kept current by two watches (not a poll per job)."""

    _instances: ClassVar[dict[tuple[str, str], ClusterWatch]] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def for_namespace(cls, api: Any, namespace: str) -> ClusterWatch:
        """The process's watch of ``namespace`` on ``api``'s cluster, listed once before it returns."""
        key = (api.configuration.host, namespace)
        with cls._instances_lock:
            watch = cls._instances.get(key)
            if watch is None or not watch.alive:
                watch = cls(api, namespace)
                cls._instances[key] = watch
                watch.start()
        watch.wait_synced(10)
        return watch

    @classmethod
    def stop_all(cls) -> None:
        """Stop every watch of this process (a kernel shutting down, a test ending)."""
        with cls._instances_lock:
            for watch in cls._instances.values():
                watch.stop()
            cls._instances.clear()

    def __init__(self, api: Any, namespace: str) -> None:
        import kubernetes

        self.api, self.namespace = api, namespace
        self.core, self.batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pod_objects: dict[str, dict[str, Any]] = {}
        # The last state of pods deleted while we watched (how a preempted or evicted pod ended), newest last.
        self.deleted_pods: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.requests = 0  # API requests made, for benchmarks
        self.failing_since: float | None = None  # when the API stopped answering (None: it answers)
        self.last_error = ""
        self._synced = {"jobs": threading.Event(), "pods": threading.Event()}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    @property
    def synced(self) -> bool:
        """Whether both lists have come back at least once."""
        return all(e.is_set() for e in self._synced.values())

    @property
    def alive(self) -> bool:
        """Whether the watch threads still run."""
        return not self._stop.is_set() and all(t.is_alive() for t in self._threads)

    def wait_synced(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the first lists."""
        deadline = time.monotonic() + timeout
        for event in self._synced.values():
            event.wait(max(0.0, deadline - time.monotonic()))

    def start(self) -> None:
        """Start watching Jobs and pods."""
        for kind in ("jobs", "pods"):
            thread = threading.Thread(target=self._run, args=(kind,), daemon=True, name=f"jmk-k8s-watch-{kind}")
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Stop after the current watch request ends."""
        self._stop.set()

    def job(self, name: str) -> dict[str, Any] | None:
        """The Job named ``name`` as last seen (None: not there)."""
        with self.lock:
            return self.jobs.get(name)

    def pods(self, job: str, with_deleted: bool = False) -> list[dict[str, Any]]:
        """The pods of Job ``job`` as last seen; ``with_deleted``: also those deleted since (their last state)."""
        with self.lock:
            found = list(self.pod_objects.values()) + (list(self.deleted_pods.values()) if with_deleted else [])
            return [p for p in found if p["metadata"].get("labels", {}).get("job-name") == job]

    def _list(self, kind: str, **kwargs: Any) -> Any:
        self.requests += 1
        if kind == "jobs":
            return self.batch.list_namespaced_job(self.namespace, label_selector=SELECTOR, _preload_content=False,
                                                  **kwargs)
        return self.core.list_namespaced_pod(self.namespace, label_selector=SELECTOR, _preload_content=False, **kwargs)

    def _store(self, kind: str) -> dict[str, dict[str, Any]]:
        return self.jobs if kind == "jobs" else self.pod_objects

    def _run(self, kind: str) -> None:
        """List, then watch from the list's resourceVersion; relist after 410 Gone; back off on errors."""
        from kubernetes.watch.watch import iter_resp_lines

        backoff = 0.2
        while not self._stop.is_set():
            try:
                listed = json.loads(self._list(kind).data)
                with self.lock:
                    self._store(kind).clear()
                    for obj in listed["items"]:
                        self._store(kind)[obj["metadata"]["name"]] = obj
                self._synced[kind].set()
                self.failing_since, self.last_error = None, ""
                version = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    response = self._list(kind, watch=True, resource_version=version, timeout_seconds=60,
                                          allow_watch_bookmarks=True)
                    gone = False
                    for line in iter_resp_lines(response):
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":  # 410 Gone (too old a version), or another error
                            gone = True
                            break
                        version = obj["metadata"].get("resourceVersion", version)
                        if event["type"] == "BOOKMARK":
                            continue
                        with self.lock:
                            if event["type"] == "DELETED":
                                self._store(kind).pop(obj["metadata"]["name"], None)
                                if kind == "pods":
                                    self.deleted_pods[obj["metadata"]["name"]] = obj
                                    while len(self.deleted_pods) > DELETED_PODS_KEPT:
                                        self.deleted_pods.popitem(last=False)
                            else:
                                self._store(kind)[obj["metadata"]["name"]] = obj
                    response.release_conn()
                    backoff = 0.2
                    if gone:
                        break
            except Exception as exc:
                self.failing_since = self.failing_since or time.time()
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 10.0)


class LogPump:
    """Copies a job's pod logs into its local log file, reconnecting without losing or doubling lines."""

    def __init__(self, backend: KubernetesBackend, record: JobRecord) -> None:
        self.backend, self.record = backend, record
        self.path = Path(str(record.log_path))
        self.state_path = self.path.with_suffix(".pump.json")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"jmk-k8s-log-{record.job_id}")
        try:
            self.position: dict[str, str] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            self.position = {}  # pod name -> last timestamp written
        self.frames = FrameCollector(result_storage(record), self.path.parent / "frames") if record.result_uri else None

    def stop(self) -> None:
        """Stop following (closing a stream in progress)."""
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
        self.thread.join(timeout=5)

    def finish(self) -> None:
        """Stop following and fetch whatever the pods still have."""
        self.stop()
        self.catch_up()

    def catch_up(self) -> None:
        """Append every pod's log lines that are not in the file yet (no follow)."""
        for pod in self._pods():
            with contextlib.suppress(Exception):
                self._copy(pod, follow=False)

    def _pods(self) -> list[dict[str, Any]]:
        pods = self.backend.watch_of(self.record).pods(self.record.backend_ref["name"])
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            started = [p for p in self._pods() if _container_started(p)]
            live = [p for p in started if not _container_done(p) or p["metadata"]["name"] not in self.position]
            if not live:
                self._stop.wait(0.1)
                continue
            try:
                self._copy(live[0], follow=True)
                backoff = 0.2
                self._stop.wait(0.05)  # the stream ended: the pod finished, or the connection dropped
            except Exception:
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 5.0)

    def _copy(self, pod: dict[str, Any], follow: bool) -> None:
        """Stream one pod's log from the last timestamp written; write each new line once."""
        from kubernetes.watch.watch import iter_resp_lines

        name = pod["metadata"]["name"]
        last = self.position.get(name, "")
        kwargs: dict[str, Any] = {"container": CONTAINER, "follow": follow, "timestamps": True}
        if last:  # the client has no sinceTime: ask from a second before, skip what was written
            kwargs["since_seconds"] = max(1, int(time.time() - (_time(last) or time.time())) + 2)
        watch = self.backend.watch_of(self.record)
        watch.requests += 1
        response = watch.core.read_namespaced_pod_log(
            name, self.record.backend_ref["namespace"], _preload_content=False, **kwargs)
        self._response = response
        header = name not in self.position and len(self._pods()) > 1
        try:
            with self.path.open("ab") as out:
                if header:
                    out.write(f"[jmk] pod {name}\n".encode())
                self.position.setdefault(name, "")
                for line in iter_resp_lines(response):
                    stamp, _, text = line.partition(" ")
                    if stamp <= last:
                        continue  # already written before a reconnect
                    if self.frames is None or not self.frames.feed(text):
                        out.write(text.encode() + b"\n")
                    out.flush()
                    last = self.position[name] = stamp
        finally:
            self._response = None
            response.release_conn()
            with contextlib.suppress(OSError):
                self.state_path.write_text(json.dumps(self.position))


def _container_state(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The ``state`` of the pod's (only) container: ``{"running": ...}``, ``{"waiting": ...}``, ..."""
    statuses: list[dict[str, Any]] = pod.get("status", {}).get("containerStatuses") or []
    return dict(statuses[0].get("state", {})) if statuses else {}


def _container_started(pod: Mapping[str, Any]) -> bool:
    state = _container_state(pod)
    return "running" in state or "terminated" in state


def _container_done(pod: Mapping[str, Any]) -> bool:
    return "terminated" in _container_state(pod)


backends.register("kubernetes", KubernetesBackend)
