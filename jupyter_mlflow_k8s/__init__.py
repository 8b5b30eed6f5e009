"""jupyter_mlflow_k8s: run notebook cells as tracked jobs, locally or on Kubernetes.

Only entry points live here; importing the package is cheap (no MLflow, no Kubernetes).
"""

from __future__ import annotations

import threading
from typing import Any

__version__ = "0.1.0"


def _warm_mlflow() -> None:
    """Import MLflow in the background so the first ``%%train`` does not wait for it."""
    try:
        import mlflow.tracking  # noqa: F401
    except Exception:  # noqa: S110 - the foreground import will report the problem
        pass


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_mlflow_k8s``: register ``%%train``, ``%jobs`` and ``%job``."""
    from .magics import JobMagics, TrainMagics

    ipython.register_magics(TrainMagics)
    ipython.register_magics(JobMagics)
    threading.Thread(target=_warm_mlflow, name="jmk-warm-mlflow", daemon=True).start()


def unload_ipython_extension(ipython: Any) -> None:
    """Nothing to undo beyond what IPython does."""
