"""The package's version, in a module of its own so that reading it imports nothing else (hatch reads it too)."""

from __future__ import annotations

__version__ = "0.1.0"
