"""Checks of whole manifests by kind (object metadata, pods, Jobs, CronJobs, Deployments, Services ...).

:func:`check_manifest` lists every problem; :func:`ensure_valid` raises them all at once.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any

from ...exceptions import InvalidManifest
from .cron import (
    check_cron,
)
from .paths import (
    _LABEL_MAX_LENGTH,
    _check_enum,
    _child,
    _config_map_key_errors,
    _dns1035_label_errors,
    _dns1123_label_errors,
    _dns1123_subdomain_errors,
    _duplicate,
    _each_invalid,
    _env_var_name_errors,
    _invalid,
    _items,
    _label_value_errors,
    _mapping,
    _max_length_error,
    _path_segment_name_errors,
    _port_name_errors,
    _qualified_name_errors,
    _required,
    check_dns1123_label,
    check_dns1123_subdomain,
)
from .quantities import (
    _amounts,
    _check_resources,
    check_quantity,
)

# -- object metadata -------------------------------------------------------------------------

_NAME_ERRORS: dict[str, Callable[[str], list[str]]] = {
    "Namespace": _dns1123_label_errors,
    "Service": _dns1035_label_errors,
    "Role": _path_segment_name_errors,
    "RoleBinding": _path_segment_name_errors,
    "ClusterRole": _path_segment_name_errors,
    "ClusterRoleBinding": _path_segment_name_errors,
}
_NAME_MAX_LENGTHS = {
    "Job": (_LABEL_MAX_LENGTH, "a Job's name becomes the value of the job-name label on its pods"),
    "CronJob": (52, "the CronJob controller appends 11 characters to it to name each Job"),
}
_MAX_ANNOTATIONS_BYTES = 256 * 1024


def _check_object_meta(meta: Mapping[str, Any], kind: str) -> list[str]:
    name_errors = _NAME_ERRORS.get(kind, _dns1123_subdomain_errors)
    name, generate_name = meta.get("name"), meta.get("generateName")
    problems = []
    if not name and not generate_name:
        problems.append(_required("metadata.name", "name or generateName is required"))
    elif isinstance(name, str) and name:
        problems += _each_invalid("metadata.name", name, name_errors(name))
        if kind in _NAME_MAX_LENGTHS and len(name) > _NAME_MAX_LENGTHS[kind][0]:
            max_length, reason = _NAME_MAX_LENGTHS[kind]
            problems.append(_invalid("metadata.name", name, f"{_max_length_error(max_length)}: {reason}"))
    elif isinstance(generate_name, str):
        # The server appends random characters, so a trailing '-' is fine.
        masked = generate_name[:-1] + "a" if len(generate_name) > 1 and generate_name.endswith("-") else generate_name
        problems += _each_invalid("metadata.generateName", generate_name, name_errors(masked))
    namespace = meta.get("namespace")
    if isinstance(namespace, str) and namespace:
        problems += check_dns1123_label(namespace, "metadata.namespace")
    return problems + _check_labels_and_annotations(meta, "metadata")


def _check_labels_and_annotations(meta: Mapping[str, Any], path: str) -> list[str]:
    problems = _check_labels(meta.get("labels"), f"{path}.labels")
    return problems + _check_annotations(meta.get("annotations"), f"{path}.annotations")


def _check_labels(labels: object, path: str) -> list[str]:
    problems = []
    for key, value in _mapping(labels).items():
        problems += _each_invalid(path, key, _qualified_name_errors(key))
        if isinstance(value, str):
            problems += _each_invalid(_child(path, key), value, _label_value_errors(value))
    return problems


def _check_annotations(annotations: object, path: str) -> list[str]:
    problems = []
    size = 0
    for key, value in _mapping(annotations).items():
        problems += _each_invalid(path, key, _qualified_name_errors(key.lower()))
        size += len(key) + (len(value) if isinstance(value, str) else 0)
    if size > _MAX_ANNOTATIONS_BYTES:
        problems.append(f"{path}: too long: must have at most {_MAX_ANNOTATIONS_BYTES} bytes in all, found {size}")
    return problems


# -- pods ------------------------------------------------------------------------------------

_RESTART_POLICIES = ("Always", "OnFailure", "Never")
_JOB_RESTART_POLICIES = ("OnFailure", "Never")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_PROTOCOLS = ("TCP", "UDP", "SCTP")


def _check_port_number(value: object, path: str) -> list[str]:
    if isinstance(value, int) and not 1 <= value <= 65535:
        return [_invalid(path, value, "must be between 1 and 65535, inclusive")]
    return []


def _check_pod_template(template: Mapping[str, Any], path: str, owner: str, policies: tuple[str, ...]) -> list[str]:
    problems = _check_labels_and_annotations(_mapping(template.get("metadata")), f"{path}.metadata")
    return problems + _check_pod_spec(_mapping(template.get("spec")), f"{path}.spec", owner, policies)


def _check_pod_spec(spec: Mapping[str, Any], path: str, owner: str, policies: tuple[str, ...]) -> list[str]:
    problems = _check_restart_policy(spec.get("restartPolicy"), f"{path}.restartPolicy", owner, policies)
    problems += _check_volumes(spec.get("volumes"), f"{path}.volumes")
    volume_names = {volume["name"] for _, volume in _items(spec.get("volumes")) if isinstance(volume.get("name"), str)}
    if not spec.get("containers"):
        problems.append(_required(f"{path}.containers", "a pod needs at least one container"))
    container_names: set[str] = set()
    for section in ("containers", "initContainers"):
        for index, container in _items(spec.get(section)):
            problems += _check_container(container, f"{path}.{section}[{index}]", volume_names, container_names)
    account = spec.get("serviceAccountName")
    if isinstance(account, str) and account:
        problems += check_dns1123_subdomain(account, f"{path}.serviceAccountName")
    return problems + _check_labels(spec.get("nodeSelector"), f"{path}.nodeSelector")


def _check_restart_policy(policy: object, path: str, owner: str, supported: tuple[str, ...]) -> list[str]:
    if policy is None:
        if "Always" in supported:
            return []
        choices = " or ".join(map(repr, supported))
        return [_required(path, f"a {owner}'s pods must set it to {choices}: the default, 'Always', is not allowed")]
    return _check_enum(policy, supported, path)


def _check_volumes(volumes: object, path: str) -> list[str]:
    problems = []
    names: set[str] = set()
    for index, volume in _items(volumes):
        field = f"{path}[{index}]"
        name = volume.get("name")
        if isinstance(name, str):
            problems += check_dns1123_label(name, f"{field}.name")
            if name in names:
                problems.append(_duplicate(f"{field}.name", name, "volume names must be unique within a pod"))
            names.add(name)
        sources = [key for key, value in volume.items() if key != "name" and value is not None]
        if not sources:
            problems.append(_required(field, "must specify a volume type, e.g. configMap, emptyDir or secret"))
        elif len(sources) > 1:
            problems.append(f"{field}: forbidden: may not specify more than 1 volume type, found {', '.join(sources)}")
    return problems


def _check_container(container: Mapping[str, Any], path: str, volume_names: set[str], seen: set[str]) -> list[str]:
    problems = []
    name = container.get("name")
    if isinstance(name, str):
        problems += check_dns1123_label(name, f"{path}.name")
        if name in seen:
            problems.append(_duplicate(f"{path}.name", name, "container names must be unique within a pod"))
        seen.add(name)
    if not container.get("image"):
        problems.append(_required(f"{path}.image", "the container image to run, e.g. 'python:3.12-slim'"))
    problems += _check_enum(container.get("imagePullPolicy"), _PULL_POLICIES, f"{path}.imagePullPolicy")
    for index, variable in _items(container.get("env")):
        variable_name = variable.get("name")
        if isinstance(variable_name, str):
            problems += _each_invalid(f"{path}.env[{index}].name", variable_name, _env_var_name_errors(variable_name))
    for index, port in _items(container.get("ports")):
        problems += _check_container_port(port, f"{path}.ports[{index}]")
    problems += _check_resources(_mapping(container.get("resources")), f"{path}.resources")
    return problems + _check_volume_mounts(container.get("volumeMounts"), f"{path}.volumeMounts", volume_names)


def _check_container_port(port: Mapping[str, Any], path: str) -> list[str]:
    problems = _check_port_number(port.get("containerPort"), f"{path}.containerPort")
    if port.get("hostPort"):
        problems += _check_port_number(port["hostPort"], f"{path}.hostPort")
    if isinstance(port.get("name"), str):
        problems += _each_invalid(f"{path}.name", port["name"], _port_name_errors(port["name"]))
    return problems + _check_enum(port.get("protocol"), _PROTOCOLS, f"{path}.protocol")


def _check_volume_mounts(mounts: object, path: str, volume_names: set[str]) -> list[str]:
    problems = []
    mount_paths: set[str] = set()
    for index, mount in _items(mounts):
        name, mount_path = mount.get("name"), mount.get("mountPath")
        if isinstance(name, str) and name not in volume_names:
            problems.append(f"{path}[{index}].name: not found {name!r}: no volume of that name in the pod's volumes")
        if isinstance(mount_path, str):
            if mount_path in mount_paths:
                problems.append(_invalid(f"{path}[{index}].mountPath", mount_path, "must be unique"))
            mount_paths.add(mount_path)
    return problems


# -- kinds -----------------------------------------------------------------------------------

_CONCURRENCY_POLICIES = ("Allow", "Forbid", "Replace")
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
_ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
_MAX_DATA_BYTES = 1024 * 1024
_TIME_ZONE_PART = re.compile(r"[A-Za-z.\-_0-9+]{1,14}")


def _check_non_negative(spec: Mapping[str, Any], fields: tuple[str, ...], path: str) -> list[str]:
    return [
        _invalid(f"{path}.{field}", spec[field], "must be greater than or equal to 0")
        for field in fields
        if isinstance(spec.get(field), int) and spec[field] < 0
    ]


def _check_pod(obj: Mapping[str, Any]) -> list[str]:
    return _check_pod_spec(_mapping(obj.get("spec")), "spec", "Pod", _RESTART_POLICIES)


def _check_job(obj: Mapping[str, Any]) -> list[str]:
    return _check_job_spec(_mapping(obj.get("spec")), "spec")


def _check_job_spec(spec: Mapping[str, Any], path: str) -> list[str]:
    counts = ("parallelism", "completions", "backoffLimit", "backoffLimitPerIndex", "activeDeadlineSeconds",
              "ttlSecondsAfterFinished")
    problems = _check_non_negative(spec, counts, path)
    if spec.get("backoffLimitPerIndex") is not None and spec.get("completionMode") != "Indexed":
        problems.append(_invalid(f"{path}.backoffLimitPerIndex", spec["backoffLimitPerIndex"],
                                 "requires completionMode Indexed"))
    template = _mapping(spec.get("template"))
    return problems + _check_pod_template(template, f"{path}.template", "Job", _JOB_RESTART_POLICIES)


def _check_cron_job(obj: Mapping[str, Any]) -> list[str]:
    spec = _mapping(obj.get("spec"))
    schedule, time_zone = spec.get("schedule"), spec.get("timeZone")
    problems = check_cron(schedule, "spec.schedule") if isinstance(schedule, str) else []
    if isinstance(time_zone, str):
        problems += _check_time_zone(time_zone, "spec.timeZone")
    problems += _check_enum(spec.get("concurrencyPolicy"), _CONCURRENCY_POLICIES, "spec.concurrencyPolicy")
    limits = ("startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit")
    problems += _check_non_negative(spec, limits, "spec")
    template = _mapping(spec.get("jobTemplate"))
    problems += _check_labels_and_annotations(_mapping(template.get("metadata")), "spec.jobTemplate.metadata")
    return problems + _check_job_spec(_mapping(template.get("spec")), "spec.jobTemplate.spec")


def _check_time_zone(zone: str, path: str) -> list[str]:
    if not zone:
        return [_invalid(path, zone, "must be omitted or a non-empty IANA time zone name such as 'Etc/UTC'")]
    if zone.lower() == "local":
        return [_invalid(path, zone, "must be an explicit IANA time zone such as 'Europe/Berlin'")]
    if _is_unknown_time_zone(zone):
        return [_invalid(path, zone, "unknown time zone: use an IANA name such as 'Europe/Berlin' or 'Etc/UTC'")]
    return []


def _is_unknown_time_zone(zone: str) -> bool:
    parts = zone.split("/")
    if any(part in (".", "..") or part.startswith("-") or not _TIME_ZONE_PART.fullmatch(part) for part in parts):
        return True
    if not _have_time_zone_database():
        return False  # cannot tell; the API server will
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, OSError):
        return True
    return False


@functools.cache
def _have_time_zone_database() -> bool:
    try:
        zoneinfo.ZoneInfo("Etc/UTC")
    except zoneinfo.ZoneInfoNotFoundError:
        return False
    return True


def _check_deployment(obj: Mapping[str, Any]) -> list[str]:
    spec = _mapping(obj.get("spec"))
    template = _mapping(spec.get("template"))
    template_labels = _mapping(_mapping(template.get("metadata")).get("labels"))
    problems = _check_non_negative(spec, ("replicas", "minReadySeconds", "revisionHistoryLimit"), "spec")
    problems += _check_selector(_mapping(spec.get("selector")), template_labels)
    return problems + _check_pod_template(template, "spec.template", "Deployment", ("Always",))


def _check_selector(selector: Mapping[str, Any], template_labels: Mapping[str, Any]) -> list[str]:
    match_labels = _mapping(selector.get("matchLabels"))
    problems = _check_labels(match_labels, "spec.selector.matchLabels")
    if not match_labels and not selector.get("matchExpressions"):
        problems.append(_required("spec.selector", "empty selector is invalid for deployment: select the pods' labels"))
    elif any(template_labels.get(key) != value for key, value in match_labels.items()):
        detail = f"must include every label of spec.selector.matchLabels, {dict(match_labels)!r}"
        problems.append(_invalid("spec.template.metadata.labels", dict(template_labels), detail))
    return problems


def _check_service(obj: Mapping[str, Any]) -> list[str]:
    spec = _mapping(obj.get("spec"))
    problems = _check_enum(spec.get("type"), _SERVICE_TYPES, "spec.type")
    problems += _check_labels(spec.get("selector"), "spec.selector")
    ports = list(_items(spec.get("ports")))
    names: set[str] = set()
    for index, port in ports:
        path = f"spec.ports[{index}]"
        problems += _check_service_port(port, path)
        name = port.get("name")
        if not name and len(ports) > 1:
            problems.append(_required(f"{path}.name", "a Service with more than one port must name each of them"))
        elif isinstance(name, str) and name:
            problems += check_dns1123_label(name, f"{path}.name")
            if name in names:
                problems.append(_duplicate(f"{path}.name", name, "port names must be unique within a Service"))
            names.add(name)
    return problems


def _check_service_port(port: Mapping[str, Any], path: str) -> list[str]:
    problems = _check_port_number(port.get("port"), f"{path}.port")
    target = port.get("targetPort")
    if isinstance(target, str):
        problems += _each_invalid(f"{path}.targetPort", target, _port_name_errors(target))
    elif target:
        problems += _check_port_number(target, f"{path}.targetPort")
    if port.get("nodePort"):
        problems += _check_port_number(port["nodePort"], f"{path}.nodePort")
    return problems + _check_enum(port.get("protocol"), _PROTOCOLS, f"{path}.protocol")


def _check_config_map(obj: Mapping[str, Any]) -> list[str]:
    return _check_data(obj, "ConfigMap", text_field="data", base64_field="binaryData")


def _check_secret(obj: Mapping[str, Any]) -> list[str]:
    return _check_data(obj, "Secret", text_field="stringData", base64_field="data")


def _check_data(obj: Mapping[str, Any], kind: str, *, text_field: str, base64_field: str) -> list[str]:
    """Keys, encoding and total size of a ConfigMap's or Secret's data; values are never quoted back."""
    problems = []
    size = 0
    for field in (text_field, base64_field):
        for key, value in _mapping(obj.get(field)).items():
            path = _child(field, key)
            problems += _each_invalid(path, key, _config_map_key_errors(key))
            if not isinstance(value, str):
                continue
            if field == text_field:
                size += len(value.encode())
                continue
            try:
                size += len(base64.b64decode(value, validate=True))
            except binascii.Error:
                problems.append(f"{path}: invalid value: must be base64-encoded (or put it under {text_field} as text)")
    if size > _MAX_DATA_BYTES:
        problems.append(
            f"{text_field}, {base64_field}: too long: a {kind}'s data must have at most {_MAX_DATA_BYTES} bytes "
            f"in all, found {size}"
        )
    return problems


def _check_persistent_volume_claim(obj: Mapping[str, Any]) -> list[str]:
    spec = _mapping(obj.get("spec"))
    modes = spec.get("accessModes")
    problems = []
    if not modes:
        detail = f"at least 1 access mode is required ({', '.join(_ACCESS_MODES)})"
        problems.append(_required("spec.accessModes", detail))
    for index, mode in enumerate(modes if isinstance(modes, list) else []):
        problems += _check_enum(mode, _ACCESS_MODES, f"spec.accessModes[{index}]")
    resources = _mapping(spec.get("resources"))
    for section in ("limits", "requests"):
        for name, value in _mapping(resources.get(section)).items():
            problems += check_quantity(value, _child(f"spec.resources.{section}", name))
    requests = _mapping(resources.get("requests"))
    storage = _amounts(requests).get("storage")
    if "storage" not in requests:
        problems.append(_required("spec.resources.requests.storage", "the size of the volume to claim, e.g. '10Gi'"))
    elif storage is not None and storage[1] == 0:
        problems.append(_invalid("spec.resources.requests.storage", storage[0], "must be greater than zero"))
    return problems


_KIND_CHECKS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "Pod": _check_pod,
    "Job": _check_job,
    "CronJob": _check_cron_job,
    "Deployment": _check_deployment,
    "Service": _check_service,
    "ConfigMap": _check_config_map,
    "Secret": _check_secret,
    "PersistentVolumeClaim": _check_persistent_volume_claim,
}


def check_manifest(obj: Mapping[str, Any]) -> list[str]:
    """Check one manifest for what the API server would refuse and its OpenAPI schema does not say.

    Metadata is checked for every kind (the name by the rule of its kind, namespace, labels,
    annotations); Pod, Job, CronJob, Deployment, Service, ConfigMap, Secret and
    PersistentVolumeClaim also have their specs checked: pod templates (restart policy,
    containers, env, resources, volumes), schedules, ports, data keys and sizes.

    Args:
        obj: The manifest as plain JSON data, e.g. from ``ApiClient().sanitize_for_serialization(model)``.

    Returns:
        Every problem found, each led by the path of its field; empty when there is none.
    """
    kind = obj.get("kind")
    kind = kind if isinstance(kind, str) else ""
    problems = _check_object_meta(_mapping(obj.get("metadata")), kind)
    check = _KIND_CHECKS.get(kind)
    return problems + check(obj) if check else problems


def ensure_valid(obj: Mapping[str, Any]) -> None:
    """Raise if :func:`check_manifest` finds anything wrong with ``obj``.

    Args:
        obj: The manifest as plain JSON data.

    Raises:
        InvalidManifest: With every problem, one per line.
    """
    problems = check_manifest(obj)
    if problems:
        meta = _mapping(obj.get("metadata"))
        name = meta.get("name") or meta.get("generateName")
        kind = obj.get("kind") or "manifest"
        raise InvalidManifest(f"{kind} {name!r}" if name else str(kind), problems)

