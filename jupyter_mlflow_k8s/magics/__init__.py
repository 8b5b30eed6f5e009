"""IPython magics: thin front doors that parse, call the job service, and render."""

from __future__ import annotations

from .jobs import JobMagics
from .pipeline import PipelineMagics
from .registry import RegistryMagics
from .runs import RunsMagics
from .train import TrainMagics

__all__ = ["JobMagics", "PipelineMagics", "RegistryMagics", "RunsMagics", "TrainMagics"]
