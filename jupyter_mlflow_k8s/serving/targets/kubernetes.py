"""The ``kubernetes`` endpoint target: endpoints as a Deployment and a Service (``serving/kubernetes.py``).

The namespace, the API client and the pods' settings are the Kubernetes backend's (``c.KubernetesBackend``:
``namespace``, else ``JMK_K8S_NAMESPACE``, the kubeconfig context's or the pod's own). Endpoints are found
by our labels. Every API call runs under a deadline, so a listing with the API server down says so within
seconds instead of hanging. Requests and scrapes go through the API server's proxy (they work from outside
the cluster) and, where the proxy refuses (no ``services/proxy`` right, a pod on the host network), straight
to the pods' addresses.
"""

from __future__ import annotations

import builtins
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from ...config import JMKSettings, load_settings
from ...errors import JMKError, UnavailableError, translate
from ...k8s.client import cluster_configured, raw_request
from .. import kubernetes as k8s
from ..errors import EndpointNotFound
from ..manager import PREDICT_TIMEOUT_SECONDS, ServingError, answer_error, answer_of, default_name, invoke, request_body
from ..options import endpoint_spec_fields, server_arguments
from .base import EndpointSummary, EndpointTarget

T = TypeVar("T")
API_TIMEOUT_SECONDS = 5.0
DEPLOY_WAIT_SECONDS = 300.0


