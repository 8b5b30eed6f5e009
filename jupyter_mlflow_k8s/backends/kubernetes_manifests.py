"""Transitional: re-exports of what others imported from here.

A job's manifests moved to :mod:`jupyter_mlflow_k8s.backends.kubernetes.manifests`; pod settings,
flags and presets to :mod:`jupyter_mlflow_k8s.k8s`.
"""

from __future__ import annotations

from ..k8s.names import MANAGED_BY, label_value, payload_key
from ..k8s.pods import PAYLOAD_MOUNT, SHM_MOUNT, PodSettings, PVCMount, placement
from ..k8s.presets import PRESET_KEYS, apply_preset, check_image, parse_secret, parse_volume
from .kubernetes.manifests import (
    CONTAINER,
    JOB_ID_LABEL,
    PAYLOAD_LIMIT,
    RECORD_ANNOTATION,
    RECORD_ANNOTATION_LIMIT,
    RECORD_OMITTED_ANNOTATION,
    RUNNER_MODULE,
    USER_LABEL,
    build_env_secret,
    build_job,
    build_payload_secret,
    job_labels,
    job_name,
)

__all__ = [
    "CONTAINER", "JOB_ID_LABEL", "MANAGED_BY", "PAYLOAD_LIMIT", "PAYLOAD_MOUNT", "PRESET_KEYS", "RECORD_ANNOTATION",
    "RECORD_ANNOTATION_LIMIT", "RECORD_OMITTED_ANNOTATION", "RUNNER_MODULE", "SHM_MOUNT", "USER_LABEL", "PVCMount",
    "PodSettings", "apply_preset", "build_env_secret", "build_job", "build_payload_secret", "check_image", "job_labels",
    "job_name", "label_value", "parse_secret", "parse_volume", "payload_key", "placement",
]
