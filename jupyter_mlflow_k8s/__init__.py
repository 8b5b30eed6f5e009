"""jupyter_mlflow_k8s: run notebook cells as tracked jobs, locally or on Kubernetes.

Only entry points live here; importing the package is cheap (no MLflow, no Kubernetes).
"""

from __future__ import annotations

import threading
from typing import Any

__version__ = "0.1.0"


def _warm_mlflow(config: Any) -> None:
    """Import MLflow and open the tracking store in the background, off the first ``%%train``."""
    try:
        from .config import load_settings
        from .tracking import client

        client(load_settings(config).tracking_uri)
    except Exception:  # noqa: S110 - the foreground call will report the problem
        pass


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_mlflow_k8s``: register ``%%train``, ``%jobs`` and ``%job``."""
    from .magics import JobMagics, TrainMagics

    ipython.register_magics(TrainMagics)
    ipython.register_magics(JobMagics)
    threading.Thread(target=_warm_mlflow, args=(ipython.config,), name="jmk-warm-mlflow", daemon=True).start()


def unload_ipython_extension(ipython: Any) -> None:
    """Nothing to undo beyond what IPython does."""
