"""Paths and messages of manifest checks, and the name formats of Kubernetes (k8s.io/apimachinery/pkg/util/validation).

Every check returns a list of problems, each led by the path of the field at fault. Nothing from Kubernetes is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# -- paths and messages ----------------------------------------------------------------------

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def json_path(parts: Iterable[str | int]) -> str:
    """Format the path to a value inside a manifest the way problems name it.

    Args:
        parts: Keys and list indices, from the top of the manifest down.

    Returns:
        Plain keys joined by dots, list indices as ``[0]`` and other keys quoted, e.g.
        ``spec.containers[0].resources.limits['nvidia.com/gpu']``.
    """
    path = ""
    for part in parts:
        path = _child(path, part)
    return path


def _child(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    if _FIELD_NAME.fullmatch(part):
        return f"{path}.{part}" if path else part
    return f"{path}[{part!r}]"


def _invalid(path: str, value: object, detail: str) -> str:
    return f"{path}: invalid value {value!r}: {detail}"


def _each_invalid(path: str, value: object, details: Iterable[str]) -> list[str]:
    return [_invalid(path, value, detail) for detail in details]


def _required(path: str, detail: str) -> str:
    return f"{path}: required value: {detail}"


def _unsupported(path: str, value: object, supported: Iterable[str]) -> str:
    return f"{path}: unsupported value {value!r}: supported values: {', '.join(map(repr, supported))}"


def _duplicate(path: str, value: object, detail: str) -> str:
    return f"{path}: duplicate value {value!r}: {detail}"


def _check_enum(value: object, supported: tuple[str, ...], path: str) -> list[str]:
    return [] if value is None or value in supported else [_unsupported(path, value, supported)]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """The objects in a JSON list, with their indices; anything else yields nothing."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, Mapping):
                yield index, item


# -- names (k8s.io/apimachinery/pkg/util/validation) -----------------------------------------

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = rf"{_DNS1123_LABEL_FMT}(\.{_DNS1123_LABEL_FMT})*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = f"({_QUALIFIED_NAME_FMT})?"
_ENV_VAR_NAME_FMT = "[-._a-zA-Z][-._a-zA-Z0-9]*"
_CONFIG_MAP_KEY_FMT = "[-._a-zA-Z0-9]+"

