"""Hyperparameter sweeps of one cell: a search space, trials as jobs, a parent MLflow run, pruning.

:mod:`.space` parses ``--sweep``/``--objective`` and plans or asks for the trials' params (Optuna for
``tpe`` and pruning, imported only then); :mod:`.record` keeps each sweep's folder;
:mod:`.controller` is the process that runs the trials; :mod:`.service` is what front doors call.
"""

from __future__ import annotations

from .record import SweepStore, is_sweep_id
from .service import SweepRequest, SweepService, job_ids, listed

__all__ = ["SweepRequest", "SweepService", "SweepStore", "is_sweep_id", "job_ids", "listed"]
