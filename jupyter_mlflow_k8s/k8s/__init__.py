"""The Kubernetes layer: one client factory, one namespace resolver, pod settings, and our objects' API calls.

Everything that builds or sends Kubernetes objects (jobs, serving endpoints, scheduled CronJobs)
uses this package: :func:`api_client` is the only place configuration is loaded,
:func:`resolve_namespace` the only namespace rule, :func:`layered_settings` the only way pod
settings are made, and :func:`apply` / :func:`delete_owned` the only way our objects are changed.
It is a lower layer: it imports ``errors`` and nothing of the backends, serving, pipelines or front doors.
"""

from __future__ import annotations

from .client import api_client, context_namespace, in_cluster, kubeconfig_path, raw_request
from .names import MANAGED_BY, MANAGED_BY_LABEL, dns_slug, label_value
from .namespace import SERVICE_ACCOUNT_NAMESPACE, resolve_namespace, service_account_namespace
from .objects import (
    CUSTOM_KINDS,
    KINDS,
    api_error,
    apply,
    create,
    delete_owned,
    ensure_owned,
    is_managed,
    missing_kinds,
    read,
    translated,
)
from .pods import (
    CREDENTIAL_VARIABLES,
    PAYLOAD_MOUNT,
    SHM_MOUNT,
    WAITING_FAILURES,
    PodSettings,
    PVCMount,
    compact,
    placement,
    plain,
    pod_spec,
    pvc_volumes,
    resources,
    shm_volume,
    tolerations,
)
from .presets import PRESET_KEYS, apply_preset, check_image, layered_settings, parse_secret, parse_volume
from .validation import check_manifest, ensure_valid

__all__ = [
    "CREDENTIAL_VARIABLES", "CUSTOM_KINDS", "KINDS", "MANAGED_BY", "MANAGED_BY_LABEL", "PAYLOAD_MOUNT", "PRESET_KEYS",
    "SERVICE_ACCOUNT_NAMESPACE", "SHM_MOUNT", "WAITING_FAILURES", "PVCMount", "PodSettings", "api_client", "api_error",
    "apply", "apply_preset", "check_image", "check_manifest", "compact", "context_namespace", "create", "delete_owned",
    "dns_slug", "ensure_owned", "ensure_valid", "in_cluster", "is_managed", "kubeconfig_path", "label_value",
    "layered_settings", "missing_kinds", "parse_secret", "parse_volume", "placement", "plain", "pod_spec",
    "pvc_volumes", "raw_request", "read",
    "resolve_namespace", "resources", "service_account_namespace", "shm_volume", "tolerations", "translated",
]