_DNS1123_LABEL = re.compile(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN = re.compile(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL = re.compile(_DNS1035_LABEL_FMT)
_QUALIFIED_NAME = re.compile(_QUALIFIED_NAME_FMT)
_LABEL_VALUE = re.compile(_LABEL_VALUE_FMT)
_ENV_VAR_NAME = re.compile(_ENV_VAR_NAME_FMT)
_CONFIG_MAP_KEY = re.compile(_CONFIG_MAP_KEY_FMT)
_PORT_NAME_CHARSET = re.compile("[-a-z0-9]+")

_LABEL_MAX_LENGTH = 63
_SUBDOMAIN_MAX_LENGTH = 253
_PORT_NAME_MAX_LENGTH = 15


def _max_length_error(length: int) -> str:
    return f"must be no more than {length} characters"


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    shown = " or ".join(f"'{example}'" for example in examples)
    return f"{message} (e.g. {shown}, regex used for validation is '{fmt}')"


def _dns1123_label_errors(value: str) -> list[str]:
    errors = [_max_length_error(_LABEL_MAX_LENGTH)] if len(value) > _LABEL_MAX_LENGTH else []
    if _DNS1123_LABEL.fullmatch(value):
        return errors
    if _DNS1123_SUBDOMAIN.fullmatch(value):
        return [*errors, "must not contain dots"]
    message = (
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
        "and must start and end with an alphanumeric character"
    )
    return [*errors, _regex_error(message, _DNS1123_LABEL_FMT, "my-name", "123-abc")]


def _dns1123_subdomain_errors(value: str) -> list[str]:
    errors = [_max_length_error(_SUBDOMAIN_MAX_LENGTH)] if len(value) > _SUBDOMAIN_MAX_LENGTH else []
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        message = (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character"
        )
        errors.append(_regex_error(message, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errors


def _dns1035_label_errors(value: str) -> list[str]:
    errors = [_max_length_error(_LABEL_MAX_LENGTH)] if len(value) > _LABEL_MAX_LENGTH else []
    if not _DNS1035_LABEL.fullmatch(value):
        message = (
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
            "start with an alphabetic character, and end with an alphanumeric character"
        )
        errors.append(_regex_error(message, _DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errors


def _path_segment_name_errors(value: str) -> list[str]:
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{character}'" for character in "/%" if character in value]


def _qualified_name_errors(value: str) -> list[str]:
    parts = value.split("/")
    if len(parts) > 2:
        return ["must be a name with an optional DNS subdomain prefix and '/' (e.g. 'MyName' or 'example.com/MyName')"]
    errors = []
    if len(parts) == 2:
        prefix = parts[0]
        errors = [f"prefix part {error}" for error in _dns1123_subdomain_errors(prefix)]
        if not prefix:
            errors = ["prefix part must be non-empty"]
    name = parts[-1]
    if not name:
        return [*errors, "name part must be non-empty"]
    if len(name) > _LABEL_MAX_LENGTH:
        errors.append(f"name part {_max_length_error(_LABEL_MAX_LENGTH)}")
    if not _QUALIFIED_NAME.fullmatch(name):
        message = (
            "name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
        errors.append(_regex_error(message, _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc"))
    return errors


def _label_value_errors(value: str) -> list[str]:
    errors = [_max_length_error(_LABEL_MAX_LENGTH)] if len(value) > _LABEL_MAX_LENGTH else []
    if not _LABEL_VALUE.fullmatch(value):
        message = (
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
        errors.append(_regex_error(message, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errors


def _env_var_name_errors(value: str) -> list[str]:
    if _ENV_VAR_NAME.fullmatch(value):
        return []
    message = (
        "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', "
        "and must not start with a digit"
    )
    return [_regex_error(message, _ENV_VAR_NAME_FMT, "my.env-name", "MY_ENV.NAME", "MyEnvName1")]


def _config_map_key_errors(value: str) -> list[str]:
    errors = [_max_length_error(_SUBDOMAIN_MAX_LENGTH)] if len(value) > _SUBDOMAIN_MAX_LENGTH else []
    if not _CONFIG_MAP_KEY.fullmatch(value):
        message = "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
        errors.append(_regex_error(message, _CONFIG_MAP_KEY_FMT, "key.name", "KEY_NAME", "key-name"))
    if value in (".", ".."):
        errors.append(f"must not be '{value}'")
    elif value.startswith(".."):
        errors.append("must not start with '..'")
    return errors


def _port_name_errors(value: str) -> list[str]:
    """IANA_SVC_NAME, the rule for named container ports and for a Service's ``targetPort`` by name."""
    errors = [_max_length_error(_PORT_NAME_MAX_LENGTH)] if len(value) > _PORT_NAME_MAX_LENGTH else []
    if not _PORT_NAME_CHARSET.fullmatch(value):
        errors.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", value):
        errors.append("must contain at least one letter (a-z)")
    if "--" in value:
        errors.append("must not contain consecutive hyphens")
    if value.startswith("-") or value.endswith("-"):
        errors.append("must not begin or end with a hyphen")
    return errors


def check_dns1123_label(value: str, what: str) -> list[str]:
    """Check a name that must be an RFC 1123 label: a namespace, a container, a volume, a port.

    Args:
        value: The name.
        what: Where the name comes from, e.g. ``"metadata.namespace"`` or ``"--namespace"``;
            it leads each problem.

    Returns:
        One problem per rule the name breaks; empty when it is valid.
    """
    return _each_invalid(what, value, _dns1123_label_errors(value))


def check_dns1123_subdomain(value: str, what: str) -> list[str]:
    """Check a name that must be an RFC 1123 subdomain, as most object names must.

    Args:
        value: The name.
        what: Where the name comes from; it leads each problem.

    Returns:
        One problem per rule the name breaks; empty when it is valid.
    """
    return _each_invalid(what, value, _dns1123_subdomain_errors(value))


def check_dns1035_label(value: str, what: str) -> list[str]:
    """Check a name that must be an RFC 1035 label (a label that starts with a letter), as a Service's name must.

    Args:
        value: The name.
        what: Where the name comes from; it leads each problem.

    Returns:
        One problem per rule the name breaks; empty when it is valid.
    """
    return _each_invalid(what, value, _dns1035_label_errors(value))
