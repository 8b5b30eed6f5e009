"""The serving errors that every target raises alike: no endpoint of that name.

A leaf of the serving package: the local manager, the Kubernetes layer and the targets all import it,
so it imports nothing of theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import NotFoundError

__all__ = ["EndpointNotFound"]


class EndpointNotFound(NotFoundError):
    """No endpoint called ``name`` (on ``backend``, or in ``namespace``); the message names the known ones.

    ``known`` is None when the caller did not list them; ``hint`` says how to list or start one.
    """

    def __init__(self, name: str, known: Sequence[str] | None = None, *, namespace: str | None = None,
                 backend: str | None = None, hint: str = "") -> None:
        where = f" in namespace {namespace!r}" if namespace else f" on {backend}" if backend else ""
        if known is None:
            listed = ""
        elif known:
            listed = f" Endpoints{' there' if where else ''}: {', '.join(known)}."
        else:
            listed = " There are none." if where else " There are none yet."
        super().__init__(f"No endpoint {name!r}{where}.{listed}{hint}")
        self.name = name
        self.known = list(known or [])
        self.namespace = namespace
        self.backend = backend
