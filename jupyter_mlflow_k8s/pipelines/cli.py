"""``jmk pipeline run|validate|show|list``: the pipeline commands of the ``jmk`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..exceptions import JMKUsageError
from .model import PipelineRun, StepResult

MARKS = {"succeeded": "ok", "cached": "cached", "failed": "FAILED", "skipped": "skipped", "running": "..."}


def _overrides(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise JMKUsageError(f"-p {pair!r} is not NAME=VALUE. Write it as -p lr=0.1.")
        out[name.strip()] = value
    return out


def _duration(step: StepResult) -> str:
    if step.started is None:
        return ""
    return f"{(step.finished or time.time()) - step.started:.1f} s"


def format_run(run: PipelineRun, explain: bool = False) -> str:
    """A run as a table: step, state, duration, attempts, outputs (and why, with ``explain``)."""
    rows = [("step", "state", "time", "outputs")]
    for step in run.steps.values():
        outputs = ", ".join(f"{k}={v!r}" for k, v in step.outputs.items())
        rows.append((step.name, step.state, _duration(step), outputs[:80]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"pipeline {run.pipeline} run {run.run_id}: {run.state}"
             + (f" (MLflow run {run.mlflow_run_id})" if run.mlflow_run_id else "")]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows]
    if explain:
        lines.append("why:")
        lines += [f"  {s.name}: {s.reason}" for s in run.steps.values()]
    failed = [s for s in run.steps.values() if s.state == "failed"]
    lines += [f"  {s.name} failed: {s.reason}" for s in failed if not explain]
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    from .engine import PipelineEngine
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
        run = PipelineEngine().run(pipeline, resume=args.resume, on_event=progress, run_id=args.run_id)
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
    from .engine import PipelineEngine

    print(format_run(PipelineEngine().load(args.run_id), explain=True))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .engine import PipelineEngine

    runs = PipelineEngine().list()[: args.limit]
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


def add_commands(sub: Any) -> None:
    """Add ``jmk pipeline ...`` to the ``jmk`` parser's subcommands."""
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
    from .schedule_cli import add_schedule_commands

    add_schedule_commands(commands)

