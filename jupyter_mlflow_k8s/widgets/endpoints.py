"""The endpoints table of ``%serve list`` and ``jmk serve list``: aligned text in terminals, HTML in notebooks."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from ..util.durations import short_age
from .table import Table


class EndpointTable(Table):
    """``jmk serve list`` and ``%serve list``: text in terminals, an HTML table in notebooks.

    An endpoint is anything with ``name``, ``status``, ``url``, ``model_uri``, ``pid`` and ``started``
    (epoch seconds, or None): a local ``Endpoint`` record or an ``EndpointSummary`` of any target. The
    backend column shows its ``where`` (``kubernetes team-a 2/2``) or ``backend``; ``unreachable``
    targets (``{target: why}``) are named under the table.
    """

    columns = ("name", "status", "url", "model", "pid", "age", "backend")
    css_class = "jmk-EndpointTable"
    empty_message = "No endpoints yet. Start one with %serve MODEL_URI (or `jmk serve MODEL_URI`)."

    def __init__(self, endpoints: Sequence[Any], unreachable: dict[str, str] | None = None) -> None:
        now = time.time()
        super().__init__(
            (e.name, e.status, e.url, e.model_uri, e.pid or "", short_age(now - e.started) if e.started else "",
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
        notes = "".join(f"<p class='jmk-Note'>{html.escape(note)}</p>" for note in self.notes)
        return super()._repr_html_() + notes
