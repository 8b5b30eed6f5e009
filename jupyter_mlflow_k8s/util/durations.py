"""Durations and ages: reading ``900``, ``15m``, ``2h``, ``1d`` and writing ``3.2 s``, ``5m``, ``3m 05s``.

Pure functions without errors of their own: a front door that reads a flag says which flag was
wrong, so :func:`duration_seconds` answers ``None`` for a value that is not a duration.
"""

from __future__ import annotations

import re
import time

UNIT_SECONDS: dict[str | None, float] = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>s|m|h|d)?$")


def duration_seconds(value: object) -> float | None:
    """Seconds from ``900``, ``90.5``, ``"900"``, ``"90s"``, ``"15m"``, ``"2h"`` or ``"1d"``.

    ``None`` for anything else, zero and negative numbers included (and booleans, which YAML
    gives for ``yes``).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int with hundreds of digits: no duration
            return None
        return seconds if 0 < seconds < float("inf") else None
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        seconds = float(match["num"]) * UNIT_SECONDS[match["unit"]] if match else 0.0
        if 0 < seconds < float("inf"):
            return seconds
    return None


def seconds_text(seconds: float) -> str:
    """``3.2 s``: how long something took, to a tenth of a second."""
    return f"{seconds:.1f} s"


def elapsed_text(started: float | None, finished: float | None = None) -> str:
    """How long from ``started`` to ``finished`` (or now, while it runs) as ``3.2 s``; empty before it started."""
    if started is None:
        return ""
    return seconds_text((finished or time.time()) - started)


def short_age(seconds: float) -> str:
    """An age in the largest whole unit, as tables show it: ``45s``, ``5m``, ``3h``, ``2d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def clock_duration(seconds: float | None) -> str:
    """A run's length in two units: ``4.2s``, ``3m 05s``, ``2h 03m``, ``1d 02h``; empty for ``None``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    for size, unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if whole >= size:
            return f"{whole // size}{unit} {whole % size // small:02d}{small_unit}"
    return f"{seconds:.1f}s"  # pragma: no cover - unreachable
