# PYTHON_ARGCOMPLETE_OK  (argcomplete: `eval "$(register-python-argcomplete jmk)"` completes jmk)
"""``jmk``: the command line, and its one error rule. Parses, calls the core services, prints.

This module composes the commands (jobs here; ``jmk pipeline``, its schedules, ``jmk scheduler``,
``jmk serve`` and ``jmk batch-predict`` from their packages) and owns how an error ends the command: an error of a
family, or one that :func:`~jupyter_mlflow_k8s.errors.translate` recognises (MLflow,
Kubernetes, storage, a server that does not answer), prints ``jmk: <message>`` and exits with
the family's ``exit_status``. Anything else is a bug and keeps its traceback. It never imports
the magics: tables come from :mod:`~jupyter_mlflow_k8s.widgets`.

Settings: the user's Jupyter configuration (:func:`~jupyter_mlflow_k8s.config.jupyter_config`),
read once here and handed to every command as ``args.config`` (``c.JMKSettings``,
``c.KubernetesBackend`` ...), so that ``jmk`` builds jobs, CronJobs and endpoints as the magics
and the sidebar do; then the environment variables.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from .config import jupyter_config, load_settings
from .errors import translate
from .jobs import JobService


def _cmd_jobs(service: JobService, args: argparse.Namespace) -> int:
    from .sweeps import listed
    from .widgets.jobs import JobTable

    print(repr(JobTable(*listed(service, args.limit))))
    return 0


def _cmd_logs(service: JobService, args: argparse.Namespace) -> int:
    from .sweeps import SweepService, is_sweep_id

    if is_sweep_id(args.job_id):  # a sweep's own log: its controller's
        print(SweepService(service, args.config).controller_log(args.job_id), end="")
        return 0
    if not args.follow:
        print(service.read_log(args.job_id, args.rank), end="")
        return 0
    from .models import JobRecord

    for item in service.follow(args.job_id, rank=args.rank):
        if isinstance(item, JobRecord):
            return 0 if item.state.value == "succeeded" else 1
        sys.stdout.write(item.decode(errors="replace"))
        sys.stdout.flush()
    return 0


def _cmd_cancel(service: JobService, args: argparse.Namespace) -> int:
    from .sweeps import SweepService, is_sweep_id

    if is_sweep_id(args.job_id):  # every trial of the sweep
        sweep = SweepService(service, args.config).cancel(args.job_id)
        print(f"sweep {sweep['sweep_id']}: {sweep['state']} {sweep.get('message', '')}".rstrip())
        return 0 if sweep["state"] in ("cancelled", "succeeded", "failed") else 1
    record = service.cancel_and_wait(args.job_id)
    print(f"job {record.job_id}: {record.state.value} {record.message}".rstrip())
    return 0


def _job_ids(**_: Any) -> list[str]:
    """argcomplete: the ids of jobs and sweeps, running ones first (read from the records only)."""
    from .sweeps import job_ids

    return job_ids(JobService(load_settings(jupyter_config())))


def build_parser() -> argparse.ArgumentParser:
    """The ``jmk`` argument parser."""
    parser = argparse.ArgumentParser(prog="jmk", description="Jobs, runs and pipelines from notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    jobs = sub.add_parser("jobs", help="list jobs (of every kernel) under the state directory")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(func=_cmd_jobs)
    logs = sub.add_parser("logs", help="print a job's log")
    logs.add_argument("job_id").completer = _job_ids  # type: ignore[attr-defined]
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--rank", type=int, help="only the lines of this rank of a distributed job")
    logs.set_defaults(func=_cmd_logs)
    cancel = sub.add_parser("cancel", help="stop a job, or every trial of a sweep (s-...)")
    cancel.add_argument("job_id").completer = _job_ids  # type: ignore[attr-defined]
    cancel.set_defaults(func=_cmd_cancel)
    from .batch.cli import add_batch_command
    from .pipelines.cli import add_commands
    from .pipelines.schedule_cli import add_schedule_commands, add_scheduler_command
    from .pipelines.trigger_cli import add_trigger_commands
    from .serving.cli import add_serve_command

    add_schedule_commands(add_commands(sub))
    add_scheduler_command(sub, drift_reader=_drift_reader)
    add_trigger_commands(sub)
    add_serve_command(sub)
    add_batch_command(sub)
    return parser


def _drift_reader(config: Any) -> Callable[[str, str], Any]:
    """The drift triggers' reader of a served model's PSI: the serving side's, in the pipelines' shape."""
    from dataclasses import asdict

    from .pipelines.triggers import DriftReading
    from .serving.drift_reading import DriftReader

    reader = DriftReader(config=config)
    return lambda model, alias: DriftReading(**asdict(reader(model, alias)))


def report(exc: BaseException) -> int | None:
    """Print ``jmk: <message>`` for an error of a family (or a translated one); its exit status, else ``None``."""
    error = translate(exc)
    if error is None:
        return None
    print(f"jmk: {error}", file=sys.stderr)
    return error.exit_status


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jmk``."""
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: answer and exit
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    args.config = jupyter_config()
    try:
        if args.command in ("pipeline", "scheduler", "serve", "trigger"):
            return int(args.func(args))
        return int(args.func(JobService(load_settings(args.config), backend_config=args.config), args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        status = report(exc)
        if status is None:
            raise
        return status


if __name__ == "__main__":
    sys.exit(main())
