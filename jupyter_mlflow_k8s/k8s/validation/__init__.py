"""Checks on Kubernetes manifests that no OpenAPI schema makes (the public face of the validation modules).

A schema says which fields an object has and of which JSON type. Everything else the API server
refuses (name and label syntax, quantities, enums, cron schedules, fields that must agree) is Go
code in Kubernetes' validation packages. This module repeats the part of it our manifests reach,
with the same rules and much the same wording, so that a bad job name, GPU count or schedule is
refused here, before anything is submitted.

Every check returns a list of problems, empty when all is well, and each problem starts with the
path of the field at fault, e.g. ``spec.template.spec.containers[0].resources.limits['nvidia.com/gpu']``.
A value of the wrong JSON type is left to the schema (see ``tests/k8s_manifests.py``); the one
exception is a quantity that is not a string, which the schema allows but the Python client,
which declares quantities as ``str``, does not. Nothing from Kubernetes is imported.
"""

from __future__ import annotations

from .cron import check_cron
from .durations import check_prometheus_duration
from .kinds import check_manifest, ensure_valid
from .paths import check_dns1035_label, check_dns1123_label, check_dns1123_subdomain, json_path
from .quantities import check_quantity

__all__ = [
    "check_cron",
    "check_dns1035_label",
    "check_dns1123_label",
    "check_dns1123_subdomain",
    "check_manifest",
    "check_prometheus_duration",
    "check_quantity",
    "ensure_valid",
    "json_path",
]
