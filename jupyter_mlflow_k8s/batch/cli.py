"""``jmk batch-predict MODEL_URI --input ... --output ...``: a batch prediction from a shell.

Parses, calls :class:`~.service.BatchService`, prints its progress and the table of shards. Every
flag is checked by :class:`~.request.BatchRequest` before anything runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..jobs import JobService
from .flags import EXAMPLES, add_arguments, request_from
from .request import USAGE
from .service import BatchFailed, BatchService


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
