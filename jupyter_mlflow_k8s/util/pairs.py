"""``K=V`` pairs from repeatable flags (``--param lr=0.01``, ``-p x=3``, ``--env``, ``--tag``)."""

from __future__ import annotations

import re

from ..errors import JMKUsageError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_pairs(items: list[str] | None, flag: str, identifiers: bool = False) -> dict[str, str]:
    """``["A=1", "B=x"]`` from a repeatable ``flag K=V`` into ``{"A": "1", "B": "x"}``.

    The key is stripped, the value kept as typed (it may hold ``=`` and spaces). With
    ``identifiers`` every key must be an ASCII Python identifier (it becomes a variable).

    Raises:
        JMKUsageError: For an item without ``=`` or a key, naming ``flag`` and how to write it.
    """
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise JMKUsageError(f"{flag} {item!r} is not KEY=VALUE. Write it as {flag} lr=0.01.")
        if identifiers and not _IDENTIFIER.match(key):
            raise JMKUsageError(f"{flag} {key!r}: the name must be a Python identifier, such as learning_rate.")
        pairs[key] = value
    return pairs
