"""Schedules on disk: one JSON file per schedule of the embedded scheduler, and the checks of a new one."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ...config import JMKSettings, load_settings
from ...exceptions import JMKUsageError
from ...k8s.validation import check_cron, check_dns1123_label
from ...util.names import dns_slug
from ...util.times import from_iso, iso
from ..model import Pipeline
from .cron import UTC, _utc, next_fire

log = logging.getLogger(__name__)
MISSED_POLICIES = ("run-once", "skip")
# A slot this late still fires under missed="skip"; the CronJob's startingDeadlineSeconds.
SKIP_GRACE_SECONDS = 300
NAME_MAX = 52  # a CronJob's name: the controller appends 11 characters to name each Job


# -- schedules on disk -----------------------------------------------------------------------


@dataclass
class Schedule:
    """A pipeline run on a cron schedule by the embedded scheduler (``<state>/pipelines/schedules/<name>.json``).

    ``overrides`` are ``-p`` values as the run gets them (strings, read as YAML scalars by
    ``jmk pipeline run``). ``pid``, ``pid_started`` and ``log`` are those of the latest fire while it
    runs (``pid`` is cleared when it is seen to end, with ``last_exit`` its exit status).
    """

    name: str
    pipeline: str  # the absolute path of pipeline.yaml
    cron: str
    overrides: dict[str, str] = field(default_factory=dict)
    missed: str = "run-once"
    overlap: bool = False
    created: datetime | None = None
    last_fire: datetime | None = None
    last_run_id: str | None = None
    next_fire: datetime | None = None
    pid: int | None = None
    pid_started: float | None = None
    log: str | None = None
    last_exit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The schedule as JSON data (times as ISO 8601 UTC strings)."""
        data = dataclasses.asdict(self)
        for key in ("created", "last_fire", "next_fire"):
            data[key] = iso(getattr(self, key))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """A schedule from its JSON data; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("created", "last_fire", "next_fire"):
            values[key] = from_iso(values.get(key))
        return cls(**values)


def schedules_dir(settings: JMKSettings | None = None) -> Path:
    """Where the embedded schedules are kept: ``<state dir>/pipelines/schedules``."""
    return (settings or load_settings()).state_path / "pipelines" / "schedules"


def _path(name: str, settings: JMKSettings | None) -> Path:
    return schedules_dir(settings) / f"{name}.json"


def _write(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _save(schedule: Schedule, settings: JMKSettings | None, *, must_exist: bool = True) -> None:
    """Write a schedule; with ``must_exist``, not one removed meanwhile (``jmk pipeline unschedule``)."""
    path = _path(schedule.name, settings)
    if must_exist and not path.exists():
        return
    _write(path, schedule.to_dict())


def get_schedule(name: str, settings: JMKSettings | None = None) -> Schedule:
    """The schedule ``name``.

    Raises:
        JMKUsageError: There is none by that name (the known ones are listed).
    """
    try:
        if check_dns1123_label(name, "name"):
            raise FileNotFoundError(name)  # not a schedule's name, nor a path to follow
        return Schedule.from_dict(json.loads(_path(name, settings).read_text()))
    except FileNotFoundError:
        known = ", ".join(s.name for s in list_schedules(settings)) or "none"
        raise JMKUsageError(f"No schedule named {name!r}. Schedules: {known} (`jmk pipeline schedules`).") from None


def list_schedules(settings: JMKSettings | None = None) -> list[Schedule]:
    """Every embedded schedule, by name; a file that cannot be read is logged and left out."""
    folder = schedules_dir(settings)
    schedules = []
    for path in sorted(folder.glob("*.json")):
        try:
            schedules.append(Schedule.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("schedule file %s is unreadable, left out: %s", path, exc)
    return schedules


def schedule_name(pipeline_name: str) -> str:
    """A schedule (and CronJob) name from a pipeline's name: lowercase letters, digits and '-', at most 52."""
    return dns_slug(pipeline_name, NAME_MAX) or "pipeline"


