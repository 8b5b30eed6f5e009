"""Cron times in UTC: when a schedule next fires, read as Kubernetes reads a CronJob's schedule."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ...exceptions import JMKUsageError
from ...k8s.validation import check_cron

UTC = timezone.utc
TIME_ZONE = "Etc/UTC"
# The longest a cron schedule is searched ahead (Feb 29 can be 8 years away, as from 2096 to 2104).
SEARCH_YEARS = 10


class CronError(JMKUsageError):
    """A schedule that is not valid cron syntax as Kubernetes reads it, or that never fires."""


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
