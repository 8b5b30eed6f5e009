"""Pipelines on a schedule: cron times, the embedded scheduler, and Kubernetes CronJobs.

Times are UTC everywhere: :func:`next_fire` reads a schedule in UTC, the embedded scheduler fires
by the UTC clock, and a CronJob built here sets ``spec.timeZone: Etc/UTC``, so ``0 3 * * *`` means
03:00 UTC on this machine and on any cluster, whatever their local zones.

Schedules are the syntax Kubernetes accepts (robfig/cron's standard parser, checked by
:func:`jupyter_mlflow_k8s.manifests.check_cron`): five fields (minute, hour, day of month, month,
day of week) of ``*``/``?``, numbers, ranges, steps and lists, month and weekday names, or a
descriptor (``@hourly``, ``@daily``/``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``/``@annually``,
``@every 1h30m``). As in cron, when both the day of month and the day of week are restricted a day
matching either one fires (``0 0 13 * FRI``: every 13th and every Friday); a field counts as
unrestricted when it is ``*`` or ``?``, unstepped (robfig's rule: ``*/2`` restricts).

The embedded scheduler keeps one JSON file per schedule under ``<state dir>/pipelines/schedules/``
and fires each due schedule as a ``jmk pipeline run`` subprocess (its output in
``schedules/logs/<name>/``). Two policies, the same for the embedded scheduler and for a CronJob:

- ``missed``: ``run-once`` (default) starts one run for any number of slots missed while nothing
  fired them (the scheduler was down, or the previous run was still running); ``skip`` starts a run
  only when its slot passed at most :data:`SKIP_GRACE_SECONDS` ago (the CronJob's
  ``startingDeadlineSeconds``), so after downtime it waits for the next slot.
- ``overlap``: off by default: while a run of a schedule is running, its next slot waits (and is
  then handled as missed, like ``concurrencyPolicy: Forbid``); on, slots fire regardless.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

from ..backends.kubernetes_manifests import (
    MANAGED_BY,
    PodSettings,
    _compact,
    _plain,
    _pvc_volumes,
    _resources,
    _shm_volume,
    _tolerations,
    check_image,
    label_value,
    payload_key,
)
from ..config import JMKSettings, load_settings
from ..exceptions import JMKError, JMKUsageError
from ..manifests import check_cron, check_dns1123_label, ensure_valid
from .model import Pipeline

UTC = timezone.utc
TIME_ZONE = "Etc/UTC"
MISSED_POLICIES = ("run-once", "skip")
# A slot this late still fires under missed="skip"; the CronJob's startingDeadlineSeconds.
SKIP_GRACE_SECONDS = 300
# The longest a cron schedule is searched ahead (Feb 29 can be 8 years away, as from 2096 to 2104).
SEARCH_YEARS = 10
NAME_MAX = 52  # a CronJob's name: the controller appends 11 characters to name each Job
PIPELINE_MOUNT = "/var/run/jmk/pipeline"
STATE_MOUNT = "/var/run/jmk/state"
PIPELINE_FILE = "pipeline.yaml"
CONTAINER = "pipeline"
# The pipeline's files in the ConfigMap: its data may hold 1 MiB, keys included.
CONFIGMAP_LIMIT = 1000 * 1024
SCHEDULE_LABEL = "jmk.io/schedule"
PIPELINE_LABEL = "jmk.io/pipeline"
DEFAULT_IMAGE = "jupyter-mlflow-k8s-runner:latest"

log = logging.getLogger(__name__)


class CronError(JMKUsageError):
    """A schedule that is not valid cron syntax as Kubernetes reads it, or that never fires."""


class SchedulerRunning(JMKError):
    """Another scheduler already holds the state directory's lock."""

    def __init__(self, lock: Path, pid: str) -> None:
        who = f" (pid {pid})" if pid else ""
        super().__init__(
            f"A scheduler is already running for this state directory{who}: it holds {lock}. "
            "One scheduler per state directory fires every schedule; stop it before starting another."
        )
        self.pid = pid


# -- cron ------------------------------------------------------------------------------------

