"""Endpoint targets: where inference servers run (``local`` processes, ``kubernetes`` Deployments, plugins).

The interface is :class:`~.base.EndpointTarget`; pick one with :func:`get_target`. This package's
``__init__`` imports no implementation (they load on first use, by name).
"""

from __future__ import annotations

from .base import EndpointSummary, EndpointTarget
from .registry import get_target, target_class, target_names, targets

__all__ = ["EndpointSummary", "EndpointTarget", "get_target", "target_class",
           "target_names", "targets"]
