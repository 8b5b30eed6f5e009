"""The endpoints table of ``%serve list`` and ``jmk serve list``: aligned text in terminals, HTML in notebooks."""

from __future__ import annotations

import time
from typing import Any

from ..util.durations import short_age
from .table import Table


class EndpointTable(Table):
    """``jmk serve list`` and ``%serve list``: text in terminals, an HTML table in notebooks.

    An endpoint is anything with ``name``, ``status``, ``url``, ``model_uri``, ``pid`` and
    ``started`` (epoch seconds), a local or a Kubernetes one.
    """

    columns = ("name", "status", "url", "model", "pid", "age")
    css_class = "jmk-EndpointTable"
    empty_message = "No endpoints yet. Start one with %serve MODEL_URI (or `jmk serve MODEL_URI`)."

    def __init__(self, endpoints: list[Any]) -> None:
        super().__init__(
            (e.name, e.status, e.url, e.model_uri, e.pid or "", short_age(time.time() - e.started)) for e in endpoints
        )
