"""``jmk trigger add|list|remove|history``: pipelines run on new S3 objects or on a served model's drift.

The embedded scheduler (``jmk scheduler``) evaluates the triggers; these commands only store,
show and remove them. Every flag is checked (all problems at once) before anything is stored.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from .triggers.flags import add_flags


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}Z"


def _cmd_add(args: argparse.Namespace) -> int:
    from .schedule import scheduler_pid
    from .triggers import add_trigger
    from .triggers.flags import trigger_from_args
    from .triggers.store import span

    trigger = trigger_from_args(args)
    add_trigger(trigger, replace=args.replace)
    cooldown = f", cooldown {span(trigger.cooldown)}" if trigger.cooldown else ""
    print(f"added trigger {trigger.name}: {trigger.mode} {trigger.pipeline} on {trigger.condition}{cooldown}")
    if scheduler_pid() is None:
        print("no scheduler is running for this state directory: start one with `jmk scheduler`")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .schedule import scheduler_pid
    from .triggers.status import trigger_rows

    rows = trigger_rows()
    if not rows:
        print(
            "no triggers: add one with `jmk trigger add NAME --pipeline pipeline.yaml "
            "--on-new-objects s3://bucket/prefix/`"
        )
        return 0
    table = [("name", "mode", "last check", "last fire", "next eligible", "state", "condition")]
    for row in rows:
        trigger, cursor = row["trigger"], row["cursor"]
        table.append(
            (
                trigger.name,
                trigger.mode,
                _when(cursor.last_check),
                _when(cursor.last_fire),
                _when(row["next_eligible"]),
                row["state"],
                trigger.condition,
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1])
    pid = scheduler_pid()
    print(
        "no scheduler is running for this state directory: start one with `jmk scheduler`"
        if pid is None
        else f"scheduler running (pid {pid or '?'})"
    )
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from .triggers import remove_trigger

    trigger = remove_trigger(args.name)
    print(f"removed trigger {trigger.name} ({trigger.condition}); a run it started carries on")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from .triggers import read_history

    entries = read_history(args.name, limit=args.limit)
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    if not entries:
        print(f"trigger {args.name} has not fired yet")
    for entry in entries:
        what = entry.get("event", "?")
        if "objects" in entry:
            detail = (
                f"{entry.get('count', len(entry['objects']))} objects: "
                + ", ".join(entry["objects"][:3])
                + (", ..." if len(entry["objects"]) > 3 else "")
            )
        elif "psi" in entry:
            detail = f"PSI {entry['psi']:.3f} above since {entry.get('above_since')}"
        elif "exit" in entry:
            detail = "succeeded" if entry["exit"] == 0 else f"failed (exit {entry['exit']})"
        else:
            detail = ""
        run = entry.get("run_id") or ""
        print(f"{entry.get('time', '?')}  {what:<17} {run:<40} {detail}".rstrip())
    return 0


def add_trigger_commands(sub: Any) -> None:
    """Add ``jmk trigger add|list|remove|history`` to the ``jmk`` parser's subcommands."""
    parser = sub.add_parser("trigger", help="run a pipeline when new objects land in S3 or a served model drifts")
    commands = parser.add_subparsers(dest="trigger_command", required=True)
    add = commands.add_parser("add", help="add a trigger (`jmk scheduler` evaluates it)")
    add_flags(add)
    add.set_defaults(func=_cmd_add)
    listing = commands.add_parser("list", help="the triggers: last check, last fire, next eligible time, state")
    listing.set_defaults(func=_cmd_list)
    remove = commands.add_parser("remove", help="remove a trigger (a run it started carries on)")
    remove.add_argument("name")
    remove.set_defaults(func=_cmd_remove)
    history = commands.add_parser("history", help="a trigger's fires, suggestions and run ends")
    history.add_argument("name")
    history.add_argument("--limit", type=int, default=50)
    history.add_argument("--json", action="store_true", help="the entries as JSON")
    history.set_defaults(func=_cmd_history)
