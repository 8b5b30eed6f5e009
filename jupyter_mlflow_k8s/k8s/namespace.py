"""The one namespace resolver: jobs, endpoints and schedules all land where this says.

Order: an explicit namespace (a flag), else the setting (``c.KubernetesBackend.namespace``), else
``JMK_K8S_NAMESPACE``, else, inside a pod talking to its own cluster, the pod's service-account
namespace, else the kubeconfig context's namespace, else ``default``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .client import context_namespace, in_cluster

NAMESPACE_ENV = "JMK_K8S_NAMESPACE"
# Where the kubelet mounts the pod's namespace; a module constant so that tests can point it elsewhere.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"


def service_account_namespace(path: Path | None = None) -> str | None:
    """The pod's own namespace, from its service-account mount; None outside a pod."""
    try:
        return (path or SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or None
    except OSError:
        return None


def resolve_namespace(explicit: str | None = None, setting: str | None = None, *, kubeconfig: str | None = None,
                      context: str | None = None) -> str:
    """The namespace to use (see the module's docstring for the order).

    Args:
        explicit: A namespace asked for now (``--namespace``).
        setting: The configured one (``c.KubernetesBackend.namespace``).
        kubeconfig: The kubeconfig path setting (default ``$KUBECONFIG``, ``~/.kube/config``).
        context: The kubeconfig context setting (default: its current context).
    """
    for given in (explicit, setting, os.environ.get(NAMESPACE_ENV)):
        if given:
            return given
    if in_cluster(kubeconfig):
        found = service_account_namespace()
        if found:
            return found
    return context_namespace(kubeconfig, context) or DEFAULT_NAMESPACE
