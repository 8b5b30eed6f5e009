"""Backends run jobs: ``local`` (processes on this machine) and, later, ``kubernetes``."""

from __future__ import annotations

from .base import Backend, backends, get_backend

__all__ = ["Backend", "backends", "get_backend"]
