"""``jmk batch-predict MODEL_URI --input ... --output ...``: a batch prediction from a shell.

Parses, calls :class:`~.service.BatchService`, prints its progress and the table of shards. Every
flag is checked by :class:`~.request.BatchRequest` before anything runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..jobs import JobService
from .request import BACKENDS, OUTPUT_FORMATS, USAGE, BatchRequest
from .service import BatchFailed, BatchService

EXAMPLES = """examples:
  jmk batch-predict models:/churn@champion --input 's3://data/in/*.parquet' --output s3://data/scored/ --shards 8
  jmk batch-predict models:/churn/3 --input ./in/ --output ./scored/ --output-format csv
  jmk batch-predict models:/vision@prod --input 's3://b/in/*.parquet' --output s3://b/out/ --shards 4 --gpus 1 \\
      --backend kubernetes --error-threshold 0.5%
Running the same command again finishes a batch: shards with a success marker are skipped."""


def add_arguments(parser: Any, add: Any = None) -> None:
    """The flags of a batch prediction (``add``: how to add one, for magics; default ``parser.add_argument``)."""
    add = add or parser.add_argument
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


def _cmd_batch_predict(service: JobService, args: argparse.Namespace) -> int:
    request = request_from(args.model_uri, args)
    try:
        report = BatchService(service).run(request, say=lambda line: print(line, flush=True))
    except BatchFailed as exc:
        print(exc.report.table())
        raise
    print(report.table())
    return 0


def add_batch_command(sub: Any) -> None:
    """Add ``jmk batch-predict`` to ``jmk``'s subcommands."""
    parser = sub.add_parser(
        "batch-predict", help="predict many CSV or Parquet files with a registered model, in shard jobs",
        usage=USAGE, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("model_uri", nargs="?", metavar="MODEL_URI", help="models:/NAME@ALIAS, models:/NAME/VERSION")
    add_arguments(parser)
    parser.set_defaults(func=_cmd_batch_predict)