def call_within(seconds: float, what: str, call: Callable[[], T]) -> T:
    """``call()`` in a daemon thread, given up after ``seconds``; Kubernetes and network errors as our families.

    A call stuck on an unreachable API server is left behind (its thread ends with its socket), never waited for.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="jmk-k8s-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise UnavailableError(f"The Kubernetes API did not answer {what} within {seconds:g} s; check the cluster "
                               "(kubectl get --raw /readyz) and your kubeconfig.")
    if "error" in box:
        raise as_family(box["error"]) from box["error"]
    return box["value"]  # type: ignore[no-any-return]


def as_family(exc: BaseException) -> BaseException:
    """Our family error for ``exc`` (a kubeconfig that cannot be read is ``UnavailableError``), else ``exc``."""
    if type(exc).__name__ == "ConfigException":
        return UnavailableError(f"Kubernetes is not configured here ({exc}). Set c.KubernetesBackend.kubeconfig or "
                                "KUBECONFIG, or run in a pod with a service account.")
    return translate(exc) or exc


def summary(endpoint: k8s.Endpoint) -> EndpointSummary:
    """A Deployment of ours as listings show it."""
    if endpoint.replicas == 0:
        status = "stopped"
    elif endpoint.ready:
        status = "running"
    else:
        status = "updating" if endpoint.available else "starting"
    return EndpointSummary(name=endpoint.name, backend="kubernetes", status=status, url=endpoint.url,
                           model_uri=endpoint.model_uri, namespace=endpoint.namespace,
                           replicas=f"{endpoint.available}/{endpoint.replicas}",
                           flags={**endpoint.flags, **({"monitor": True} if endpoint.monitor else {})},
                           identity=("kubernetes", endpoint.namespace, endpoint.name), source=endpoint)


class KubernetesTarget(EndpointTarget):
    """Endpoints in the Kubernetes backend's namespace; ``jobs`` shares an existing backend (and its client)."""

    name = "kubernetes"

    def __init__(self, settings: JMKSettings | None = None, config: Any = None, jobs: Any = None,
                 timeout: float = API_TIMEOUT_SECONDS) -> None:
        self.settings = settings or load_settings(config)
        self.config = config
        self._jobs = jobs
        self.timeout = timeout

    @property
    def backend(self) -> Any:
        """The Kubernetes backend (namespace, pod settings, API client)."""
        if self._jobs is None:
            from ...jobs import JobService

            self._jobs = JobService(self.settings, backend_config=self.config)
        return self._jobs.backend("kubernetes")

    @property
    def namespace(self) -> str:
        """Where endpoints go and are looked for."""
        return str(self.backend.namespace)

    @property
    def configured(self) -> bool:
        """A kubeconfig (the trait, ``KUBECONFIG``, ``~/.kube/config``) or a pod's service account is there."""
        return cluster_configured(self.backend.kubeconfig or None)

    def _call(self, what: str, call: Callable[[Any], T], seconds: float | None = None) -> T:
        try:
            return call_within(self.timeout if seconds is None else seconds, what, lambda: call(self.backend.api))
        except UnavailableError as exc:  # said in the words a listing of every target uses for a target down
            if "unreachable" in str(exc):
                raise
            raise UnavailableError(f"The Kubernetes API is unreachable: {exc}") from exc

    # -- deploy, list, stop ----------------------------------------------------------------------

    def deploy(self, model_uri: str, name: str | None = None, port: int | None = None,
               wait: float | None = DEPLOY_WAIT_SECONDS, monitor: bool = False, **flags: Any) -> k8s.Endpoint:
        """A Deployment and a Service (``serving.kubernetes.deploy``); waits ``wait`` s for the replicas.

        The server flags become the ``EndpointSpec``'s (options.py); pods get the backend's settings.
        ``monitor`` (or ``c.KubernetesBackend.endpoint_monitoring``) adds a PodMonitor and a PrometheusRule,
        labelled with ``monitoring_labels``, scraping every ``monitoring_interval``.
        """
        server_arguments(flags)  # every flag checked before anything is sent
        fields = endpoint_spec_fields(flags, name or default_name(model_uri), port)
        backend = self.backend
        spec = k8s.EndpointSpec(model_uri=model_uri, tracking_uri=self.settings.tracking_uri,
                                monitor=bool(monitor or backend.endpoint_monitoring), **fields)
        monitoring = k8s.Monitoring(labels=dict(backend.monitoring_labels), interval=backend.monitoring_interval)
        try:
            return k8s.deploy(backend.api, spec, k8s.endpoint_settings(backend), wait=wait, monitoring=monitoring)
        except JMKError:
            raise
        except Exception as exc:
            raise as_family(exc) from exc

    def list(self) -> list[EndpointSummary]:
        """Our Deployments in the namespace, by name."""
        namespace = self.namespace
        found = self._call(f"listing endpoints in namespace {namespace!r}",
                           lambda api: k8s.list_endpoints(api, namespace))
        return [summary(endpoint) for endpoint in found]

    def get(self, name: str) -> EndpointSummary:
        """The endpoint ``name`` in the namespace; ``NotFoundError`` naming the ones there are."""
        endpoints = self.list()
        for endpoint in endpoints:
            if endpoint.name == name:
                return endpoint
        raise EndpointNotFound(name, [e.name for e in endpoints], namespace=self.namespace,
                               hint=" `jmk serve list --backend kubernetes` lists them.")

    def stop(self, name: str) -> EndpointSummary:
        """Delete the endpoint (autoscaler, Service, Deployment, Secret) and wait for its pods to go."""
        found = self.get(name)
        self._call(f"deleting endpoint {name!r}", lambda api: k8s.undeploy(api, name, self.namespace),
                   seconds=self.timeout + k8s.UNDEPLOY_WAIT_SECONDS)
        found.status = "stopped"
        return found

    # -- requests and metrics ---------------------------------------------------------------------

    def ready_pods(self, name: str) -> builtins.list[tuple[str, str, int]]:
        """``(pod name, pod IP, container port)`` of the endpoint's ready pods."""
        namespace = self.namespace
        selector = ",".join(f"{key}={value}" for key, value in k8s.endpoint_selector(name).items())

        def pods(api: Any) -> builtins.list[dict[str, Any]]:
            import kubernetes

            listed = kubernetes.client.CoreV1Api(api).list_namespaced_pod(
                namespace, label_selector=selector, _preload_content=False, _request_timeout=self.timeout)
            return list(json.loads(listed.data)["items"])

        ready = []
        for pod in self._call(f"listing the pods of endpoint {name!r}", pods):
            conditions = pod.get("status", {}).get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                continue
            ports = [p for c in pod["spec"]["containers"] for p in c.get("ports") or []]
            port = next((int(p["containerPort"]) for p in ports if p.get("name") == "http"), k8s.DEFAULT_PORT)
            ready.append((pod["metadata"]["name"], str(pod["status"].get("podIP") or ""), port))
        return ready

    def predict(self, name: str, data: Any, content_type: str | None = None) -> Any:
        """POST through the API server's proxy to the Service, else straight to a ready pod."""
        found = self.get(name)
        if not found.running:
            raise ServingError(f"Endpoint {name!r} in namespace {found.namespace!r} is {found.status} "
                               f"({found.replicas} replicas available); wait for it, or see `kubectl describe "
                               f"deployment {name}`.")
        label = f"Endpoint {name!r} (namespace {found.namespace})"
        body, content_type = request_body(data, content_type)
        proxied = self._through_proxy(f"services/{name}:http", "POST", "invocations", body, content_type,
                                      PREDICT_TIMEOUT_SECONDS)
        if proxied is not None:
            status, answer = proxied
            if status == 200:
                return answer_of(answer)
            raise answer_error(label, status, answer)
        pods = [pod for pod in self.ready_pods(name) if pod[1]]
        if not pods:
            raise ServingError(f"{label} has no ready pod to answer.")
        _, ip, port = pods[0]
        return invoke(f"http://{ip}:{port}", label, body, content_type,
                      hint="`jmk serve list --backend kubernetes` shows whether it is ready.")

    def metrics_text(self, name: str, timeout: float = 2.0) -> str:
        """Every ready pod's ``/metrics`` (the API server's pod proxy, else the pod's address), one after the other.

        Pods are read one by one, not through the Service: the Service would answer from a random
        pod each time, and counters would seem to go back and forth.
        """
        texts = []
        for pod, ip, port in self.ready_pods(name):
            proxied = self._through_proxy(f"pods/{pod}:{port}", "GET", "metrics", None, None, timeout)
            if proxied is not None and proxied[0] == 200:
                texts.append(proxied[1].decode("utf-8", errors="replace"))
                continue
            if not ip:
                continue
            try:
                with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=timeout) as response:
                    texts.append(response.read().decode("utf-8", errors="replace"))
            except (urllib.error.URLError, OSError) as exc:
                raise ServingError(f"Could not read the metrics of pod {pod} (http://{ip}:{port}/metrics): "
                                   f"{exc}") from None
        if not texts:
            raise ServingError(f"Endpoint {name!r} has no ready pod to read metrics from.")
        return "\n".join(texts)

    def _through_proxy(self, resource: str, method: str, path: str, body: bytes | None, content_type: str | None,
                       timeout: float) -> tuple[int, bytes] | None:
        """``(status, body)`` of the server's answer through the API server's proxy.

        ``None`` when the proxy itself refused or failed (no right to proxy, an address it will not
        proxy to, no endpoints).
        """
        namespace = self.namespace

        def send(api: Any) -> tuple[int, bytes] | None:
            headers = {"Accept": "*/*", **({"Content-Type": content_type} if content_type else {})}
            payload: Any = None
            if body is not None:
                payload = json.loads(body) if content_type == "application/json" else body.decode()
            status, answer = _raw_request(api, method, f"/api/v1/namespaces/{namespace}/{resource}/proxy/{path}",
                                          headers, payload, timeout)
            if 200 <= status < 300 or not _api_server_status(answer):
                return status, answer
            return None

        try:
            return self._call(f"proxying to {resource}", send, seconds=timeout + 1)
        except UnavailableError:
            return None


def _raw_request(api: Any, method: str, path: str, headers: dict[str, str], body: Any,
                 timeout: float) -> tuple[int, bytes]:
    """One request to the API server with the client's credentials: ``(status, body)``, whatever the status."""
    import kubernetes

    try:
        response = raw_request(api, method, path, headers=headers, body=body, timeout=timeout)
    except kubernetes.client.ApiException as exc:
        return int(exc.status), exc.body.encode() if isinstance(exc.body, str) else bytes(exc.body or b"")
    return int(response.status), bytes(response.data or b"")


def _api_server_status(body: bytes) -> bool:
    """Whether an error body is the API server's own (a ``Status`` object), not the inference server's answer."""
    try:
        data = json.loads(body)
    except ValueError:
        return True  # the inference server answers JSON; anything else came from the proxy
    return isinstance(data, dict) and data.get("kind") == "Status"
