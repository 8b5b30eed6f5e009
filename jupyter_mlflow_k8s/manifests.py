"""Transitional: the manifest checks moved to :mod:`jupyter_mlflow_k8s.k8s.validation`; import them from there."""

from __future__ import annotations

from .exceptions import InvalidManifest
from .k8s.validation import (
    check_cron,
    check_dns1035_label,
    check_dns1123_label,
    check_dns1123_subdomain,
    check_manifest,
    check_quantity,
    ensure_valid,
    json_path,
)

__all__ = [
    "InvalidManifest",
    "check_cron",
    "check_dns1035_label",
    "check_dns1123_label",
    "check_dns1123_subdomain",
    "check_manifest",
    "check_quantity",
    "ensure_valid",
    "json_path",
]
