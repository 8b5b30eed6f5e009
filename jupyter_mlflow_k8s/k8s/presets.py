"""The one function that makes a pod's settings, and the flags and presets that feed it.

:func:`layered_settings` layers the configured settings (``c.KubernetesBackend...``), then a preset
(:func:`apply_preset`), then flags (``--image``, ``--cpu``, ``--secret``, ``--volume`` ...). Jobs,
serving endpoints and scheduled CronJobs all call it, so they agree on every rule. Pure functions:
a bad value raises :class:`JMKUsageError` saying what to write instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import JMKUsageError
from .names import dns_slug
from .pods import PAYLOAD_MOUNT, SHM_MOUNT, PodSettings, PVCMount
from .validation import check_dns1123_subdomain, check_quantity

# -- flags: --volume, --secret, --image ------------------------------------------------------

_VOLUME_FORM = "pvc:CLAIM:/path[:ro]"
_NAME_RULE = "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"


def parse_volume(text: str) -> PVCMount:
    """Parse ``--volume pvc:CLAIM:/path`` (read-write) or ``pvc:CLAIM:/path:ro`` (read-only).

    Args:
        text: The flag's value.

    Returns:
        The mount of that PersistentVolumeClaim.

    Raises:
        JMKUsageError: ``text`` is not of that form, the claim is not a Kubernetes name, or the path
            is not absolute, not normalized, has whitespace, or is ``/``, ``/dev/shm`` or the payload's.
    """
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[0] != "pvc" or parts[3:] not in ([], ["ro"]):
        raise JMKUsageError(f"--volume {text!r} is not {_VOLUME_FORM}. Write --volume pvc:datasets:/data")
    _, claim, path, *mode = parts
    suffix = ":ro" if mode else ""
    if check_dns1123_subdomain(claim, "claim"):
        example = dns_slug(claim) or "datasets"
        raise JMKUsageError(
            f"--volume {text!r}: {claim!r} is not a PersistentVolumeClaim name ({_NAME_RULE}). "
            f"Write --volume pvc:{example}:{path}{suffix}"
        )
    problem = _mount_path_problem(path)
    if problem:
        raise JMKUsageError(f"--volume {text!r}: the mount path {path!r} {problem}, e.g. --volume pvc:{claim}:/data")
    return PVCMount(claim, path, read_only=bool(mode))


def _mount_path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return "must be absolute"
    if re.search(r"\s", path):
        return "must not contain whitespace"
    if posixpath.normpath(path) != path:
        return f"must be normalized ({posixpath.normpath(path)!r})"
    if path == "/":
        return "would hide the whole image; mount the claim on a folder"
    if _is_within(path, SHM_MOUNT):
        return "is the job's shared memory; mount the claim elsewhere"
    if _is_within(path, PAYLOAD_MOUNT):
        return "is where the job's inputs are mounted; mount the claim elsewhere"
    return None


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(f"{folder}/")


def parse_secret(text: str) -> str:
    """Check ``--secret NAME``: the name of a Secret whose keys become the job's environment variables.

    Args:
        text: The flag's value.

    Returns:
        ``text``, a valid Secret name.

    Raises:
        JMKUsageError: ``text`` is not a Kubernetes object name (an RFC 1123 subdomain).
    """
    if check_dns1123_subdomain(text, "--secret"):
        example = dns_slug(text) or "my-credentials"
        raise JMKUsageError(
            f"--secret {text!r} is not a Secret name: use {_NAME_RULE}, at most 253 characters, e.g. --secret {example}"
        )
    return text


# Image references as github.com/distribution/reference parses them.
_ALPHANUMERIC = "[a-z0-9]+"
_PATH_COMPONENT = f"{_ALPHANUMERIC}(?:(?:[._]|__|-+){_ALPHANUMERIC})*"
_IMAGE_PATH = re.compile(f"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IMAGE_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_IMAGE_TAG = re.compile("[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_DIGEST = re.compile("[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_IMAGE_NAME_MAX_LENGTH = 255
_IMAGE_FORM = (
    "An image reference is [registry[:port]/]repository[:tag][@digest], e.g. python:3.11-slim or ghcr.io/org/train:1.2"
)


def check_image(image: str) -> None:
    """Check a container image reference as the container runtime will parse it.

    The grammar is Docker's: ``[host[:port]/]path[:tag][@digest]``. The first component is the
    registry when it has a '.' or ':' or is ``localhost``; otherwise the reference is on Docker
    Hub and the first component is part of the path, which must be lowercase.

    Args:
        image: e.g. ``python:3.11-slim``, ``ghcr.io/org/train:1.2`` or ``localhost:5000/train@sha256:...``.

    Raises:
        JMKUsageError: Saying what is wrong with ``image``.
    """
    problem = _image_problem(image)
    if problem:
        raise JMKUsageError(f"Image {image!r} {problem}. {_IMAGE_FORM}.")


def _image_problem(image: str) -> str | None:
    if not image:
        return "is empty"
    if re.search(r"\s", image):
        return "contains whitespace"
    name, at, digest = image.partition("@")
    if at and not _IMAGE_DIGEST.fullmatch(digest):
        return f"has an invalid digest {digest!r} (algorithm:hex, e.g. sha256: and 64 hex digits)"
    repository, tag = _split_tag(name)
    if tag is not None and not _IMAGE_TAG.fullmatch(tag):
        return f"has an invalid tag {tag!r} (up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')"
    registry, path = _split_registry(repository)
    if registry is not None and not _IMAGE_DOMAIN.fullmatch(registry):
        return f"has an invalid registry {registry!r} (a host name or [IPv6 address], then maybe :port)"
    if path != path.lower():
        return f"has uppercase letters in its repository {path!r}: repositories are lowercase, {path.lower()!r}"
    if not _IMAGE_PATH.fullmatch(path):
        return f"has an invalid repository {path!r} (lowercase letters and digits, separated by '/', '.', '_' or '-')"
    if len(repository) > _IMAGE_NAME_MAX_LENGTH:
        return f"has a name longer than {_IMAGE_NAME_MAX_LENGTH} characters"
    return None


def _split_tag(name: str) -> tuple[str, str | None]:
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :]
    return name, None


def _split_registry(repository: str) -> tuple[str | None, str]:
    first, slash, rest = repository.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, repository


# -- presets ---------------------------------------------------------------------------------


_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _invalid(key: str, value: object, detail: str) -> JMKUsageError:
    return JMKUsageError(f"{key}: invalid value {value!r}: {detail}")


def _optional(convert: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``convert``, also letting a preset clear the setting with ``None``."""

    def convert_or_none(key: str, value: Any) -> Any:
        return None if value is None else convert(key, value)

    return convert_or_none


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid(key, value, "must be a non-empty string")
    return value


