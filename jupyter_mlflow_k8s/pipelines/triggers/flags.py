"""The flags of a new trigger, one list for ``jmk trigger add`` and ``%trigger add``.

Every value is checked by :func:`.store.build_trigger` (all problems at once), so argparse only
collects strings.
"""

from __future__ import annotations

import argparse

from ...util.pairs import parse_pairs
from .store import Trigger, build_trigger


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``jmk trigger add`` and ``%trigger add``, on ``parser``."""
    parser.add_argument("name", help="the trigger's name (lowercase letters, digits and '-', at most 52)")
    parser.add_argument("--pipeline", required=True, help="path of pipeline.yaml")
    parser.add_argument("--on-new-objects", metavar="S3_URL", help="fire on new objects under s3://bucket/prefix/")
    parser.add_argument("--pattern", help="with --on-new-objects: a glob of object names, e.g. '*.parquet'")
    parser.add_argument("--min-new", metavar="N",
                        help="with --on-new-objects: fire once at least N are new (default 1)")
    parser.add_argument(
        "--debounce",
        metavar="DURATION",
        help="with --on-new-objects: wait until no new object came for this long, e.g. 10m",
    )
    parser.add_argument(
        "--param-name",
        metavar="NAME",
        help="with --on-new-objects: the pipeline parameter that gets the new objects' URLs (default new_objects)",
    )
    parser.add_argument("--on-drift", metavar="MODEL@ALIAS", help="fire when the served model's inputs drift")
    parser.add_argument("--psi-above", metavar="PSI", help="with --on-drift: the PSI that counts as drift, e.g. 0.2")
    parser.add_argument(
        "--for", dest="hold", metavar="DURATION", help="with --on-drift: how long PSI must stay above, e.g. 15m"
    )
    parser.add_argument("--cooldown", metavar="DURATION", help="at least this long between two fires, e.g. 6h")
    parser.add_argument("--mode", default="run",
                        help="run (default): run the pipeline; suggest: record and notify only")
    parser.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="a parameter of each run")
    parser.add_argument("--replace", action="store_true", help="replace a trigger of the same name (fresh cursor)")


def trigger_from_args(args: argparse.Namespace) -> Trigger:
    """The trigger the parsed flags of :func:`add_flags` describe, checked (:func:`.store.build_trigger`).

    Raises:
        JMKUsageError: Every problem of the flags and the pipeline, at once.
    """
    return build_trigger(
        args.pipeline,
        name=args.name,
        on_new_objects=args.on_new_objects,
        pattern=args.pattern,
        min_new=args.min_new,
        debounce=args.debounce,
        param=args.param_name,
        on_drift=args.on_drift,
        psi_above=args.psi_above,
        hold=args.hold,
        cooldown=args.cooldown,
        mode=args.mode,
        overrides=parse_pairs(args.param, "-p"),
    )
