"""Batch prediction: a registered model over many CSV or Parquet files, in shards run as jobs.

:mod:`.plan` fixes which files each shard reads, :mod:`.worker` is what a shard's job runs,
:mod:`.service` runs the shards and judges the whole; :mod:`.cli` is ``jmk batch-predict``.
"""

from __future__ import annotations

from .request import BatchRequest
from .service import BatchFailed, BatchReport, BatchService

__all__ = ["BatchFailed", "BatchReport", "BatchRequest", "BatchService"]
