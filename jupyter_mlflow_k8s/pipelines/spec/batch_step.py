"""The ``batch_predict`` step kind of ``pipeline.yaml``: a batch prediction as a step of a pipeline.

::

    steps:
      score:
        needs: [train]
        batch_predict:
          model: models:/churn@champion
          input: "s3://data/{{ parameters.day }}/*.parquet"
          output: "s3://scored/{{ parameters.day }}/"
          shards: 4

The step runs the package's own notebook (``batch/step.ipynb``) with these values as its parameters,
so templates, ``needs``, retries and the step's child run work as for any step; the notebook runs
:class:`~jupyter_mlflow_k8s.batch.BatchService`, which starts the shard jobs on the backend named
inside ``batch_predict`` and publishes ``output``, ``rows``, ``errors`` and ``batch_run_id``. Such a
step is not cached by default (its inputs are files that change under the same names); the batch
itself skips the shards that finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...batch import BatchRequest
from ...exceptions import JMKUsageError
from .base import _did_you_mean, _kind

BATCH_KEYS = ("model", "input", "output", "shards", "gpus", "backend", "error_threshold", "output_format", "retries")
#: Step keys that would say where the step's notebook runs: the shards' place is said inside batch_predict.
NOT_WITH_BATCH = ("notebook", "backend", "image", "resources", "parameters")
STEP_NOTEBOOK = Path(__file__).resolve().parents[2] / "batch" / "step.ipynb"


def batch_step(raw: Mapping[str, Any], where: str, problems: list[str]) -> tuple[Path, dict[str, Any]]:
    """The notebook and parameters of a ``batch_predict`` step; what is wrong goes to ``problems``."""
    batch = raw.get("batch_predict")
    for key in NOT_WITH_BATCH:
        if key in raw:
            hint = (
                "give backend: and gpus: inside batch_predict (they are the shard jobs')"
                if key in ("backend", "resources", "image")
                else "a step is either a notebook or a batch_predict"
            )
            problems.append(f"{where}.{key}: not with batch_predict: {hint}")
    if not isinstance(batch, Mapping):
        problems.append(
            f"{where}.batch_predict: expected a mapping such as {{model: models:/churn@champion, "
            f"input: 's3://b/in/*.parquet', output: s3://b/out/}}, found {_kind(batch)}"
        )
        return STEP_NOTEBOOK, {}
    parameters = {str(k): v for k, v in batch.items()}
    for key in parameters:
        if key not in BATCH_KEYS:
            problems.append(
                f"{where}.batch_predict.{key}: unknown key{_did_you_mean(key, BATCH_KEYS)}. "
                f"Known keys: {', '.join(BATCH_KEYS)}."
            )
    if not any("{{" in str(v) for v in parameters.values()):  # templates are checked once resolved, at run time
        try:
            given = {k: v for k, v in parameters.items() if k in BATCH_KEYS}
            BatchRequest.parse(given.pop("model", None), given.pop("input", None), given.pop("output", None), **given)
        except JMKUsageError as exc:
            said = str(exc).split("\n")[1:-1]
            problems += [f"{where}.batch_predict: {line.strip().removeprefix('- ')}" for line in said]
    return STEP_NOTEBOOK, {k: v for k, v in parameters.items() if k in BATCH_KEYS}
