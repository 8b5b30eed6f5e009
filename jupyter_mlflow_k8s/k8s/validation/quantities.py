"""Quantities (k8s.io/apimachinery/pkg/api/resource) and container resources, checked as the API server does."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .paths import (
    _child,
    _each_invalid,
    _invalid,
    _mapping,
    _qualified_name_errors,
    _required,
)

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
