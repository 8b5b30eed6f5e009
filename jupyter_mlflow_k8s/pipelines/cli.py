"""``jmk pipeline run|validate|show|list``: the pipeline commands of the ``jmk`` command line.

Steps on another backend get ``args.config``'s settings (the user's traitlets configuration that
``jmk`` read), as from the magics.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from ..util.durations import elapsed_text
from ..util.pairs import parse_pairs
from ..widgets.pipelines import MARKS, format_run
from .model import PipelineRun, StepResult

if TYPE_CHECKING:
    from .engine import PipelineEngine


def _overrides(pairs: list[str] | None) -> dict[str, str]:
    """``-p NAME=VALUE`` flags as a dict (:func:`~jupyter_mlflow_k8s.util.pairs.parse_pairs`)."""
    return parse_pairs(pairs, "-p")


def _engine(args: argparse.Namespace) -> PipelineEngine:
    """The engine, its settings and its steps' backends from ``args.config`` (none: the environment's)."""
    from ..config import load_settings
    from ..jobs import JobService
    from .engine import PipelineEngine

    config = getattr(args, "config", None)
    settings = load_settings(config)
    return PipelineEngine(settings, service=JobService(settings, backend_config=config))


def _duration(step: StepResult) -> str:
    return elapsed_text(step.started, step.finished)


def _cmd_run(args: argparse.Namespace) -> int:
    from .spec import load_pipeline

    pipeline = load_pipeline(args.pipeline, _overrides(args.param))
    if args.max_parallel:
        from dataclasses import replace

        pipeline = replace(pipeline, max_parallel=args.max_parallel)

    from tqdm import tqdm

    # A progress bar over the steps in a terminal; plain lines (one per step event) in logs and pipes.
    bar = tqdm(total=len(pipeline.steps), unit="step", file=sys.stderr) if sys.stderr.isatty() else None

    def progress(run: PipelineRun, step: StepResult) -> None:
        if step.state == "pending":
            return
        line = f"[{run.run_id}] {step.name}: {MARKS.get(step.state, step.state)} {_duration(step)}".rstrip()
        if bar is None:
            print(line, flush=True)
            return
        bar.set_description(line)
        if step.state != "running":
            bar.update(1)

    try:
        run = _engine(args).run(pipeline, resume=args.resume, on_event=progress, run_id=args.run_id)
    finally:
        if bar is not None:
            bar.close()
    print(format_run(run, explain=args.explain))
    return 0 if run.state == "succeeded" else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    from .spec import load_pipeline, validate

    pipeline = load_pipeline(args.pipeline, _overrides(args.param))
    validate(pipeline, cron=args.cron)
    print(f"pipeline {pipeline.name}: {len(pipeline.steps)} steps, valid")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    print(format_run(_engine(args).load(args.run_id), explain=True))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    runs = _engine(args).list()[: args.limit]
    for run in runs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created))
        counts: dict[str, int] = {}
        for step in run.steps.values():
            counts[step.state] = counts.get(step.state, 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        print(f"{run.run_id}  {when}  {run.pipeline:<20} {run.state:<10} {summary}")
    if not runs:
        print("no pipeline runs yet")
    return 0


def add_commands(sub: Any) -> Any:
    """Add ``jmk pipeline ...`` to the ``jmk`` parser's subcommands; return the pipeline's subcommands.

    The ``jmk`` composition (``jupyter_mlflow_k8s.cli``) adds the schedule commands to what this returns.
    """
    parser = sub.add_parser("pipeline", help="run, check and inspect notebook pipelines (pipeline.yaml)")
    commands = parser.add_subparsers(dest="pipeline_command", required=True)
    run = commands.add_parser("run", help="run a pipeline (steps cached by content)")
    run.add_argument("pipeline", help="path of pipeline.yaml")
    run.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="override a pipeline parameter")
    run.add_argument("--resume", metavar="RUN_ID", help="continue this earlier run from its failed steps")
    run.add_argument("--explain", action="store_true", help="say why each step ran or was skipped")
    run.add_argument("--run-id", help="the new run's id (default: a fresh one); the scheduler names its runs")
    run.add_argument("--max-parallel", type=int, help="steps running at once (default: the pipeline's, 4)")
    run.set_defaults(func=_cmd_run)
    check = commands.add_parser("validate", help="check a pipeline without running it")
    check.add_argument("pipeline")
    check.add_argument("-p", "--param", action="append", metavar="NAME=VALUE")
    check.add_argument("--cron", help="also check this schedule")
    check.set_defaults(func=_cmd_validate)
    show = commands.add_parser("show", help="a run's steps, outputs and why each ran")
    show.add_argument("run_id")
    show.set_defaults(func=_cmd_show)
    listing = commands.add_parser("list", help="recent pipeline runs")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=_cmd_list)
    return commands

