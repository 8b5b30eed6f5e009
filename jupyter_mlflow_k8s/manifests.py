"""Checks on Kubernetes manifests that no OpenAPI schema makes.

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

import base64
import binascii
import functools
import re
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from .exceptions import InvalidManifest

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


# -- quantities (k8s.io/apimachinery/pkg/api/resource) ---------------------------------------

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?P<suffix>[KMGTPE]i|[eE][+-]?[0-9]+|[numkMGTPE]?)"
)
_DECIMAL_SUFFIXES = ("n", "u", "m", "", "k", "M", "G", "T", "P", "E")
_SUFFIX_SCALE: dict[str, Decimal] = {
    **{f"{prefix}i": Decimal(1024) ** power for power, prefix in enumerate("KMGTPE", start=1)},
    **{suffix: Decimal(1000) ** power for power, suffix in enumerate(_DECIMAL_SUFFIXES, -3)},
}
_QUANTITY_FORMAT = (
    "must be a number with an optional suffix: Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024), n, u, m, k, M, G, T, P, E "
    "(powers of 1000) or an exponent (e.g. '2', '500m', '1.5Gi' or '2e3')"
)


def _quantity_amount(text: str) -> Decimal:
    """The exact amount a quantity string stands for; ``ValueError`` if it is not one."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(text)
    number, suffix = match["number"], match["suffix"]
    if suffix in _SUFFIX_SCALE:
        return Decimal(number) * _SUFFIX_SCALE[suffix]
    return Decimal(f"{number}E{suffix[1:]}")  # an exponent, e.g. "e3"


def check_quantity(value: object, what: str) -> list[str]:
    """Check a resource quantity such as ``"500m"``, ``"16Gi"`` or ``"1"``.

    The syntax is Kubernetes' ``resource.Quantity``: an optionally signed decimal number, then a
    binary suffix (Ki ... Ei), a decimal suffix (n, u, m, k, M ... E) or an exponent (``e3``).
    The value must be a string, as the Kubernetes Python client declares quantities, and must
    not be negative: every quantity in our manifests is an amount of a resource.

    Args:
        value: The quantity.
        what: Where it comes from, e.g. ``"spec.containers[0].resources.limits.memory"``;
            it leads each problem.

    Returns:
        The problem with the quantity, if any.
    """
    if not isinstance(value, str):
        detail = "must be a string such as '2', '500m' or '16Gi' (the Python client types quantities as str)"
        return [_invalid(what, value, detail)]
    try:
        amount = _quantity_amount(value)
    except ValueError:
        return [_invalid(what, value, _QUANTITY_FORMAT)]
    return [_invalid(what, value, "must be greater than or equal to 0")] if amount < 0 else []


def _amounts(quantities: Mapping[str, Any]) -> dict[str, tuple[str, Decimal]]:
    """The valid quantities of a resource list, as (text, amount); the others are reported elsewhere."""
    amounts = {}
    for name, value in quantities.items():
        if isinstance(value, str):
            try:
                amounts[name] = (value, _quantity_amount(value))
            except ValueError:
                continue
    return amounts


# -- container resources (k8s.io/kubernetes/pkg/apis/core/validation) ------------------------

_STANDARD_CONTAINER_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})
_HUGEPAGES_PREFIX = "hugepages-"


def _is_extended_resource(name: str) -> bool:
    """A resource in a vendor's domain, such as ``nvidia.com/gpu``: counted in whole units, never overcommitted."""
    return "/" in name and "kubernetes.io/" not in name


def _overcommit_allowed(name: str) -> bool:
    return not _is_extended_resource(name) and not name.startswith(_HUGEPAGES_PREFIX)


def _check_container_resource_name(name: str, path: str) -> list[str]:
    if "/" in name:
        return _each_invalid(path, name, _qualified_name_errors(name))
    if name in _STANDARD_CONTAINER_RESOURCES or name.startswith(_HUGEPAGES_PREFIX):
        return []
    detail = (
        "must be a standard resource for containers (cpu, memory, ephemeral-storage or hugepages-<size>); "
        "other resources are named with their domain, e.g. 'nvidia.com/gpu'"
    )
    return [_invalid(path, name, detail)]


def _check_whole_units(name: str, value: str, path: str) -> list[str]:
    if not _is_extended_resource(name):
        return []
    amount = _quantity_amount(value)
    if amount == amount.to_integral_value():
        return []
    return [_invalid(path, value, f"must be an integer: {name} is an extended resource, allocated in whole units")]


