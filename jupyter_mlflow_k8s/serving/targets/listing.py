"""Endpoints of several targets at once: a listing that never fails for one target being down, and its table.

A target that is not configured (no kubeconfig) is skipped; one that does not answer (the API server
down) is named in ``unreachable`` with why, and the others are listed all the same.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import JMKError, NotFoundError
from ...widgets.table import Table
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


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


class EndpointTable(Table):
    """``jmk serve list`` and ``%serve list``: text in terminals, an HTML table in notebooks.

    Takes local ``Endpoint`` records or :class:`EndpointSummary` objects; ``unreachable`` targets are
    named under the table.
    """

    columns = ("name", "status", "url", "model", "pid", "age", "backend")
    css_class = "jmk-EndpointTable"
    empty_message = "No endpoints yet. Start one with %serve MODEL_URI (or `jmk serve MODEL_URI`)."

    def __init__(self, endpoints: Sequence[Any], unreachable: dict[str, str] | None = None) -> None:
        now = time.time()
        super().__init__(
            (e.name, e.status, e.url, e.model_uri, e.pid or "", _age(now - e.started) if e.started else "",
             getattr(e, "where", None) or getattr(e, "backend", "local")) for e in endpoints
        )
        self.unreachable = dict(unreachable or {})

    @property
    def notes(self) -> list[str]:
        """One line per target that did not answer."""
        return [f"{target}: not listed, unreachable: {why}" for target, why in self.unreachable.items()]

    def __repr__(self) -> str:
        return "\n".join([super().__repr__(), *self.notes])

    def _repr_html_(self) -> str:
        import html

        notes = "".join(f"<p class='jmk-Note'>{html.escape(note)}</p>" for note in self.notes)
        return super()._repr_html_() + notes
