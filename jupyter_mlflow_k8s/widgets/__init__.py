"""Notebook displays for jobs: ipywidgets when available, plain text otherwise."""

from __future__ import annotations

from .status import JobStatusView
from .sweep import SweepTable, SweepView

__all__ = ["JobStatusView", "SweepTable", "SweepView"]
