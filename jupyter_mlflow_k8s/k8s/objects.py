"""Creating, updating and deleting our objects: the thin layer that talks to the API for every builder's output.

:func:`apply` creates an object, or updates the one of that name when it is ours (labelled
``app.kubernetes.io/managed-by=jupyter-mlflow-k8s``); :func:`delete_owned` deletes only ours. Both
refuse anything else with a :class:`ConflictError`, so a name clash never replaces or deletes
someone's Deployment or CronJob. Custom resources (:data:`CUSTOM_KINDS`, e.g. the prometheus-operator's
PodMonitor) go the same way, through ``CustomObjectsApi``; :func:`missing_kinds` asks API discovery
whether a cluster serves them at all. Kubernetes API errors leave here as the error families of
:mod:`jupyter_mlflow_k8s.errors`, with what was being done in their message. Builders stay pure:
they hand their manifests (plain JSON data) to these functions.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import ConflictError, JMKError, UnavailableError, translate
from .names import MANAGED_BY, MANAGED_BY_LABEL

# kind -> (API class of kubernetes.client, the suffix of its namespaced methods)
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Secret": ("CoreV1Api", "secret"),
    "Service": ("CoreV1Api", "service"),
    "Job": ("BatchV1Api", "job"),
    "CronJob": ("BatchV1Api", "cron_job"),
    "Deployment": ("AppsV1Api", "deployment"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "horizontal_pod_autoscaler"),
    "ServiceAccount": ("CoreV1Api", "service_account"),
    "Role": ("RbacAuthorizationV1Api", "role"),
    "RoleBinding": ("RbacAuthorizationV1Api", "role_binding"),
}

# kind -> (API group, version, plural) of the custom resources we make, through CustomObjectsApi
CUSTOM_KINDS: dict[str, tuple[str, str, str]] = {
    "PodMonitor": ("monitoring.coreos.com", "v1", "podmonitors"),
    "PrometheusRule": ("monitoring.coreos.com", "v1", "prometheusrules"),
}


def is_managed(obj: Mapping[str, Any] | None) -> bool:
    """Whether ``obj`` carries our ``app.kubernetes.io/managed-by`` label."""
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGED_BY)


def not_managed(kind: str, namespace: str, name: str, *, deleting: bool = False) -> ConflictError:
    """The refusal to touch an object someone else made."""
    what = ("it was not made by jupyter-mlflow-k8s, so it is not deleted" if deleting
            else "jupyter-mlflow-k8s did not make it, so it is not replaced")
    return ConflictError(
        f"{kind} {namespace}/{name} exists and is not managed by jupyter_mlflow_k8s (label "
        f"{MANAGED_BY_LABEL}={MANAGED_BY}): {what}; delete it or choose another name."
    )


def api_error(exc: BaseException, what: str) -> JMKError:
    """``exc`` (a Kubernetes or network error) as its error family, saying what was being done.

    When the API answered, what was refused leads; when nothing answered, the server that did not
    answer leads (``jmk: http://...:6443 did not answer ...``) and what was being done follows.
    """
    family = translate(exc) or UnavailableError(f"{type(exc).__name__}: {exc}")
    if getattr(exc, "status", 0):
        said = str(family)
        if said[:2].istitle():  # "The Kubernetes API answered" continues the sentence; "MLflow" stays
            said = said[0].lower() + said[1:]
        return type(family)(f"Cannot {what}: {said}")
    return type(family)(f"{family} (trying to {what})")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn a Kubernetes or network error raised inside into its error family (anything else passes)."""
    try:
        yield
    except JMKError:
        raise
    except Exception as exc:
        if translate(exc) is None:
            raise
        raise api_error(exc, what) from exc


def _method(api: Any, kind: str, verb: str) -> Any:
    """The client's ``{verb}_namespaced_...`` method for ``kind``, called as the typed ones are.

    ``create(namespace, body)``, ``read(name, namespace)``, ``replace|patch(name, namespace, body)`` and
    ``delete(name, namespace)``, with the client's keywords; a custom kind's group, version and plural are
    filled in.
    """
    import kubernetes

    if kind in CUSTOM_KINDS:
        group, version, plural = CUSTOM_KINDS[kind]
        call = getattr(kubernetes.client.CustomObjectsApi(api),
                       f"{'get' if verb == 'read' else verb}_namespaced_custom_object")
        if verb == "create":
            return lambda namespace, body, **options: call(group, version, namespace, plural, body, **options)
        return lambda name, namespace, *body, **options: call(group, version, namespace, plural, name, *body,
                                                              **options)
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(sorted([*KINDS, *CUSTOM_KINDS]))}")
    api_class, suffix = KINDS[kind]
    return getattr(getattr(kubernetes.client, api_class)(api), f"{verb}_namespaced_{suffix}")


def _status(exc: BaseException) -> int | None:
    import kubernetes

    return int(exc.status or 0) if isinstance(exc, kubernetes.client.ApiException) else None


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta["namespace"], meta["name"]


def _data(response: Any) -> dict[str, Any]:
    data = getattr(response, "data", b"")
    return dict(json.loads(data)) if data else {}


