"""``%batch_predict``: a batch prediction over CSV or Parquet files, in shard jobs, from a notebook.

Parses (the flags of ``jmk batch-predict``, from one list), calls the batch service and prints its
progress and the table of shards; returns the report.
"""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from ..batch.flags import add_arguments, request_from
from ..batch.request import USAGE
from ..batch.service import BatchFailed, BatchService
from .common import service_for, split_words, user_errors


def _parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(prog="%batch_predict", usage=USAGE.replace("jmk batch-predict", "%batch_predict"))
    parser.add_argument("model_uri", nargs="?", metavar="MODEL_URI", help="models:/NAME@ALIAS, models:/NAME/VERSION")
    add_arguments(parser)
    return parser


@magics_class
class BatchMagics(Magics):
    """``%batch_predict``."""

    @line_magic
    @user_errors
    def batch_predict(self, line: str) -> Any:
        """Predict many CSV or Parquet files with a model, in shard jobs; returns the report of the shards.

        Each shard job reads a fixed list of whole files, loads the model as ``%serve`` does (the same
        predictions), and writes one output object per input file, then a success marker; running the
        same line again skips finished shards. Rows the model cannot take go to ``_quarantine/`` under
        the output with their reason; the batch fails only when they are more than
        ``--error-threshold`` of all rows. One MLflow run holds rows, bad rows and rows/s per shard.

        Examples
        --------
        ::

            %batch_predict models:/churn@champion --input 's3://data/in/*.parquet' --output s3://data/out/ --shards 4
            report = %batch_predict models:/churn/3 --input ./in/ --output ./scored/ --output-format csv
            %batch_predict models:/vision@prod --input 's3://b/in/' --output s3://b/out/ --gpus 1 --backend kubernetes
        """
        args = _parser().parse_args(split_words(line))
        request = request_from(args.model_uri, args)
        try:
            report = BatchService(service_for(self.shell)).run(request, say=print)
        except BatchFailed as exc:
            print(exc.report.table())
            raise
        print(report.table())
        return report