def check_schedule_name(name: str) -> None:
    """Refuse a name that cannot name a schedule's file and CronJob (an RFC 1123 label of at most 52).

    Raises:
        JMKUsageError: Saying what is wrong and suggesting a name.
    """
    problems = check_dns1123_label(name, "--name")
    if len(name) > NAME_MAX:
        problems.append(f"--name: {name!r} is {len(name)} characters, more than {NAME_MAX} (a CronJob's limit)")
    if problems:
        raise JMKUsageError("\n".join(problems) + f"\nFor example: --name {schedule_name(name)}")


def _check_missed(missed: str) -> None:
    if missed not in MISSED_POLICIES:
        raise JMKUsageError(f"missed={missed!r}: use 'run-once' (one run after missed slots) or 'skip'.")


def _override_texts(overrides: Mapping[str, Any] | None) -> dict[str, str]:
    """``-p`` values as text ``jmk pipeline run`` reads back to the same value (JSON for non-strings)."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (overrides or {}).items()}


def load_scheduled_pipeline(path: str | Path, cron: str, overrides: Mapping[str, str]) -> Pipeline:
    """The pipeline, validated together with its schedule.

    Raises:
        InvalidPipeline: Every problem of the pipeline and of the schedule, in one error.
    """
    from ..spec import InvalidPipeline, load_pipeline, validate

    try:
        pipeline = load_pipeline(path, overrides, check=False)
    except InvalidPipeline as exc:
        cron_problems = check_cron(cron, "schedule")
        if not cron_problems:
            raise
        raise InvalidPipeline(f"The pipeline file {path}", exc.problems + cron_problems) from None
    validate(pipeline, cron=cron)
    return pipeline


def add_schedule(
    path: str | Path,
    cron: str,
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
    missed: str = "run-once",
    overlap: bool = False,
    *,
    replace: bool = False,
    settings: JMKSettings | None = None,
    now: datetime | None = None,
) -> Schedule:
    """Schedule a pipeline on the embedded scheduler (``jmk scheduler`` fires it).

    The pipeline and the schedule are validated together first (``spec.validate(pipeline, cron=cron)``).

    Args:
        path: The pipeline file; kept as an absolute path.
        cron: When, in UTC: e.g. ``"0 3 * * *"``, ``"@hourly"``, ``"@every 30m"``.
        overrides: Pipeline parameters for each run, as ``-p`` gives them.
        name: The schedule's name (an RFC 1123 label of at most 52); default: the pipeline's name, slugged.
        missed: ``"run-once"`` or ``"skip"`` (see the module's documentation).
        overlap: Whether a slot fires while the previous run of this schedule is still running.
        replace: Replace a schedule of the same name instead of refusing.
        settings: Whose state directory; default: the environment's.
        now: The moment the first fire is counted from (default: now).

    Returns:
        The saved schedule, with its first ``next_fire``.

    Raises:
        JMKUsageError: The pipeline or the schedule is invalid (every problem listed), the name is taken or bad.
    """
    _check_missed(missed)
    texts = _override_texts(overrides)
    pipeline = load_scheduled_pipeline(path, cron, texts)
    created = _utc(now or datetime.now(UTC))
    first = next_fire(cron, created)
    name = schedule_name(pipeline.name) if name is None else name
    check_schedule_name(name)
    target = _path(name, settings)
    if target.exists() and not replace:
        raise JMKUsageError(
            f"A schedule named {name!r} exists already. Remove it (`jmk pipeline unschedule {name}`), "
            "replace it (--replace), or give this one another --name."
        )
    source = pipeline.source or Path(path)
    schedule = Schedule(
        name=name, pipeline=str(source.resolve()), cron=cron.strip(), overrides=texts, missed=missed,
        overlap=overlap, created=created, next_fire=first,
    )
    _save(schedule, settings, must_exist=False)
    return schedule


def remove_schedule(name: str, settings: JMKSettings | None = None) -> Schedule:
    """Remove the schedule ``name`` (a run it started keeps running); returns it.

    Raises:
        JMKUsageError: There is none by that name.
    """
    schedule = get_schedule(name, settings)
    _path(name, settings).unlink(missing_ok=True)
    return schedule