def _image(key: str, value: Any) -> str:
    image = _text(key, value)
    check_image(image)
    return image


def _pull_policy(key: str, value: Any) -> str:
    if value not in _PULL_POLICIES:
        raise _invalid(key, value, f"must be one of {', '.join(_PULL_POLICIES)}")
    return str(value)


def _quantity(key: str, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    problems = check_quantity(value, key)
    if problems:
        raise JMKUsageError(problems[0])
    return str(value)


def _count(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(key, value, "must be a whole number, 0 or more")
    return value


def _object_name(key: str, value: Any) -> str:
    name = _text(key, value)
    problems = check_dns1123_subdomain(name, key)
    if problems:
        raise JMKUsageError(problems[0])
    return name


def _list(key: str, value: Any) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise _invalid(key, value, "must be a list")
    return value


def _object_names(key: str, value: Any) -> tuple[str, ...]:
    return tuple(_object_name(key, item) for item in _list(key, value))


def _secrets(key: str, value: Any) -> tuple[str, ...]:
    return tuple(parse_secret(_text(key, item)) for item in _list(key, value))


def _volumes(key: str, value: Any) -> tuple[PVCMount, ...]:
    return tuple(parse_volume(_text(key, item)) for item in _list(key, value))


def _object(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid(key, value, "must be a mapping")
    return value


def _objects(key: str, value: Any) -> tuple[Mapping[str, Any], ...]:
    return tuple(_object(key, item) for item in _list(key, value))


def _strings(key: str, value: Any) -> dict[str, str]:
    mapping = _object(key, value)
    if not all(isinstance(item, str) for pair in mapping.items() for item in pair):
        raise _invalid(key, value, "must map strings to strings")
    return dict(mapping)


# What a preset may set, and how its value is checked. Not the namespace: a preset shapes the pod,
# and the configured Secrets and claims it names exist in the configured namespace.
_PRESET_VALUES: dict[str, Callable[[str, Any], Any]] = {
    "image": _image,
    "image_pull_policy": _optional(_pull_policy),
    "python": _text,
    "gpu_resource": _text,
    "cpu": _optional(_quantity),
    "memory": _optional(_quantity),
    "gpus": _count,
    "node_selector": _strings,
    "tolerations": _objects,
    "affinity": _optional(_object),
    "priority_class_name": _optional(_object_name),
    "service_account_name": _optional(_object_name),
    "image_pull_secrets": _object_names,
    "runtime_class_name": _optional(_object_name),
    "shm_size": _optional(_quantity),
    "ttl_seconds_after_finished": _optional(_count),
    "retries": _count,
    "labels": _strings,
    "annotations": _strings,
    "env": _strings,
    "secrets": _secrets,
    "volumes": _volumes,
}


PRESET_KEYS = frozenset(_PRESET_VALUES)


def apply_preset(settings: PodSettings, name: str, presets: Mapping[str, Mapping[str, Any]]) -> PodSettings:
    """``settings`` with the values of a configured preset, e.g. ``{"gpus": 1, "memory": "32Gi"}``.

    A preset's value replaces the configured one, lists and mappings included. Volumes are written
    as for ``--volume`` (``"pvc:CLAIM:/path[:ro]"``), secrets as Secret names; quantities may be
    numbers (``cpu: 4``).

    Args:
        settings: The configured settings.
        name: The preset's name (``--preset NAME``).
        presets: The configured presets by name; each may set the keys in :data:`PRESET_KEYS`.

    Returns:
        The new settings.

    Raises:
        JMKUsageError: The preset is not configured, sets a key it may not, or sets a bad value.
    """
    preset = presets.get(name)
    if preset is None:
        known = ", ".join(sorted(presets)) or "none"
        raise JMKUsageError(f"Unknown preset {name!r}. Configured presets: {known}.")
    unknown = sorted(set(preset) - PRESET_KEYS)
    if unknown:
        raise JMKUsageError(
            f"Preset {name!r} sets {', '.join(map(_unknown_key, unknown))}. "
            f"A preset may set {', '.join(sorted(PRESET_KEYS))}."
        )
    changes: dict[str, Any] = {}
    for key, value in preset.items():
        try:
            changes[key] = _PRESET_VALUES[key](key, value)
        except JMKUsageError as exc:
            raise JMKUsageError(f"Preset {name!r} is invalid: {exc}") from None
    return dataclasses.replace(settings, **changes)


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, PRESET_KEYS, n=1)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


# -- the layers ------------------------------------------------------------------------------


def layered_settings(
    configured: PodSettings,
    presets: Mapping[str, Mapping[str, Any]],
    *,
    preset: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    gpus: int = 0,
    retries: int | None = None,
    env: Mapping[str, str] | None = None,
    secrets: Sequence[str] = (),
    volumes: Sequence[str] = (),
) -> PodSettings:
    """A pod's settings: the configured ones, then the preset ``preset``, then these flags.

    Jobs (``%%train --preset a100 --cpu 4``), endpoints and scheduled CronJobs all come through here.

    Args:
        configured: The configured settings (``KubernetesBackend.configured_settings()``).
        presets: The configured presets by name.
        preset: A preset's name, or None.
        namespace: Replaces the configured namespace.
        image: Replaces the image.
        cpu: Replaces the CPU (a quantity such as ``"500m"``).
        memory: Replaces the memory (a quantity such as ``"16Gi"``).
        gpus: Replaces the GPU count when above 0.
        retries: Replaces the retries when given.
        env: Variables added to the configured ones (these win).
        secrets: ``--secret`` names, added to the configured ones.
        volumes: ``--volume pvc:CLAIM:/path[:ro]`` flags, added to the configured ones.

    Raises:
        JMKUsageError: An unknown or bad preset, a bad image, Secret name or volume.
    """
    settings = apply_preset(configured, preset, presets) if preset else configured
    changes: dict[str, Any] = {}
    for key, value in (("namespace", namespace), ("image", image), ("cpu", cpu), ("memory", memory)):
        if value:
            changes[key] = value
    if gpus:
        changes["gpus"] = gpus
    if retries is not None:
        changes["retries"] = retries
    if env:
        changes["env"] = {**settings.env, **env}
    changes["secrets"] = (*settings.secrets, *(parse_secret(s) for s in secrets))
    changes["volumes"] = (*settings.volumes, *(parse_volume(v) for v in volumes))
    settings = dataclasses.replace(settings, **changes)
    check_image(settings.image)
    return settings


def configured_presets(config: Any) -> dict[str, Mapping[str, Any]]:
    """The presets of a traitlets config (``c.KubernetesBackend.presets``), ``{}`` when none.

    Read from the config itself, so listing them (the launch forms, the sidebar's API) builds no
    backend and opens no connection. ``c.KubernetesBackend.presets.update({...})`` is resolved.
    """
    from traitlets.config.loader import LazyConfigValue

    section = config.get("KubernetesBackend", {}) if config is not None else {}
    value = section.get("presets", {}) if hasattr(section, "get") else {}
    if isinstance(value, LazyConfigValue):
        value = value.get_value({})
    if not isinstance(value, Mapping):
        return {}
    return {str(name): preset for name, preset in value.items() if isinstance(preset, Mapping)}


def preset_summaries(presets: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each preset as a launch form lists it: ``{"name", "summary", "gpus", "problem"}``, sorted by name.

    ``summary`` says in one line what the preset sets (``gpus=1, memory=80Gi``); ``problem`` is
    why using it would fail (an unknown key, a bad value), else ``None``: a form shows the preset
    and the problem rather than hiding a misconfiguration.
    """
    listed = []
    for name in sorted(presets):
        preset = presets[name]
        problem = None
        try:
            apply_preset(PodSettings(), name, presets)
        except JMKUsageError as exc:
            problem = str(exc)
        shown = ", ".join(
            f"{key}={value}" for key, value in preset.items() if not isinstance(value, (Mapping, list, tuple))
        )
        gpus = preset.get("gpus")
        listed.append(
            {"name": name, "summary": shown, "gpus": gpus if isinstance(gpus, int) else None, "problem": problem}
        )
    return listed