def _check_resources(resources: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    for section in ("limits", "requests"):
        for name, value in _mapping(resources.get(section)).items():
            field = _child(_child(path, section), name)
            problems += _check_container_resource_name(name, field)
            problems += check_quantity(value, field) or _check_whole_units(name, value, field)  # once it parses
    return problems + _check_requests_within_limits(resources, path)


def _check_requests_within_limits(resources: Mapping[str, Any], path: str) -> list[str]:
    limits = _mapping(resources.get("limits"))
    limit_amounts = _amounts(limits)
    problems = []
    for name, (text, request) in _amounts(_mapping(resources.get("requests"))).items():
        field = _child(_child(path, "requests"), name)
        if name not in limits:
            if not _overcommit_allowed(name):
                detail = (
                    f"{name} cannot be overcommitted, so a request needs a limit equal to it "
                    "(or set the limit alone: the request defaults to it)"
                )
                problems.append(_required(_child(_child(path, "limits"), name), detail))
        elif name in limit_amounts:
            limit_text, limit = limit_amounts[name]
            if request != limit and not _overcommit_allowed(name):
                detail = f"must be equal to the {name} limit of {limit_text!r}: {name} cannot be overcommitted"
                problems.append(_invalid(field, text, detail))
            elif request > limit:
                detail = f"must be less than or equal to the {name} limit of {limit_text!r}"
                problems.append(_invalid(field, text, detail))
    return problems


# -- cron schedules (github.com/robfig/cron/v3, ParseStandard) -------------------------------


class _CronField(NamedTuple):
    name: str
    low: int
    high: int
    names: Mapping[str, int]
    hint: str


_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_WEEKDAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_CRON_FIELDS = (
    _CronField("minute", 0, 59, {}, "0-59"),
    _CronField("hour", 0, 23, {}, "0-23"),
    _CronField("day of month", 1, 31, {}, "1-31"),
    _CronField("month", 1, 12, _MONTHS, "1-12 or JAN-DEC"),
    _CronField("day of week", 0, 6, _WEEKDAYS, "0-6 or SUN-SAT, Sunday is 0"),
)
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EVERY = "@every "
# Go's time.ParseDuration: signed, a sequence of decimal numbers each with a unit, or a bare 0.
_GO_DURATION = re.compile(r"[-+]?(?:0|(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)")
_CRON_NUMBER = re.compile("[+-]?[0-9]+")


def check_cron(schedule: str, what: str) -> list[str]:
    """Check a CronJob schedule as the API server does (robfig/cron's standard parser).

    Accepted: five fields (minute, hour, day of month, month, day of week), each a list of ``*``,
    ``?``, numbers or ranges ``a-b``, optionally stepped (``*/5``, ``1-10/2``), with month and
    weekday names (``JAN``, ``mon``) in any case; or a descriptor (``@hourly``, ``@daily`` ...,
    ``@every 1h30m``). A ``TZ=`` or ``CRON_TZ=`` prefix is refused: Kubernetes wants
    ``spec.timeZone`` instead.

    Args:
        schedule: The schedule.
        what: Where it comes from, e.g. ``"spec.schedule"`` or ``"--schedule"``; it leads each problem.

    Returns:
        The problems with the schedule; empty when Kubernetes would accept it.
    """
    problems = _each_invalid(what, schedule, _cron_errors(schedule))
    if "TZ" in schedule:
        detail = (
            "cannot use TZ or CRON_TZ in schedule, use the CronJob's timeZone field instead "
            "(e.g. schedule '0 3 * * *' with timeZone 'Europe/Berlin')"
        )
        problems.append(_invalid(what, schedule, detail))
    return problems


def _cron_errors(schedule: str) -> list[str]:
    spec = schedule
    if spec.startswith(("TZ=", "CRON_TZ=")):
        spec = spec.partition(" ")[2].strip()
    if not spec:
        return ["empty schedule: write five fields, e.g. '0 3 * * *', or a descriptor such as '@daily'"]
    if spec.startswith("@"):
        return _cron_descriptor_errors(spec)
    fields = spec.split()
    if len(fields) != len(_CRON_FIELDS):
        return [f"expected exactly 5 fields (minute hour day-of-month month day-of-week), found {len(fields)}"]
    errors = []
    for text, field in zip(fields, _CRON_FIELDS, strict=True):
        try:
            for expression in filter(None, text.split(",")):
                _check_cron_range(expression, field)
        except ValueError as exc:
            errors.append(f"{field.name} field {text!r}: {exc}")
    return errors


def _cron_descriptor_errors(spec: str) -> list[str]:
    if spec in _CRON_DESCRIPTORS:
        return []
    if spec.startswith(_EVERY):
        duration = spec[len(_EVERY) :]
        if _GO_DURATION.fullmatch(duration):
            return []
        return [f"@every needs a duration such as '90s', '15m' or '1h30m' (units ns, us, ms, s, m, h): {duration!r}"]
    return [f"unrecognized descriptor {spec!r}: use one of {', '.join(_CRON_DESCRIPTORS)} or '@every <duration>'"]


def _check_cron_range(expression: str, field: _CronField) -> None:
    """Raise ``ValueError`` unless ``expression`` is ``*``, ``?``, a value or a range ``a-b``, then maybe ``/step``."""
    range_and_step = expression.split("/")
    low_and_high = range_and_step[0].split("-")
    if low_and_high[0] in ("*", "?"):
        start, end = field.low, field.high
    elif len(low_and_high) > 2:
        raise ValueError(f"too many hyphens in {expression!r}")
    else:
        start, end = _cron_value(low_and_high[0], field), _cron_value(low_and_high[-1], field)
    if len(range_and_step) > 2:
        raise ValueError(f"too many slashes in {expression!r}")
    step = _cron_number(range_and_step[1]) if len(range_and_step) == 2 else 1
    if len(range_and_step) == 2 and len(low_and_high) == 1:
        end = field.high  # "N/step" means "N-max/step"
    if start < field.low:
        raise ValueError(f"{start} is below the minimum ({field.name}: {field.hint})")
    if end > field.high:
        raise ValueError(f"{end} is above the maximum ({field.name}: {field.hint})")
    if start > end:
        raise ValueError(f"the range {expression!r} starts after it ends")
    if step == 0:
        raise ValueError(f"the step in {expression!r} must be a positive number")


def _cron_value(text: str, field: _CronField) -> int:
    named = field.names.get(text.lower())
    if named is not None:
        return named
    if not _CRON_NUMBER.fullmatch(text) and field.names:
        raise ValueError(f"{text!r} is neither a number nor a {field.name} name ({field.hint})")
    return _cron_number(text)


def _cron_number(text: str) -> int:
    if not _CRON_NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    number = int(text)
    if number < 0:
        raise ValueError(f"negative number {text!r} not allowed")
    return number


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
    counts = ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")
    problems = _check_non_negative(spec, counts, path)
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
