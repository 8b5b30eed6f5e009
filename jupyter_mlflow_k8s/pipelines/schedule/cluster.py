"""Applying a schedule's objects to the cluster, and removing them, through the Kubernetes layer.

The namespace comes from the one resolver (:func:`jupyter_mlflow_k8s.k8s.resolve_namespace`), the
client from the one factory, and every create, replace and delete goes through
:func:`~jupyter_mlflow_k8s.k8s.apply` / :func:`~jupyter_mlflow_k8s.k8s.delete_owned`, which refuse
objects this package did not make.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import JMKUsageError, NotFoundError, UnavailableError
from ...k8s import api_client, apply, delete_owned, ensure_owned, resolve_namespace
from .cronjob import configmap_name


def kube_namespace(namespace: str | None = None) -> str:
    """``namespace``, else the one the Kubernetes backend would use (the setting, the pod's own, the kubeconfig's)."""
    return resolve_namespace(namespace)


def _api_client() -> Any:
    """The ApiClient of :func:`jupyter_mlflow_k8s.k8s.api_client`; without one, says how to do without."""
    try:
        return api_client()
    except JMKUsageError as exc:
        raise JMKUsageError(f"Cannot reach Kubernetes: {exc} Or write the manifests for kubectl apply "
                            "(--print, or --print-manifests for jmk scheduler).") from None


def apply_schedule_manifests(manifests: Sequence[Mapping[str, Any]]) -> list[str]:
    """Create each object (a schedule's ConfigMap and CronJob, the scheduler's), or replace ours of that name.

    When one of them exists and is not ours, nothing is changed.

    Returns:
        What was done, e.g. ``["created ConfigMap team/churn-pipeline", "replaced CronJob team/churn"]``.

    Raises:
        UnavailableError: The cluster has no batch/v1 CronJob (before Kubernetes 1.21).
        ConflictError: An object of that name exists that this package did not make.
        JMKError: Another refusal of the API (no ``timeZone`` before 1.27 ...), in its family.
    """
    api = _api_client()
    for namespace in {m["metadata"]["namespace"] for m in manifests}:  # refuse before changing anything
        ensure_owned(api, [(m["kind"], m["metadata"]["name"]) for m in manifests
                           if m["metadata"]["namespace"] == namespace], namespace)
    done = []
    for manifest in manifests:
        kind, meta = manifest["kind"], manifest["metadata"]
        try:
            action, _ = apply(api, manifest)
        except NotFoundError as exc:
            if kind != "CronJob":
                raise
            raise UnavailableError(
                f"The cluster has no batch/v1 CronJob in namespace {meta['namespace']!r} (Kubernetes 1.21+ has it, "
                "and 1.27+ its timeZone): use the embedded scheduler (`jmk scheduler`) instead."
            ) from exc
        done.append(f"{action} {kind} {meta['namespace']}/{meta['name']}")
    return done


def delete_schedule_manifests(name: str, namespace: str) -> list[str]:
    """Delete the CronJob ``name`` (and its Jobs) and its ConfigMap, if this package made them.

    Raises:
        JMKUsageError: Neither exists.
        ConflictError: One was not made by this package (left alone).
        JMKError: The API refused, in its family.
    """
    api = _api_client()
    done = []
    for kind, object_name in (("CronJob", name), ("ConfigMap", configmap_name(name))):
        if delete_owned(api, kind, object_name, namespace):
            done.append(f"deleted {kind} {namespace}/{object_name}")
    if not done:
        raise JMKUsageError(f"No scheduled pipeline {name!r} in namespace {namespace!r} (no CronJob nor ConfigMap).")
    return done
