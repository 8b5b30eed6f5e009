"""Endpoints of several targets at once: a listing that never fails for one target being down.

A target that is not configured (no kubeconfig) is skipped; one that does not answer (the API server
down) is named in ``unreachable`` with why, and the others are listed all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import JMKError, NotFoundError
from ..errors import EndpointNotFound
from .base import EndpointSummary, EndpointTarget


@dataclass
class Listing:
    """What the targets answered: their endpoints, and ``{target: why}`` for each that did not answer."""

    endpoints: list[EndpointSummary] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)


def list_all(targets: Sequence[EndpointTarget], skip_unconfigured: bool = True) -> Listing:
    """Every endpoint of ``targets``, in their order; a target that fails is named, never raised."""
    listing = Listing()
    for target in targets:
        try:
            if skip_unconfigured and not target.configured:
                continue
            listing.endpoints += target.list()
        except JMKError as exc:
            listing.unreachable[target.name] = str(exc)
    return listing


def find(targets: Sequence[EndpointTarget], name: str) -> tuple[EndpointTarget, EndpointSummary]:
    """The first target (in order) with an endpoint ``name``; the others are asked only when configured.

    Raises:
        NotFoundError: None has it: the first target's error (it names that target's endpoints), with
            what was unreachable among the others.
    """
    missing: NotFoundError | None = None
    unreachable: list[str] = []
    for number, target in enumerate(targets):
        try:
            if number and not target.configured:
                continue
            return target, target.get(name)
        except NotFoundError as exc:
            missing = missing or exc
        except JMKError as exc:
            unreachable.append(f"{target.name} unreachable: {exc}")
    if missing is None:
        raise EndpointNotFound(name, [], hint="".join(f" ({note})" for note in unreachable))
    if unreachable:
        missing.args = (" ".join([str(missing), *(f"({note})" for note in unreachable)]),)
    raise missing


def started_message(endpoint: Any) -> str:
    """What ``jmk serve`` and ``%serve`` say once a local server listens."""
    return (f"serving {endpoint.model_uri} as {endpoint.name} at {endpoint.url} (pid {endpoint.pid}, "
            f"log {endpoint.log_path})")
