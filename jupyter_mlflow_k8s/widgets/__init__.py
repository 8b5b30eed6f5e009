"""Notebook displays for jobs: ipywidgets when available, plain text otherwise."""

from __future__ import annotations

from .status import JobStatusView

__all__ = ["JobStatusView"]
