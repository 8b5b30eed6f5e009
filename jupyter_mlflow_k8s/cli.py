"""``jmk``: the command line. Parses, calls the core services, prints."""

from __future__ import annotations

import argparse
import sys

from .exceptions import JMKError
from .jobs import JobService


def _cmd_jobs(service: JobService, args: argparse.Namespace) -> int:
    from .magics.jobs import JobTable  # plain formatting; IPython is a dependency anyway

    print(repr(JobTable(service.list()[: args.limit])))
    return 0


def _cmd_logs(service: JobService, args: argparse.Namespace) -> int:
    if not args.follow:
        print(service.read_log(args.job_id), end="")
        return 0
    from .models import JobRecord

    for item in service.follow(args.job_id):
        if isinstance(item, JobRecord):
            return 0 if item.state.value == "succeeded" else 1
        sys.stdout.write(item.decode(errors="replace"))
        sys.stdout.flush()
    return 0


def _cmd_cancel(service: JobService, args: argparse.Namespace) -> int:
    record = service.cancel_and_wait(args.job_id)
    print(f"job {record.job_id}: {record.state.value} {record.message}".rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``jmk`` argument parser."""
    parser = argparse.ArgumentParser(prog="jmk", description="Jobs, runs and pipelines from notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    jobs = sub.add_parser("jobs", help="list jobs (of every kernel) under the state directory")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(func=_cmd_jobs)
    logs = sub.add_parser("logs", help="print a job's log")
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(func=_cmd_logs)
    cancel = sub.add_parser("cancel", help="stop a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=_cmd_cancel)
    from .pipelines.cli import add_commands
    from .pipelines.schedule_cli import add_scheduler_command
    from .serving.cli import add_serve_command

    add_commands(sub)
    add_scheduler_command(sub)
    add_serve_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jmk``."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("pipeline", "scheduler", "serve"):
            return int(args.func(args))
        return int(args.func(JobService(), args))
    except JMKError as exc:
        print(f"jmk: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
