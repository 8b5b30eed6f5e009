"""IPython magics: thin front doors that parse, call the job service, and render."""

from __future__ import annotations

from .jobs import JobMagics
from .train import TrainMagics

__all__ = ["JobMagics", "TrainMagics"]
