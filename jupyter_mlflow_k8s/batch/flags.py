"""The flags of a batch prediction, one list for ``jmk batch-predict`` and ``%batch_predict``.

Every value is checked by :class:`~.request.BatchRequest`, so argparse only collects strings.
"""

from __future__ import annotations

from typing import Any

from .request import BACKENDS, OUTPUT_FORMATS, BatchRequest

EXAMPLES = """examples:
  jmk batch-predict models:/churn@champion --input 's3://data/in/*.parquet' --output s3://data/scored/ --shards 8
  jmk batch-predict models:/churn/3 --input ./in/ --output ./scored/ --output-format csv
  jmk batch-predict models:/vision@prod --input 's3://b/in/*.parquet' --output s3://b/out/ --shards 4 --gpus 1 \\
      --backend kubernetes --error-threshold 0.5%
Running the same command again finishes a batch: shards with a success marker are skipped."""


def add_arguments(parser: Any) -> None:
    """Add the flags of a batch prediction to an argparse parser (``jmk``'s, or a magic's)."""
    add = parser.add_argument
    add("--input", help="the files: a glob ('s3://b/in/*.parquet'), a folder ending in /, or one file")
    add("--output", help="the prefix the predictions are written under (s3://b/out/ or a folder)")
    add("--shards", default="1", help="how many jobs share the files (each reads whole files); default 1")
    add("--gpus", default="0", help="GPUs per shard job")
    add("--backend", help=f"where the shard jobs run: {' or '.join(BACKENDS)} (default: the configured backend)")
    add("--error-threshold", default="0.01", help="the fraction of bad rows allowed (0.01 or 1%%); default 0.01")
    add("--output-format", help=f"{' or '.join(OUTPUT_FORMATS)} (default: the inputs' format)")
    add("--retries", default="2", help="how often a failed shard job is tried again; default 2")
    add("--replan", action="store_true", help="discard an earlier batch's outputs under --output whose plan differs")
    add("--experiment", help="the MLflow experiment of the batch's run")


def request_from(model: str | None, args: Any) -> BatchRequest:
    """The checked request from parsed flags."""
    return BatchRequest.parse(
        model, args.input, args.output, args.shards, args.gpus, args.backend, args.error_threshold,
        args.output_format, args.retries, args.replan, args.experiment,
    )  # fmt: skip
