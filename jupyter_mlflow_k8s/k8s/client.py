"""The one place Kubernetes configuration is loaded: an ``ApiClient`` from a kubeconfig (and context) or in-cluster.

Nothing else in the package calls ``kubernetes.config``. Which configuration wins: an explicit
kubeconfig path (a setting such as ``c.KubernetesBackend.kubeconfig``), else ``$KUBECONFIG``, else
``~/.kube/config``; with none of those inside a pod (``KUBERNETES_SERVICE_HOST`` set), the pod's
service account. The client is imported only when a client is made, never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import JMKUsageError

SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
DEFAULT_KUBECONFIG = "~/.kube/config"


def kubeconfig_path(kubeconfig: str | None = None) -> str:
    """The kubeconfig file(s) to read: ``kubeconfig``, else ``$KUBECONFIG``; empty: the client's default."""
    return kubeconfig or os.environ.get("KUBECONFIG", "")


def in_cluster(kubeconfig: str | None = None) -> bool:
    """In a pod with no kubeconfig: the pod's service account talks to the API."""
    no_kubeconfig = not kubeconfig_path(kubeconfig) and not Path(DEFAULT_KUBECONFIG).expanduser().exists()
    return no_kubeconfig and bool(os.environ.get(SERVICE_HOST_ENV))


def cluster_configured(kubeconfig: str | None = None) -> bool:
    """Whether a cluster is configured here: a kubeconfig file that exists, or a pod's service account.

    The kubeconfig is ``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``. Asks no API server.
    """
    path = kubeconfig_path(kubeconfig)
    if path:
        return any(Path(part).expanduser().exists() for part in path.split(os.pathsep) if part)
    return Path(DEFAULT_KUBECONFIG).expanduser().exists() or bool(os.environ.get(SERVICE_HOST_ENV))


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A new ``kubernetes.client.ApiClient``: the kubeconfig's ``context`` (default: its current one), else in-cluster.

    Raises:
        JMKUsageError: No usable configuration (no kubeconfig, an unknown context, a broken file).
    """
    import kubernetes

    try:
        if in_cluster(kubeconfig):
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return kubernetes.client.ApiClient(configuration)
        return kubernetes.config.new_client_from_config(
            config_file=kubeconfig_path(kubeconfig) or None, context=context or None)
    except (kubernetes.config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = kubeconfig_path(kubeconfig) or DEFAULT_KUBECONFIG
        raise JMKUsageError(
            f"Cannot load a Kubernetes configuration from {where}{f' (context {context!r})' if context else ''}: "
            f"{exc}. Set KUBECONFIG (or c.KubernetesBackend.kubeconfig) to a kubeconfig file whose context reaches "
            "the cluster, or run inside a pod with a service account."
        ) from None


def context_namespace(kubeconfig: str | None = None, context: str | None = None) -> str | None:
    """The namespace the kubeconfig's ``context`` (default: its current context) names; None if none or unreadable."""
    try:
        import kubernetes

        contexts, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig_path(kubeconfig) or None)
    except Exception:  # no kubeconfig, or one the client cannot read: no namespace from it
        return None
    chosen = next((c for c in contexts or [] if c.get("name") == context), None) if context else current
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


def raw_request(api: Any, method: str, path: str, *, query: Sequence[tuple[str, Any]] = (),
                headers: Mapping[str, str] | None = None, body: Any = None, timeout: float | None = None) -> Any:
    """One request to the API server with ``api``'s credentials; its urllib3 response, the body not read yet.

    For what the generated methods cannot ask: a query parameter they leave out (``sinceTime`` of a
    pod's log), or a path of the API server's proxy. A status that is not 2xx raises
    ``kubernetes.client.ApiException`` (with the status and the body), with every client version.
    """
    import kubernetes

    if hasattr(api, "param_serialize"):  # kubernetes >= 32: serialize, then send; no status raises
        method, url, sent_headers, body, post = api.param_serialize(
            method, path, query_params=list(query), header_params=dict(headers or {}), body=body,
            auth_settings=["BearerToken"])
        response = api.call_api(method, url, header_params=sent_headers, body=body, post_params=post,
                                _request_timeout=timeout).response
        if not 200 <= response.status < 300:
            raise kubernetes.client.ApiException(http_resp=response)
        return response
    return api.call_api(path, method, query_params=list(query), header_params=dict(headers or {}), body=body,
                        auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                        _request_timeout=timeout)
