"""Endpoints on the cluster: deploy, wait until ready, undeploy, list; through the Kubernetes layer.

Every object is created or updated with :func:`jupyter_mlflow_k8s.k8s.apply` and deleted with
:func:`~jupyter_mlflow_k8s.k8s.delete_owned`: an object of the endpoint's name that this package did not
make (a Deployment, a Service, a Secret) is refused with a :class:`ConflictError` before anything changes,
and Kubernetes API errors reach the user as the error families, saying what to do. A second deploy of an
endpoint is a rolling update: only the Deployment's pod template (and its labels) is patched, so the
selector stays and the old pods keep serving until the new ones are ready. A monitored endpoint
(``spec.monitor``) also has a PodMonitor and a PrometheusRule (:mod:`.monitoring`), owned by its Deployment;
they are made only on a cluster that serves the prometheus-operator's kinds, else nothing is made at all.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...errors import JMKError, NotFoundError
from ...k8s import apply, delete_owned, ensure_owned, missing_kinds, read, translated
from ...k8s.pods import WAITING_FAILURES, PodSettings
from ..errors import EndpointNotFound
from .monitoring import MONITOR_KINDS, Monitoring, monitoring_manifests, owned_by
from .objects import command_flags, credential_environment, endpoint_manifests, rollout_patch
from .spec import (
    CONTAINER,
    CRASH_RESTARTS,
    MODEL_LABEL,
    MODEL_URI_ANNOTATION,
    MONITORING_ANNOTATION,
    SELECTOR,
    UNDEPLOY_WAIT_SECONDS,
    VERSION_LABEL,
    Endpoint,
    EndpointError,
    EndpointNotReady,
    EndpointSpec,
    endpoint_selector,
    env_secret_name,
    model_identity,
)

HPA = "HorizontalPodAutoscaler"
# After an undone rollout the old pods are normally still ready: this only bounds a check of that.
ROLLBACK_WAIT_SECONDS = 120.0


def _objects(name: str) -> list[tuple[str, str]]:
    """The (kind, name) of everything an endpoint may be, in the order it is taken down (monitoring aside)."""
    return [(HPA, name), ("Service", name), ("Deployment", name), ("Secret", env_secret_name(name))]


def _monitored(deployment: Mapping[str, Any] | None) -> bool:
    annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(MONITORING_ANNOTATION) == "true")


def _monitoring_objects(api: Any, name: str, namespace: str,
                        found: dict[tuple[str, str], dict[str, Any] | None]) -> dict[tuple[str, str], Any]:
    """The endpoint's PodMonitor and PrometheusRule as they are (checked to be ours), or None each.

    They are read only when its Deployment says it is monitored: a user without rights on them, or a
    cluster without their CRDs, is never asked otherwise.
    """
    if not _monitored(found[("Deployment", name)]):
        return dict.fromkeys(((kind, name) for kind in MONITOR_KINDS), None)
    return ensure_owned(api, [(kind, name) for kind in MONITOR_KINDS], namespace)


def resolve_alias(model_uri: str, tracking_uri: str | None) -> str:
    """``models:/NAME@ALIAS`` pinned to the version the alias names now; other URIs as they are.

    Every replica then serves the same version, whatever the alias later points to; deploying again
    follows the alias.

    Raises:
        EndpointError: The registry has no such model or alias.
    """
    from ...tracking.model_registry import resolve_alias as pin

    try:
        return pin(model_uri, tracking_uri)
    except JMKError as exc:
        name, _ = model_identity(model_uri)
        raise EndpointError(f"Cannot resolve {model_uri}: {exc} List the model's aliases with "
                            f"`jmk models {name}`, or give a version: models:/{name}/1.") from exc


def deploy(api: Any, spec: EndpointSpec, settings: PodSettings | None = None, *,
           credentials: Mapping[str, str] | None = None, pin_alias: bool = True,
           wait: float | None = None, monitoring: Monitoring | None = None) -> Endpoint:
    """Create an endpoint, or roll an existing one to ``spec`` (a new model version, flags or resources).

    Every manifest is built and checked, and every object of the endpoint's names that exists checked to
    be ours, before the first change. Then its Secret of credentials is created or replaced, the
    Deployment created or patched (:func:`rollout_patch`), the Service created or patched, and the
    autoscaler created, replaced, or deleted when no longer asked for; so are the PodMonitor and the
    PrometheusRule of a monitored endpoint (``spec.monitor``), owned by the Deployment. A monitored endpoint
    on a cluster without the prometheus-operator's CRDs is refused before anything is made.

    When waiting, a rollout of an endpoint that was serving and whose new pods do not come up (a model
    that cannot load fails at its first exit) is undone: the Deployment goes back to its old pod template,
    whose pods were kept (``max_unavailable`` 0), and the error says why the new pods failed and that the
    old version still serves.

    Args:
        api: An ``ApiClient`` of the official client (``KubernetesBackend.api``).
        spec: The endpoint. ``models:/NAME@ALIAS`` is pinned to the alias's version (``pin_alias``).
        settings: The pods' settings (:func:`endpoint_settings`); default ``PodSettings()``.
        credentials: Variables for the pods' Secret; default :func:`credential_environment`.
        pin_alias: Resolve an alias in the registry first (needs the tracking store here).
        wait: Seconds to wait for every replica to be available (:func:`wait_ready`); None: do not wait.
        monitoring: The labels and scrape interval of a monitored endpoint's objects; default ``Monitoring()``.

    Returns:
        The endpoint as the API answered (after waiting, when asked).

    Raises:
        EndpointError: A bad spec, an unknown alias, a cluster without autoscaling/v2, a monitored endpoint
            on a cluster without the prometheus-operator's CRDs, or (when waiting) pods that did not come up
            (:class:`EndpointNotReady`, after undoing the rollout).
        ConflictError: A Deployment, Service, autoscaler, Secret, PodMonitor or PrometheusRule of the
            endpoint's names exists that this package did not make.
        InvalidManifest: Settings the API server would refuse.
        JMKError: Another refusal of the Kubernetes API, in its family.
    """
    settings = settings or PodSettings()
    if pin_alias:
        spec = replace(spec, model_uri=resolve_alias(spec.model_uri, spec.tracking_uri))
    env = credential_environment() if credentials is None else dict(credentials)
    secret, deployment, service, *autoscaler = endpoint_manifests(spec, settings, env)
    hpa = autoscaler[0] if autoscaler else None
    monitors = monitoring_manifests(spec, settings, monitoring or Monitoring()) if spec.monitor else []

    namespace = settings.namespace
    if monitors:
        _check_monitoring_served(api, spec.name, namespace)
    found = ensure_owned(api, _objects(spec.name), namespace)
    previous = found[("Deployment", spec.name)]
    if monitors:  # replaced only if ours
        found |= ensure_owned(api, [(kind, spec.name) for kind in MONITOR_KINDS], namespace)
    else:
        found |= _monitoring_objects(api, spec.name, namespace, found)
    apply(api, secret)
    _, deployed = apply(api, deployment, patch=rollout_patch(deployment, keep_replicas=hpa is not None))
    apply(api, service, patch=[
        {"op": "add", "path": "/metadata/labels", "value": service["metadata"]["labels"]},
        {"op": "add", "path": "/spec/selector", "value": service["spec"]["selector"]},
        {"op": "add", "path": "/spec/ports", "value": service["spec"]["ports"]}])
    _apply_autoscaler(api, spec.name, namespace, hpa)
    for monitor in monitors:
        apply(api, owned_by(monitor, deployed))
    if not monitors:  # no longer asked for
        for kind in MONITOR_KINDS:
            if found[(kind, spec.name)] is not None:
                delete_owned(api, kind, spec.name, namespace)
    if wait is None:
        return _endpoint(_deployment(api, spec.name, namespace))
    try:
        return wait_ready(api, spec.name, namespace, timeout=wait)
    except EndpointNotReady as failed:
        if previous is None or not _endpoint(previous).ready:  # nothing served before: nothing to go back to
            raise
        raise _roll_back(api, previous, spec, failed, keep_replicas=hpa is not None) from failed


def _roll_back(api: Any, previous: Mapping[str, Any], spec: EndpointSpec, failed: EndpointNotReady, *,
               keep_replicas: bool) -> EndpointNotReady:
    """Put back the pod template the endpoint served with before a rollout whose new pods did not come up.

    The old pods were never taken down beyond ``max_unavailable`` (0 by default), so the Deployment goes
    back to them at once and the new pods are removed. The error says why the new version failed (each
    pod's problem, with its log's end) and what serves now.
    """
    meta = previous["metadata"]
    annotations = {key: value for key, value in (meta.get("annotations") or {}).items()
                   if not key.startswith("deployment.kubernetes.io/")}  # the controller's own bookkeeping
    restored = {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": meta.get("labels", {}),
                             "annotations": annotations},
                "spec": previous["spec"]}
    old_uri = annotations.get(MODEL_URI_ANNOTATION, "the previous version")
    where = f"Endpoint {meta['namespace']}/{meta['name']}"
    try:
        apply(api, restored, patch=rollout_patch(restored, keep_replicas=keep_replicas))
        _wait_available(api, meta["name"], meta["namespace"], timeout=ROLLBACK_WAIT_SECONDS)
    except JMKError as exc:
        return EndpointNotReady(f"{where}: the rollout to {spec.model_uri} failed, and going back to {old_uri} "
                                f"failed too ({exc}). Check it with `jmk serve list`, then deploy {old_uri} again.",
                                failed.problems)
    return EndpointNotReady(f"{where}: the new version {spec.model_uri} did not come up, so the rollout was undone: "
                            f"{old_uri} still serves. Fix what its pods say below, then deploy again.",
                            failed.problems)


def _check_monitoring_served(api: Any, name: str, namespace: str) -> None:
    """Refuse a monitored endpoint on a cluster whose API serves no PodMonitor or PrometheusRule (no CRDs)."""
    missing = missing_kinds(api, MONITOR_KINDS)
    if missing:
        raise EndpointError(
            f"Endpoint {namespace}/{name} asks for monitoring, but the cluster has no prometheus-operator CRDs "
            f"for {', '.join(missing)} (monitoring.coreos.com/v1); nothing was made. Install them (the "
            "prometheus-operator or kube-prometheus-stack does), or drop --monitor (and "
            "c.KubernetesBackend.endpoint_monitoring)."
        )


def _apply_autoscaler(api: Any, name: str, namespace: str, hpa: dict[str, Any] | None) -> None:
    try:
        if hpa is None:
            delete_owned(api, HPA, name, namespace)
        else:
            apply(api, hpa)
    except NotFoundError as exc:  # the API group itself is missing
        if hpa is not None:
            raise EndpointError("This cluster does not serve autoscaling/v2 (Kubernetes 1.23+): deploy without "
                                "autoscale, or scale with replicas=N.") from exc


def _deployment(api: Any, name: str, namespace: str) -> dict[str, Any]:
    found = read(api, "Deployment", name, namespace)
    if found is None:
        raise EndpointNotFound(name, namespace=namespace, hint=" List them with list_endpoints(api, namespace) "
                               "(or `jmk serve list`).")
    return found


def _endpoint(deployment: Mapping[str, Any]) -> Endpoint:
    meta, spec = deployment["metadata"], deployment.get("spec", {})
    status = deployment.get("status", {})
    labels, annotations = meta.get("labels", {}), meta.get("annotations", {})
    current = status.get("observedGeneration", 0) >= meta.get("generation", 0)
    containers = spec.get("template", {}).get("spec", {}).get("containers") or []
    command = next((c.get("command") or [] for c in containers if c.get("name") == CONTAINER), [])
    port, flags = command_flags(command)
    return Endpoint(
        name=meta["name"], namespace=meta["namespace"], model_uri=annotations.get(MODEL_URI_ANNOTATION, ""),
        model=labels.get(MODEL_LABEL, ""), version=labels.get(VERSION_LABEL, ""),
        replicas=int(spec.get("replicas", 1)), available=int(status.get("availableReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0) if current else 0,
        autoscaled=False, port=port, flags=flags, monitor=_monitored(deployment),
    )


def wait_ready(api: Any, name: str, namespace: str, *, timeout: float = 300.0, poll: float = 0.5) -> Endpoint:
    """Wait until every replica of the endpoint runs its current template and is available (ready).

    Gives up early when a pod crash-loops (:data:`CRASH_RESTARTS` restarts), its image cannot be
    pulled, or the rollout passes its progress deadline, saying why for each pod that is not ready:
    the scheduler's message, the exit code and last log lines, a failing readiness probe.

    Raises:
        EndpointNotFound: No such endpoint.
        EndpointNotReady: Not ready within ``timeout`` or failing for good; ``problems`` per pod.
    """
    deadline = time.monotonic() + timeout
    while True:
        deployment = _deployment(api, name, namespace)
        endpoint = _endpoint(deployment)
        total = int(deployment.get("status", {}).get("replicas") or 0)
        if endpoint.ready and total == endpoint.replicas:
            return endpoint
        pods = _pods(api, name, namespace)
        stuck = _progress_deadline_exceeded(deployment) or any(_failing(pod) for pod in pods)
        if stuck or time.monotonic() >= deadline:
            why = "is failing" if stuck else f"is not ready after {timeout:g} s"
            problems = [_pod_problem(api, pod) for pod in pods if not _pod_ready(pod)]
            raise EndpointNotReady(
                f"Endpoint {namespace}/{name} {why}: {endpoint.available} of {endpoint.replicas} replicas available, "
                f"{endpoint.updated} updated.", [p for p in problems if p] or ["no pod of it is failing yet"])
        time.sleep(poll)


def _wait_available(api: Any, name: str, namespace: str, *, timeout: float, poll: float = 0.5) -> Endpoint:
    """Wait until every replica runs the current template and is available, whatever pods of an older one do.

    Unlike :func:`wait_ready` this does not give up on a failing pod: after a rollout is undone, the failed
    new pods are still there, going away.
    """
    deadline = time.monotonic() + timeout
    while not (endpoint := _endpoint(_deployment(api, name, namespace))).ready:
        if time.monotonic() >= deadline:
            raise EndpointNotReady(f"Endpoint {namespace}/{name} is not ready after {timeout:g} s: "
                                   f"{endpoint.available} of {endpoint.replicas} replicas available, "
                                   f"{endpoint.updated} updated.")
        time.sleep(poll)
    return endpoint


def _pods(api: Any, name: str, namespace: str) -> list[dict[str, Any]]:
    import kubernetes

    selector = ",".join(f"{key}={value}" for key, value in endpoint_selector(name).items())
    with translated(f"list the pods of endpoint {namespace}/{name}"):
        listed = kubernetes.client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector,
                                                                        _preload_content=False)
    return list(json.loads(listed.data)["items"])


def _progress_deadline_exceeded(deployment: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
               for c in deployment.get("status", {}).get("conditions") or [])


def _container_status(pod: Mapping[str, Any]) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = pod.get("status", {}).get("containerStatuses") or []
    return dict(statuses[0]) if statuses else {}


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def _failing(pod: Mapping[str, Any]) -> bool:
    """A pod that will not come up by waiting: a bad image name or config, or a server that keeps exiting."""
    status = _container_status(pod)
    state = status.get("state", {})
    if state.get("waiting", {}).get("reason", "") in ("InvalidImageName", "CreateContainerConfigError"):
        return True
    terminated = state.get("terminated") or status.get("lastState", {}).get("terminated") or {}
    code = int(terminated.get("exitCode") or 0)
    return code == EXIT_CANNOT_LOAD or (code != 0 and int(status.get("restartCount") or 0) >= CRASH_RESTARTS)


# What the server's exit codes mean (see jupyter_mlflow_k8s/serving/__main__.py). A server that exits with
# EXIT_CANNOT_LOAD fails the same way at every restart (its model or flags are bad): no use waiting for more.
EXIT_CANNOT_LOAD = 2
_EXIT_CODES = {EXIT_CANNOT_LOAD: "bad arguments or a model URI that cannot be loaded", 3: "its port was already in use",
               4: "the tracking server did not answer; the pod retries"}


def _pod_problem(api: Any, pod: Mapping[str, Any]) -> str:
    """Why one pod is not ready, in the user's words."""
    name = pod["metadata"]["name"]
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"pod {name}: not scheduled: {condition.get('reason', '')}: {condition.get('message', '')}"
    status = _container_status(pod)
    state, last = status.get("state", {}), status.get("lastState", {})
    waiting = state.get("waiting", {})
    terminated = state.get("terminated") or last.get("terminated") or {}
    if waiting.get("reason") in WAITING_FAILURES:
        return f"pod {name}: {WAITING_FAILURES[waiting['reason']]}: {waiting.get('message', '')}".rstrip(": ")
    if terminated:
        code = terminated.get("exitCode")
        meaning = _EXIT_CODES.get(int(code or 0)) or str(terminated.get("reason") or "it stopped")
        if terminated.get("reason") == "OOMKilled":
            meaning = "it used more memory than its limit: ask for more memory"
        restarts = int(status.get("restartCount") or 0)
        said = str(terminated.get("message") or "").strip()  # the termination message, else the log's end
        tail = "\n".join(f"    {line}" for line in said.splitlines()[-15:]) if said else \
            _log_tail(api, pod, previous="terminated" not in state)
        return (f"pod {name}: the server exited with code {code} ({meaning}), restarted {restarts} times"
                + (f"; it said:\n{tail}" if tail else ""))
    if "running" in state:
        return (f"pod {name}: running, but /ping has not answered 200 yet: the model is still loading, or the "
                "server cannot load it (see its log)")
    return f"pod {name}: {waiting.get('reason') or pod.get('status', {}).get('phase', 'Pending')}"


