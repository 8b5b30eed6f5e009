"""Moments as the state files write them: UTC, ISO 8601 with a ``Z``."""

from __future__ import annotations

from datetime import datetime, timezone


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def iso(moment: datetime | None) -> str | None:
    """``2026-12-06T13:59:34Z`` (UTC), or None."""
    return None if moment is None else utc(moment).isoformat().replace("+00:00", "Z")


def from_iso(text: object) -> datetime | None:
    """The moment an :func:`iso` string names; None for anything else."""
    if not isinstance(text, str) or not text:
        return None
    return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