def read(api: Any, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object as JSON data, or None when there is none of that name."""
    try:
        return _data(_method(api, kind, "read")(name, namespace, _preload_content=False))
    except Exception as exc:
        if _status(exc) == 404:
            return None
        if translate(exc) is None:
            raise
        raise api_error(exc, f"read {kind} {namespace}/{name}") from exc


def create(api: Any, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Create ``obj``; a name already taken is a :class:`ConflictError` (nothing is replaced)."""
    kind, namespace, name = _identity(obj)
    with translated(f"create {kind} {namespace}/{name}"):
        return _data(_method(api, kind, "create")(namespace, dict(obj), _preload_content=False))


def apply(api: Any, obj: Mapping[str, Any], *,
          patch: Sequence[Mapping[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """Create ``obj``, or update the object of its name when it is ours: replaced, or ``patch`` applied.

    Args:
        api: A ``kubernetes.client.ApiClient`` (:func:`jupyter_mlflow_k8s.k8s.api_client`).
        obj: The manifest: a kind of :data:`KINDS`, with ``metadata.namespace`` and ``metadata.name``.
        patch: A JSON Patch to apply instead of replacing an existing object (a Deployment's rollout).

    Returns:
        ``"created"``, ``"replaced"`` or ``"patched"``, and the object as the API answered.

    Raises:
        ConflictError: An object of that name exists and is not ours, or it changed meanwhile.
        NotFoundError: The namespace, or the kind on this cluster, does not exist.
        JMKError: Another refusal of the API, in its family.
    """
    kind, namespace, name = _identity(obj)
    try:
        return "created", _data(_method(api, kind, "create")(namespace, dict(obj), _preload_content=False))
    except Exception as exc:
        if _status(exc) != 409:
            if translate(exc) is None:
                raise
            raise api_error(exc, f"create {kind} {namespace}/{name}") from exc
    existing = read(api, kind, name, namespace)
    if existing is None:
        raise ConflictError(f"{kind} {namespace}/{name} was deleted while it was being replaced; try again.")
    if not is_managed(existing):
        raise not_managed(kind, namespace, name)
    with translated(f"update {kind} {namespace}/{name}"):
        if patch is not None:
            return "patched", _data(_method(api, kind, "patch")(name, namespace, [dict(op) for op in patch],
                                                                 _preload_content=False))
        body = dict(obj)
        version = (existing.get("metadata") or {}).get("resourceVersion")
        if version:  # replace exactly what was read: a change meanwhile is a conflict, not lost
            body["metadata"] = {**body["metadata"], "resourceVersion": version}
        return "replaced", _data(_method(api, kind, "replace")(name, namespace, body, _preload_content=False))


def ensure_owned(api: Any, targets: Iterable[tuple[str, str]],
                 namespace: str) -> dict[tuple[str, str], dict[str, Any] | None]:
    """Each ``(kind, name)`` as it is now (None: absent), after checking that every one there is ours.

    Raises:
        ConflictError: One exists that is not ours (nothing has been changed).
    """
    found: dict[tuple[str, str], dict[str, Any] | None] = {}
    for kind, name in targets:
        found[(kind, name)] = existing = read(api, kind, name, namespace)
        if existing is not None and not is_managed(existing):
            raise not_managed(kind, namespace, name)
    return found


def delete_owned(api: Any, kind: str, name: str, namespace: str, *, propagation: str = "Background") -> bool:
    """Delete the object ``kind``/``name`` if it is ours (with its dependents: ``propagation``).

    Returns:
        Whether it was there and is now being deleted.

    Raises:
        ConflictError: It exists and is not ours (left alone).
        JMKError: The API refused, in its family.
    """
    existing = read(api, kind, name, namespace)
    if existing is None:
        return False
    if not is_managed(existing):
        raise not_managed(kind, namespace, name, deleting=True)
    try:
        _method(api, kind, "delete")(name, namespace, propagation_policy=propagation, _preload_content=False)
    except Exception as exc:
        if _status(exc) == 404:
            return False
        if translate(exc) is None:
            raise
        raise api_error(exc, f"delete {kind} {namespace}/{name}") from exc
    return True


def missing_kinds(api: Any, kinds: Iterable[str]) -> list[str]:
    """The kinds of :data:`CUSTOM_KINDS` among ``kinds`` that the cluster does not serve (no CRD), by API discovery.

    Raises:
        JMKError: The API refused discovery, or did not answer, in its family.
    """
    import kubernetes

    served: dict[tuple[str, str], set[str]] = {}
    missing = []
    for kind in kinds:
        group, version, plural = CUSTOM_KINDS[kind]
        if (group, version) not in served:
            try:
                listed = kubernetes.client.CustomObjectsApi(api).get_api_resources(group, version,
                                                                                    _preload_content=False)
                served[(group, version)] = {resource["name"] for resource in _data(listed).get("resources") or []}
            except Exception as exc:
                if _status(exc) != 404:  # 404: the API group and version are not served at all
                    if translate(exc) is None:
                        raise
                    raise api_error(exc, f"ask which resources {group}/{version} serves") from exc
                served[(group, version)] = set()
        if plural not in served[(group, version)]:
            missing.append(kind)
    return missing
