"""``%trigger``: add, list, remove and read the history of pipeline triggers from a notebook.

The same flags as ``jmk trigger``; the embedded scheduler (``jmk scheduler``) evaluates the triggers.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from IPython.core.magic import Magics, line_magic, magics_class

from ..exceptions import JMKUsageError
from .common import split_words, user_errors

USAGE = (
    "%trigger add NAME --pipeline pipeline.yaml (--on-new-objects s3://BUCKET/PREFIX/ [--pattern '*.parquet'] "
    "[--min-new N] [--debounce 10m] | --on-drift MODEL@ALIAS --psi-above 0.2 --for 15m) [--cooldown 6h] "
    "[--mode run|suggest] [-p NAME=VALUE ...] | %trigger list | %trigger remove NAME | %trigger history NAME"
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises a usage error instead of exiting the kernel."""

    def error(self, message: str) -> NoReturn:
        raise JMKUsageError(f"{message}. Usage: {USAGE}")


def _add_parser() -> _Parser:
    from ..pipelines.triggers.flags import add_flags

    parser = _Parser(prog="%trigger add", add_help=False)
    add_flags(parser)
    return parser


@magics_class
class TriggerMagics(Magics):
    """``%trigger add|list|remove|history``."""

    @line_magic
    @user_errors
    def trigger(self, line: str) -> Any:
        """Run a pipeline when new objects land in S3, or when a served model's inputs drift.

        Examples
        --------
        ::

            %trigger add new-data --pipeline pipeline.yaml --on-new-objects s3://bucket/in/ --min-new 3 --debounce 10m
            %trigger add drifted --pipeline pipeline.yaml --on-drift churn@champion --psi-above 0.2 --for 15m
            %trigger list
            %trigger history new-data
            %trigger remove new-data

        ``add`` returns the stored trigger, ``history`` its entries (a list of dicts); ``jmk scheduler``
        evaluates the triggers.
        """
        from ..pipelines.triggers import add_trigger, read_history, remove_trigger
        from ..pipelines.triggers.flags import trigger_from_args
        from ..pipelines.triggers.status import trigger_rows

        words = split_words(line)
        if not words or words[0] not in ("add", "list", "remove", "history"):
            raise JMKUsageError(f"Usage: {USAGE}")
        command, rest = words[0], words[1:]
        if command == "add":
            args = _add_parser().parse_args(rest)
            trigger = trigger_from_args(args)
            add_trigger(trigger, replace=args.replace)
            print(f"added trigger {trigger.name}: {trigger.mode} {trigger.pipeline} on {trigger.condition}")
            return trigger
        if command == "list":
            if rest:
                raise JMKUsageError(f"%trigger list takes no arguments. Usage: {USAGE}")
            rows = trigger_rows()
            for row in rows:
                trigger, cursor = row["trigger"], row["cursor"]
                print(
                    f"{trigger.name}  {trigger.mode}  last fire {cursor.last_fire or '-'}  {row['state']}  "
                    f"{trigger.condition}"
                )
            if not rows:
                print("no triggers: add one with %trigger add NAME --pipeline pipeline.yaml --on-new-objects s3://...")
            return None
        if len(rest) != 1:
            raise JMKUsageError(f"%trigger {command} takes one trigger NAME. Usage: {USAGE}")
        if command == "remove":
            removed = remove_trigger(rest[0])
            print(f"removed trigger {removed.name}")
            return None
        return read_history(rest[0])