_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EVERY = "@every "
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (low, high, names) of minute, hour, day of month, month, day of week.
_FIELDS: tuple[tuple[int, int, Mapping[str, int]], ...] = (
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (1, 12, {name: number for number, name in enumerate(_MONTH_NAMES, 1)}),
    (0, 6, _WEEKDAYS),
)
_GO_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]*)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class _Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # Sunday is 0
    any_day: bool  # the day of month is unrestricted (``*`` or ``?``)
    any_weekday: bool

    def day_matches(self, moment: datetime) -> bool:
        day = moment.day in self.days
        weekday = (moment.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return day and weekday
        return day or weekday


@dataclass(frozen=True)
class _Every:
    seconds: int


@functools.lru_cache(maxsize=256)
def _parse(expression: str) -> _Cron | _Every:
    problems = check_cron(expression, "schedule")
    if problems:
        raise CronError(
            "\n".join(problems) + "\nWrite five fields in UTC (minute hour day-of-month month day-of-week), "
            "e.g. '0 3 * * *' for 03:00 every day, or a descriptor such as @daily or '@every 2h'."
        )
    spec = expression.strip()
    if spec.startswith(_EVERY):
        return _Every(_go_duration_seconds(spec[len(_EVERY) :].strip()))
    spec = _DESCRIPTORS.get(spec, spec)
    parsed = [_parse_field(text, *bounds) for text, bounds in zip(spec.split(), _FIELDS, strict=True)]
    (minutes, _), (hours, _), (days, any_day), (months, _), (weekdays, any_weekday) = parsed
    return _Cron(minutes, hours, days, months, weekdays, any_day, any_weekday)


def _parse_field(text: str, low: int, high: int, names: Mapping[str, int]) -> tuple[frozenset[int], bool]:
    """The values of one field, and whether it is unrestricted (a ``*`` or ``?`` without a step > 1)."""
    values: set[int] = set()
    star = False
    for part in filter(None, text.split(",")):
        range_text, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        bounds = range_text.split("-")
        if bounds[0] in ("*", "?"):
            start, end = low, high
            star = star or step == 1
        else:
            start, end = _value(bounds[0], names), _value(bounds[-1], names)
            if step_text and len(bounds) == 1:
                end = high  # "N/step" means "N-high/step"
        values.update(range(start, end + 1, step))
    return frozenset(values), star


def _value(text: str, names: Mapping[str, int]) -> int:
    return names[text.lower()] if text.lower() in names else int(text)


def _go_duration_seconds(text: str) -> int:
    """Whole seconds of a Go duration, at least 1 (robfig's ``@every`` truncates and floors it so)."""
    sign = -1.0 if text.startswith("-") else 1.0
    total = sum(float(number or 0) * _GO_UNITS[unit] for number, unit in _GO_DURATION_PART.findall(text.lstrip("+-")))
    return max(int(sign * total), 1)


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def next_fire(expression: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` at which the schedule fires, in UTC.

    The schedule is read in UTC (a CronJob built here says ``timeZone: Etc/UTC``). ``@every D``
    fires ``D`` after ``after`` (whole seconds, at least one), as robfig/cron computes it.

    Args:
        expression: A schedule Kubernetes accepts, e.g. ``"0 3 * * *"``, ``"*/15 9-17 * * MON-FRI"``, ``"@daily"``.
        after: Any moment; a naive datetime is taken as UTC.

    Returns:
        An aware datetime in UTC, on a whole minute (for ``@every``, a whole second).

    Raises:
        CronError: The expression is not valid, or it never fires (such as ``0 0 30 2 *``).
    """
    schedule = _parse(expression)
    start = _utc(after)
    if isinstance(schedule, _Every):
        return start.replace(microsecond=0) + timedelta(seconds=schedule.seconds)
    moment = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = moment.year + SEARCH_YEARS
    while moment.year <= limit:
        if moment.month not in schedule.months:
            year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
            moment = moment.replace(year=year, month=month, day=1, hour=0, minute=0)
        elif not schedule.day_matches(moment):
            moment = moment.replace(hour=0, minute=0) + timedelta(days=1)
        elif moment.hour not in schedule.hours:
            moment = moment.replace(minute=0) + timedelta(hours=1)
        elif moment.minute not in schedule.minutes:
            moment += timedelta(minutes=1)
        else:
            return moment
    raise CronError(
        f"The schedule {expression!r} never fires (no matching time within {SEARCH_YEARS} years of "
        f"{start:%Y-%m-%d}): check its day of month against its months, e.g. there is no February 30."
    )


def _following(expression: str, due: datetime, now: datetime) -> datetime:
    """The schedule's first slot after ``now``; ``@every`` keeps to its grid from ``due`` (no drift by late ticks)."""
    schedule = _parse(expression)
    if isinstance(schedule, _Every) and due <= now:
        periods = int((now - due).total_seconds() // schedule.seconds) + 1
        return due + timedelta(seconds=periods * schedule.seconds)
    return next_fire(expression, now)


def _slot_within(expression: str, first: datetime, now: datetime, seconds: float) -> bool:
    """Whether a slot of the schedule, at ``first`` or after, falls in the ``seconds`` before ``now``."""
    schedule = _parse(expression)
    if isinstance(schedule, _Every):
        periods = int((now - first).total_seconds() // schedule.seconds)
        latest = first + timedelta(seconds=periods * schedule.seconds)
        return (now - latest).total_seconds() <= seconds
    window = now - timedelta(seconds=seconds)
    if first >= window:
        return True
    return next_fire(expression, window - timedelta(microseconds=1)) <= now


# -- schedules on disk -----------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).isoformat().replace("+00:00", "Z")


def _from_iso(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


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
            data[key] = _iso(getattr(self, key))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """A schedule from its JSON data; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("created", "last_fire", "next_fire"):
            values[key] = _from_iso(values.get(key))
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
    ascii_name = unicodedata.normalize("NFKD", pipeline_name).encode("ascii", "ignore").decode()
    slug = re.sub("[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:NAME_MAX].rstrip("-")
    return slug or "pipeline"


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
    from .spec import InvalidPipeline, load_pipeline, validate

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


# -- the embedded scheduler ------------------------------------------------------------------

@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    log: str


def lock_path(settings: JMKSettings | None = None) -> Path:
    """The scheduler's lock file: ``<state dir>/pipelines/scheduler.lock``."""
    return (settings or load_settings()).state_path / "pipelines" / "scheduler.lock"


def scheduler_pid(settings: JMKSettings | None = None) -> str | None:
    """The pid of the scheduler running for this state directory (``""`` if it wrote none), else None."""
    import fcntl

    try:
        handle = lock_path(settings).open(encoding="utf-8")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


class Scheduler:
    """Fires due schedules of one state directory as ``jmk pipeline run`` subprocesses.

    :meth:`serve` holds the state directory's lock (one scheduler per state directory) and calls
    :meth:`tick` every few seconds until SIGTERM or SIGINT. A fired run is a subprocess in a
    session of its own: stopping the scheduler leaves it running, and a scheduler started later
    still sees it (by its pid and start time) before firing the schedule again.
    """

    def __init__(self, settings: JMKSettings | None = None, *, grace_seconds: float = SKIP_GRACE_SECONDS) -> None:
        self.settings = settings or load_settings()
        self.grace_seconds = grace_seconds
        self._children: dict[str, list[_Child]] = {}
        self._waiting: set[tuple[str, str | None]] = set()
        self._lock: IO[str] | None = None

    # -- one scheduler per state directory ------------------------------------------------------

    def acquire(self) -> None:
        """Take the state directory's scheduler lock.

        Raises:
            SchedulerRunning: Another scheduler holds it.
        """
        import fcntl

        if self._lock is not None:
            return
        path = lock_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            pid = handle.read().strip()
            handle.close()
            raise SchedulerRunning(path, pid) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Let go of the lock (closing the file releases it)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Scheduler:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- runs -----------------------------------------------------------------------------------

    def command(self, schedule: Schedule, run_id: str) -> list[str]:
        """The command line of one run of ``schedule``, as pipeline run ``run_id``."""
        parameters = [item for key, value in schedule.overrides.items() for item in ("-p", f"{key}={value}")]
        return [sys.executable, "-m", "jupyter_mlflow_k8s.cli", "pipeline", "run", schedule.pipeline, *parameters,
                "--run-id", run_id]

    def _env(self) -> dict[str, str]:
        """The environment of a run: this scheduler's state directory, tracking and storage (however configured)."""
        return {
            **os.environ,
            "JMK_STATE_DIR": str(self.settings.state_dir),
            "MLFLOW_TRACKING_URI": str(self.settings.tracking_uri),
            "JMK_STORAGE_URL": str(self.settings.storage_url),
            "PYTHONUNBUFFERED": "1",
        }

    def running(self, schedule: Schedule) -> bool:
        """Whether a run of ``schedule`` is still running (one this scheduler started, or an earlier one)."""
        if any(child.process.poll() is None for child in self._children.get(schedule.name, [])):
            return True
        if not schedule.pid:
            return False
        import psutil

        try:
            process = psutil.Process(schedule.pid)
            same = schedule.pid_started is None or abs(process.create_time() - schedule.pid_started) < 1.0
            return bool(same and process.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def _fire(self, schedule: Schedule, now: datetime) -> None:
        logs = schedules_dir(self.settings) / "logs" / schedule.name
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{now:%Y%m%dT%H%M%S}Z.log"
        folder = Path(schedule.pipeline).parent
        run_id = secrets.token_hex(4)
        with log_path.open("ab") as output:
            process = subprocess.Popen(
                self.command(schedule, run_id), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=folder if folder.is_dir() else None, env=self._env(), start_new_session=True,
            )
        self._children.setdefault(schedule.name, []).append(_Child(process, str(log_path)))
        schedule.pid, schedule.pid_started = process.pid, _started(process.pid)
        schedule.log, schedule.last_fire, schedule.last_run_id, schedule.last_exit = str(log_path), now, run_id, None
        log.info("fired %s: pipeline %s (pid %d, log %s)", schedule.name, schedule.pipeline, process.pid, log_path)

    def reap(self) -> None:
        """Notice runs that ended (their exit status, their pipeline run id) and record them."""
        for name, children in list(self._children.items()):
            for child in list(children):
                code = child.process.poll()
                if code is None:
                    continue
                children.remove(child)
                outcome = "succeeded" if code == 0 else f"failed (exit {code})"
                log.info("%s: run %s, log %s", name, outcome, child.log)
                path = _path(name, self.settings)
                if not path.exists():
                    continue
                schedule = get_schedule(name, self.settings)
                if schedule.log == child.log:  # the latest fire of the schedule
                    schedule.pid, schedule.pid_started, schedule.last_exit = None, None, code
                    _save(schedule, self.settings)
            if not children:
                del self._children[name]

    def _refresh(self, schedule: Schedule) -> bool:
        """Forget an earlier fire's process once it ended unwatched (its exit status is unknown). True if changed."""
        if schedule.pid and not self.running(schedule) and schedule.name not in self._children:
            schedule.pid, schedule.pid_started = None, None
            return True
        return False

    def tick(self, now: datetime | None = None) -> list[str]:
        """Fire every schedule that is due at ``now`` (default: now), by its policies.

        A due schedule whose previous run still runs waits (unless it allows overlap); under
        ``missed="skip"`` a slot older than :attr:`grace_seconds` is dropped. Each schedule that is
        not waiting gets its ``next_fire`` after ``now``.

        Returns:
            The names of the schedules fired.
        """
        now = _utc(now or datetime.now(UTC))
        self.reap()
        fired: list[str] = []
        for schedule in list_schedules(self.settings):
            changed = self._refresh(schedule)
            due = schedule.next_fire
            try:
                if due is None:  # written by hand, or its schedule stopped firing
                    schedule.next_fire, changed = next_fire(schedule.cron, now), True
                elif due <= now:
                    changed = self._due(schedule, due, now, fired) or changed
            except (JMKError, OSError) as exc:
                log.error("schedule %s: %s", schedule.name, exc)
                schedule.next_fire, changed = None, True
            if changed:
                _save(schedule, self.settings)
        return fired

    def _due(self, schedule: Schedule, due: datetime, now: datetime, fired: list[str]) -> bool:
        if not schedule.overlap and self.running(schedule):
            if (schedule.name, schedule.log) not in self._waiting:
                self._waiting.add((schedule.name, schedule.log))
                log.info("%s: due since %s, waits: its previous run (pid %s) is still running",
                         schedule.name, _iso(due), schedule.pid or "?")
            return False
        upcoming = _following(schedule.cron, due, now)
        if schedule.missed == "skip" and not _slot_within(schedule.cron, due, now, self.grace_seconds):
            log.info("%s: missed its slots since %s, skipped (missed=skip); next at %s",
                     schedule.name, _iso(due), _iso(upcoming))
        else:
            self._fire(schedule, now)
            fired.append(schedule.name)
        schedule.next_fire = upcoming
        return True

    def serve(self, poll_seconds: float = 15.0, *, stop: threading.Event | None = None) -> None:
        """Tick every ``poll_seconds`` until SIGTERM or SIGINT (or ``stop`` is set), holding the lock.

        Raises:
            SchedulerRunning: Another scheduler runs for this state directory.
        """
        stop = stop or threading.Event()
        self.acquire()
        previous: dict[int, Any] = {}
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                try:
                    previous[signum] = signal.signal(signum, lambda *_: stop.set())
                except ValueError:  # not the main thread: only `stop` stops it
                    break
            names = ", ".join(s.name for s in list_schedules(self.settings)) or "none yet"
            log.info("scheduler started (pid %d, state dir %s, every %g s); schedules: %s",
                     os.getpid(), self.settings.state_dir, poll_seconds, names)
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:
                    log.exception("scheduler tick failed; trying again in %g s", poll_seconds)
                stop.wait(poll_seconds)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self.release()
            running = [str(c.process.pid) for children in self._children.values() for c in children
                       if c.process.poll() is None]
            left = f"; runs still running carry on (pids {', '.join(running)})" if running else ""
            log.info("scheduler stopped%s", left)


def _started(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


# -- Kubernetes: a CronJob and the ConfigMap of the pipeline's files -------------------------


def default_image() -> str:
    """The runner image, as the Kubernetes backend picks it: the notebook's own under JupyterHub, else ours."""
    return os.environ.get("JUPYTER_IMAGE_SPEC") or os.environ.get("JUPYTER_IMAGE") or DEFAULT_IMAGE


def _relative(path: Path, folder: Path, pipeline: Pipeline) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        raise JMKUsageError(
            f"The notebook {path} of pipeline {pipeline.name!r} is outside the pipeline's folder {folder}: "
            "only files under that folder are carried to the cluster. Move it there."
        ) from None


def _without_outputs(content: bytes) -> bytes:
    """A notebook without cell outputs (papermill does not need them; they can be large images)."""
    try:
        document = json.loads(content)
        for cell in document.get("cells", []):
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None
    except (ValueError, AttributeError, TypeError):
        return content
    return json.dumps(document, indent=1, ensure_ascii=False).encode()


def pipeline_files(pipeline_path: Path, pipeline: Pipeline) -> dict[str, bytes]:
    """The files a pod needs to run the pipeline: ``pipeline.yaml`` and its notebooks, by path in the mount.

    Notebooks keep their paths relative to the pipeline file's folder, without their outputs.

    Raises:
        JMKUsageError: A notebook is outside that folder, or a file cannot be read.
    """
    source = Path(pipeline_path).absolute()
    folder = source.parent
    try:
        files = {PIPELINE_FILE: source.read_bytes()}
        for step in pipeline.steps.values():
            relative = _relative(Path(os.path.normpath(step.notebook)), folder, pipeline)
            files.setdefault(relative, _without_outputs(step.notebook.read_bytes()))
    except OSError as exc:
        raise JMKUsageError(f"Cannot read the pipeline's files: {exc}") from None
    return files


def _labels(pipeline: Pipeline, name: str, extra: Mapping[str, str]) -> dict[str, str]:
    return {
        **extra,
        "app.kubernetes.io/name": MANAGED_BY,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": "pipeline-schedule",
        PIPELINE_LABEL: label_value(pipeline.name),
        SCHEDULE_LABEL: name,
    }


def _cronjob_name(name: str | None, pipeline: Pipeline) -> str:
    name = schedule_name(pipeline.name) if name is None else name
    check_schedule_name(name)
    return name


def configmap_name(name: str) -> str:
    """The ConfigMap carrying the files of the schedule ``name``'s pipeline."""
    return f"{name}-pipeline"


def build_pipeline_configmap(
    pipeline_path: Path, pipeline: Pipeline, *, namespace: str, name: str, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ConfigMap carrying ``pipeline.yaml`` and its notebooks (keys as ``payload_key`` maps paths).

    Raises:
        JMKUsageError: The files are over :data:`CONFIGMAP_LIMIT` (bake them into the image instead), or
            a notebook is outside the pipeline's folder.
    """
    files = pipeline_files(pipeline_path, pipeline)
    size = sum(len(content) for content in files.values())
    if size > CONFIGMAP_LIMIT:
        raise JMKUsageError(
            f"The pipeline's files take {size / 1024:,.0f} KiB (notebooks without outputs), more than the "
            f"{CONFIGMAP_LIMIT // 1024} KiB a ConfigMap can carry to the pod. Bake the pipeline and its notebooks "
            "into the runner image and run `jmk pipeline run` on it from your own CronJob, or make the notebooks "
            "smaller (move data and code they embed into files the image has)."
        )
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for path, content in sorted(files.items()):
        try:
            data[payload_key(path)] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[payload_key(path)] = base64.b64encode(content).decode("ascii")
    metadata = {"name": configmap_name(name), "namespace": namespace, "labels": _labels(pipeline, name, labels or {})}
    configmap: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
    if binary:
        configmap["binaryData"] = binary
    ensure_valid(configmap)
    return configmap


def step_resources(pipeline: Pipeline) -> dict[str, Any]:
    """The most any local step asks for: its steps run in the one pod (one or a few at a time)."""
    from ..models import parse_cpu, parse_memory

    local = [step.resources for step in pipeline.steps.values() if step.backend == "local"]
    cpus = [r.cpu for r in local if r.cpu]
    memories = [r.memory for r in local if r.memory]
    return {
        "cpu": max(cpus, key=parse_cpu) if cpus else None,
        "memory": max(memories, key=parse_memory) if memories else None,
        "gpus": max((r.gpus for r in local), default=0),
    }


def build_cronjob(
    pipeline_path: Path,
    pipeline: Pipeline,
    cron: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    namespace: str | None = None,
    image: str | None = None,
    name: str | None = None,
    settings: PodSettings | None = None,
    missed: str = "run-once",
    overlap: bool = False,
) -> dict[str, Any]:
    """The batch/v1 CronJob running ``jmk pipeline run`` on the pipeline in the runner image, in UTC.

    The pod mounts the ConfigMap of :func:`build_pipeline_configmap` at :data:`PIPELINE_MOUNT` and
    runs ``python -m jupyter_mlflow_k8s.cli pipeline run /var/run/jmk/pipeline/pipeline.yaml -p ...``
    with its state directory on an ``emptyDir``. ``concurrencyPolicy`` is ``Forbid`` unless
    ``overlap``; ``startingDeadlineSeconds`` is :data:`SKIP_GRACE_SECONDS` for ``missed="skip"`` and
    unset for ``run-once`` (the controller then starts one Job for the latest missed slot). Jobs are
    not retried (``backoffLimit: 0``: steps have their own ``retries``); 3 succeeded and 3 failed
    Jobs are kept.

    Args:
        pipeline_path: The pipeline file.
        pipeline: The pipeline loaded from it (with ``overrides``).
        cron: The schedule, in UTC.
        overrides: ``-p`` values for each run.
        namespace: Default: ``settings.namespace``.
        image: The runner image (with this package, papermill and the notebooks' needs). Default:
            ``settings.image`` when ``settings`` is given, else :func:`default_image`.
        name: The CronJob's name (RFC 1123 label, at most 52); default: the pipeline's name, slugged.
        settings: ``PodSettings`` for the pod (resources, node selector, secrets ...). Default: the
            most any local step asks for.
        missed: ``"run-once"`` or ``"skip"``.
        overlap: Allow a run to start while the previous one runs.

    Raises:
        CronError: The schedule is invalid or never fires.
        JMKUsageError: A bad name, image or policy.
        InvalidManifest: Settings that make a CronJob the API server would refuse.
    """
    _check_missed(missed)
    next_fire(cron, datetime.now(UTC))  # valid, and fires at all
    name = _cronjob_name(name, pipeline)
    pod = settings if settings is not None else PodSettings(**step_resources(pipeline))
    pod = dataclasses.replace(
        pod,
        namespace=namespace or pod.namespace,
        image=image or (pod.image if settings is not None else default_image()),
    )
    check_image(pod.image)
    labels = _labels(pipeline, name, pod.labels)
    files = pipeline_files(pipeline_path, pipeline)
    items = [{"key": payload_key(path), "path": path} for path in sorted(files)]
    files_volume = {"name": "pipeline", "configMap": {"name": configmap_name(name), "items": items}}
    state_volume = {"name": "state", "emptyDir": {}}
    volumes = [
        (files_volume, {"name": "pipeline", "mountPath": PIPELINE_MOUNT, "readOnly": True}),
        (state_volume, {"name": "state", "mountPath": STATE_MOUNT}),
        *_shm_volume(pod),
        *_pvc_volumes(pod),
    ]
    parameters = [item for k, v in _override_texts(overrides).items() for item in ("-p", f"{k}={v}")]
    env = {"JMK_STATE_DIR": STATE_MOUNT, **pod.env, "PYTHONUNBUFFERED": "1"}
    container = _compact(
        {
            "name": CONTAINER,
            "image": pod.image,
            "imagePullPolicy": pod.image_pull_policy,
            "command": [pod.python, "-m", "jupyter_mlflow_k8s.cli", "pipeline", "run",
                        f"{PIPELINE_MOUNT}/{PIPELINE_FILE}", *parameters],
            "env": [{"name": key, "value": value} for key, value in env.items()],
            "envFrom": [{"secretRef": {"name": secret}} for secret in pod.secrets],
            "resources": _resources(pod),
            "volumeMounts": [mount for _, mount in volumes],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )
    pod_spec = _compact(
        {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [volume for volume, _ in volumes],
            "nodeSelector": dict(pod.node_selector),
            "tolerations": _tolerations(pod),
            "affinity": _plain(pod.affinity),
            "priorityClassName": pod.priority_class_name,
            "serviceAccountName": pod.service_account_name,
            "imagePullSecrets": [{"name": secret} for secret in pod.image_pull_secrets],
            "runtimeClassName": pod.runtime_class_name,
        }
    )
    annotations = {**pod.annotations, "jmk.io/pipeline-file": str(Path(pipeline_path).absolute())}
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _compact({"name": name, "namespace": pod.namespace, "labels": labels, "annotations": annotations}),
        "spec": _compact(
            {
                "schedule": cron.strip(),
                "timeZone": TIME_ZONE,
                "concurrencyPolicy": "Allow" if overlap else "Forbid",
                "startingDeadlineSeconds": SKIP_GRACE_SECONDS if missed == "skip" else None,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "backoffLimit": 0,
                        "template": {
                            "metadata": _compact({"labels": labels, "annotations": dict(pod.annotations)}),
                            "spec": pod_spec,
                        },
                    },
                },
            }
        ),
    }
    ensure_valid(cronjob)
    return cronjob


def build_schedule_manifests(
    pipeline_path: Path,
    pipeline: Pipeline,
    cron: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    namespace: str | None = None,
    image: str | None = None,
    name: str | None = None,
    settings: PodSettings | None = None,
    missed: str = "run-once",
    overlap: bool = False,
) -> list[dict[str, Any]]:
    """The ConfigMap of the pipeline's files, then the CronJob (see :func:`build_cronjob`)."""
    cronjob = build_cronjob(
        pipeline_path, pipeline, cron, overrides, namespace=namespace, image=image, name=name, settings=settings,
        missed=missed, overlap=overlap,
    )
    metadata = cronjob["metadata"]
    configmap = build_pipeline_configmap(
        pipeline_path, pipeline, namespace=metadata["namespace"], name=metadata["name"],
        labels=settings.labels if settings is not None else None,
    )
    return [configmap, cronjob]


# -- Kubernetes: applying and removing -------------------------------------------------------


def kube_namespace(namespace: str | None = None) -> str:
    """``namespace``, else JMK_K8S_NAMESPACE, else the kubeconfig context's, else ``default``."""
    if namespace:
        return namespace
    if os.environ.get("JMK_K8S_NAMESPACE"):
        return os.environ["JMK_K8S_NAMESPACE"]
    try:
        import kubernetes

        _, context = kubernetes.config.list_kube_config_contexts()
        return str(context.get("context", {}).get("namespace") or "default")
    except Exception:
        return "default"


def _api_client() -> Any:
    """The official client's ApiClient: the kubeconfig (KUBECONFIG or ~/.kube/config), else the pod's account."""
    import kubernetes

    no_kubeconfig = not os.environ.get("KUBECONFIG") and not Path("~/.kube/config").expanduser().exists()
    try:
        if no_kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return kubernetes.client.ApiClient(configuration)
        return kubernetes.config.new_client_from_config()
    except Exception as exc:
        raise JMKUsageError(
            f"Cannot reach Kubernetes: no usable kubeconfig ({exc}). Set KUBECONFIG, or use --print to write the "
            "manifests for kubectl apply."
        ) from None


def _api_error(exc: Any, what: str) -> JMKError:
    try:
        message = json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        message = ""
    return JMKError(f"Kubernetes refused to {what}: {exc.status} {exc.reason}. {message}".rstrip())


def _ours(obj: Any) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(labels.get("app.kubernetes.io/managed-by") == MANAGED_BY)


def apply_schedule_manifests(manifests: Sequence[Mapping[str, Any]]) -> list[str]:
    """Create each ConfigMap and CronJob, or replace the one of that name this package made.

    Returns:
        What was done, e.g. ``["created ConfigMap team/churn-pipeline", "replaced CronJob team/churn"]``.

    Raises:
        JMKError: The API refused (the cluster has no batch/v1 CronJob before Kubernetes 1.21, no
            ``timeZone`` before 1.27), or an object of that name exists that this package did not make.
    """
    import kubernetes

    api = _api_client()
    core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
    done = []
    for manifest in manifests:
        kind, meta = manifest["kind"], manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if kind == "CronJob":
            create, read, put = batch.create_namespaced_cron_job, batch.read_namespaced_cron_job, \
                batch.replace_namespaced_cron_job
        else:
            create, read, put = core.create_namespaced_config_map, core.read_namespaced_config_map, \
                core.replace_namespaced_config_map
        try:
            create(namespace, manifest, _preload_content=False)
            done.append(f"created {kind} {namespace}/{name}")
            continue
        except kubernetes.client.ApiException as exc:
            if exc.status == 404 and kind == "CronJob":
                raise JMKError(
                    f"The cluster has no batch/v1 CronJob in namespace {namespace!r} (Kubernetes 1.21+ has it, "
                    "and 1.27+ its timeZone): use the embedded scheduler (`jmk scheduler`) instead."
                ) from None
            if exc.status != 409:
                raise _api_error(exc, f"create {kind} {namespace}/{name}") from None
        try:
            existing = json.loads(read(name, namespace, _preload_content=False).data)
            if not _ours(existing):
                raise JMKUsageError(
                    f"A {kind} {namespace}/{name} exists that jupyter-mlflow-k8s did not make: give the schedule "
                    "another --name."
                )
            put(name, namespace, manifest, _preload_content=False)
        except kubernetes.client.ApiException as exc:
            raise _api_error(exc, f"replace {kind} {namespace}/{name}") from None
        done.append(f"replaced {kind} {namespace}/{name}")
    return done


def delete_schedule_manifests(name: str, namespace: str) -> list[str]:
    """Delete the CronJob ``name`` (and its Jobs) and its ConfigMap, if this package made them.

    Raises:
        JMKError: Neither exists, one was not made by this package, or the API refused.
    """
    import kubernetes

    api = _api_client()
    core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
    targets = [
        ("CronJob", name, batch.read_namespaced_cron_job, batch.delete_namespaced_cron_job),
        ("ConfigMap", configmap_name(name), core.read_namespaced_config_map, core.delete_namespaced_config_map),
    ]
    done = []
    for kind, object_name, read, delete in targets:
        try:
            existing = json.loads(read(object_name, namespace, _preload_content=False).data)
            if not _ours(existing):
                raise JMKUsageError(f"{kind} {namespace}/{object_name} was not made by jupyter-mlflow-k8s: left alone.")
            delete(object_name, namespace, propagation_policy="Background", _preload_content=False)
            done.append(f"deleted {kind} {namespace}/{object_name}")
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise _api_error(exc, f"delete {kind} {namespace}/{object_name}") from None
    if not done:
        raise JMKUsageError(f"No scheduled pipeline {name!r} in namespace {namespace!r} (no CronJob nor ConfigMap).")
    return done
