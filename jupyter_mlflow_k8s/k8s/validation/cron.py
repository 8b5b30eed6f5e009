"""Cron schedules as Kubernetes parses them (github.com/robfig/cron/v3, ParseStandard)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from .paths import (
    _each_invalid,
    _invalid,
)

# -- cron schedules (github.com/robfig/cron/v3, ParseStandard) -------------------------------


class _CronField(NamedTuple):
    name: str
    low: int
    high: int
    names: Mapping[str, int]
    hint: str


_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_WEEKDAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_CRON_FIELDS = (
    _CronField("minute", 0, 59, {}, "0-59"),
    _CronField("hour", 0, 23, {}, "0-23"),
    _CronField("day of month", 1, 31, {}, "1-31"),
    _CronField("month", 1, 12, _MONTHS, "1-12 or JAN-DEC"),
    _CronField("day of week", 0, 6, _WEEKDAYS, "0-6 or SUN-SAT, Sunday is 0"),
)
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EVERY = "@every "
# Go's time.ParseDuration: signed, a sequence of decimal numbers each with a unit, or a bare 0.
_GO_DURATION = re.compile(r"[-+]?(?:0|(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)")
_CRON_NUMBER = re.compile("[+-]?[0-9]+")


def check_cron(schedule: str, what: str) -> list[str]:
    """Check a CronJob schedule as the API server does (robfig/cron's standard parser).

    Accepted: five fields (minute, hour, day of month, month, day of week), each a list of ``*``,
    ``?``, numbers or ranges ``a-b``, optionally stepped (``*/5``, ``1-10/2``), with month and
    weekday names (``JAN``, ``mon``) in any case; or a descriptor (``@hourly``, ``@daily`` ...,
    ``@every 1h30m``). A ``TZ=`` or ``CRON_TZ=`` prefix is refused: Kubernetes wants
    ``spec.timeZone`` instead.

    Args:
        schedule: The schedule.
        what: Where it comes from, e.g. ``"spec.schedule"`` or ``"--schedule"``; it leads each problem.

    Returns:
        The problems with the schedule; empty when Kubernetes would accept it.
    """
    problems = _each_invalid(what, schedule, _cron_errors(schedule))
    if "TZ" in schedule:
        detail = (
            "cannot use TZ or CRON_TZ in schedule, use the CronJob's timeZone field instead "
            "(e.g. schedule '0 3 * * *' with timeZone 'Europe/Berlin')"
        )
        problems.append(_invalid(what, schedule, detail))
    return problems


def _cron_errors(schedule: str) -> list[str]:
    spec = schedule
    if spec.startswith(("TZ=", "CRON_TZ=")):
        spec = spec.partition(" ")[2].strip()
    if not spec:
        return ["empty schedule: write five fields, e.g. '0 3 * * *', or a descriptor such as '@daily'"]
    if spec.startswith("@"):
        return _cron_descriptor_errors(spec)
    fields = spec.split()
    if len(fields) != len(_CRON_FIELDS):
        return [f"expected exactly 5 fields (minute hour day-of-month month day-of-week), found {len(fields)}"]
    errors = []
    for text, field in zip(fields, _CRON_FIELDS, strict=True):
        try:
            for expression in filter(None, text.split(",")):
                _check_cron_range(expression, field)
        except ValueError as exc:
            errors.append(f"{field.name} field {text!r}: {exc}")
    return errors


def _cron_descriptor_errors(spec: str) -> list[str]:
    if spec in _CRON_DESCRIPTORS:
        return []
    if spec.startswith(_EVERY):
        duration = spec[len(_EVERY) :]
        if _GO_DURATION.fullmatch(duration):
            return []
        return [f"@every needs a duration such as '90s', '15m' or '1h30m' (units ns, us, ms, s, m, h): {duration!r}"]
    return [f"unrecognized descriptor {spec!r}: use one of {', '.join(_CRON_DESCRIPTORS)} or '@every <duration>'"]


def _check_cron_range(expression: str, field: _CronField) -> None:
    """Raise ``ValueError`` unless ``expression`` is ``*``, ``?``, a value or a range ``a-b``, then maybe ``/step``."""
    range_and_step = expression.split("/")
    low_and_high = range_and_step[0].split("-")
    if low_and_high[0] in ("*", "?"):
        start, end = field.low, field.high
    elif len(low_and_high) > 2:
        raise ValueError(f"too many hyphens in {expression!r}")
    else:
        start, end = _cron_value(low_and_high[0], field), _cron_value(low_and_high[-1], field)
    if len(range_and_step) > 2:
        raise ValueError(f"too many slashes in {expression!r}")
    step = _cron_number(range_and_step[1]) if len(range_and_step) == 2 else 1
    if len(range_and_step) == 2 and len(low_and_high) == 1:
        end = field.high  # "N/step" means "N-max/step"
    if start < field.low:
        raise ValueError(f"{start} is below the minimum ({field.name}: {field.hint})")
    if end > field.high:
        raise ValueError(f"{end} is above the maximum ({field.name}: {field.hint})")
    if start > end:
        raise ValueError(f"the range {expression!r} starts after it ends")
    if step == 0:
        raise ValueError(f"the step in {expression!r} must be a positive number")


def _cron_value(text: str, field: _CronField) -> int:
    named = field.names.get(text.lower())
    if named is not None:
        return named
    if not _CRON_NUMBER.fullmatch(text) and field.names:
        raise ValueError(f"{text!r} is neither a number nor a {field.name} name ({field.hint})")
    return _cron_number(text)


def _cron_number(text: str) -> int:
    if not _CRON_NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    number = int(text)
    if number < 0:
        raise ValueError(f"negative number {text!r} not allowed")
    return number