def _log_tail(api: Any, pod: Mapping[str, Any], previous: bool, lines: int = 15) -> str:
    import kubernetes

    with contextlib.suppress(Exception):
        response = kubernetes.client.CoreV1Api(api).read_namespaced_pod_log(
            pod["metadata"]["name"], pod["metadata"]["namespace"], container=CONTAINER, tail_lines=lines,
            previous=previous, _preload_content=False)
        text: str = response.data.decode(errors="replace")
        return "\n".join(f"    {line}" for line in text.rstrip().splitlines())
    return ""


def undeploy(api: Any, name: str, namespace: str, *, wait: float | None = UNDEPLOY_WAIT_SECONDS) -> None:
    """Delete an endpoint: its PodMonitor, PrometheusRule, autoscaler, Service, Deployment (and pods), Secret.

    Args:
        api: An ``ApiClient`` of the official client.
        name: The endpoint's name.
        namespace: Its namespace.
        wait: Seconds to wait for its pods to be gone (their servers stopped); None: do not wait.

    Raises:
        EndpointNotFound: Neither its Deployment nor its Service is there.
        ConflictError: One of those objects exists and this package did not make it (nothing is deleted).
        EndpointError: Pods still there after ``wait``.
        JMKError: A refusal of the Kubernetes API, in its family.
    """
    found = ensure_owned(api, _objects(name), namespace)
    if found[("Service", name)] is None and found[("Deployment", name)] is None:
        raise EndpointNotFound(name, namespace=namespace, hint=" List them with list_endpoints(api, namespace) "
                               "(or `jmk serve list`).")
    found |= _monitoring_objects(api, name, namespace, found)
    for kind, object_name in [*((kind, name) for kind in MONITOR_KINDS), *_objects(name)]:
        if found[(kind, object_name)] is not None:
            delete_owned(api, kind, object_name, namespace)
    deadline = time.monotonic() + (wait or 0)
    while wait is not None and (left := _pods(api, name, namespace)):
        if time.monotonic() >= deadline:
            raise EndpointError(f"Endpoint {namespace}/{name} is deleted but {len(left)} of its pods are still "
                                f"stopping after {wait:g} s; they go when their servers exit.")
        time.sleep(0.2)


def list_endpoints(api: Any, namespace: str) -> list[Endpoint]:
    """The namespace's endpoints (Deployments labelled as ours), by name."""
    import kubernetes

    with translated(f"list the endpoints of namespace {namespace!r}"):
        listed = json.loads(kubernetes.client.AppsV1Api(api).list_namespaced_deployment(
            namespace, label_selector=SELECTOR, _preload_content=False).data)
    autoscaled: set[str] = set()
    with contextlib.suppress(kubernetes.client.ApiException):  # no autoscaling/v2 on this cluster
        hpas = kubernetes.client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler(
            namespace, label_selector=SELECTOR, _preload_content=False)
        autoscaled = {item["metadata"]["name"] for item in json.loads(hpas.data)["items"]}
    endpoints = [_endpoint(item) for item in listed["items"]]
    return sorted((replace(e, autoscaled=e.name in autoscaled) for e in endpoints), key=lambda e: e.name)
