"""Triggers: pipelines run when new objects land in S3 or when a served model's inputs drift.

``jmk trigger add NAME --pipeline pipeline.yaml --on-new-objects s3://bucket/prefix/`` (or
``--on-drift MODEL@ALIAS --psi-above 0.2 --for 15m``) stores a trigger under
``<state dir>/pipelines/triggers/<name>/``; the embedded scheduler (``jmk scheduler``) evaluates
every trigger on each of its ticks, beside the schedules.

Modules: :mod:`.store` (definitions, cursors and histories on disk; the checks of a new trigger),
:mod:`.sources` (listing S3 objects with their ETags; the drift reading's shape) and
:mod:`.evaluator` (the sensor loop: run keys, debounce, cooldown, one run at a time, suggestions).
"""

from __future__ import annotations

from .evaluator import STALE_SECONDS, Notifier, TriggerEvaluator, run_id_for, run_key
from .sources import DriftReader, DriftReading, list_objects
from .store import (
    DEFAULT_PARAM,
    KINDS,
    MODES,
    Cursor,
    Trigger,
    add_trigger,
    build_trigger,
    get_trigger,
    list_triggers,
    load_cursor,
    parse_model_alias,
    read_history,
    remove_trigger,
    trigger_dir,
    triggers_dir,
)

__all__ = [
    "DEFAULT_PARAM",
    "KINDS",
    "MODES",
    "STALE_SECONDS",
    "Cursor",
    "DriftReader",
    "DriftReading",
    "Notifier",
    "Trigger",
    "TriggerEvaluator",
    "add_trigger",
    "build_trigger",
    "get_trigger",
    "list_objects",
    "list_triggers",
    "load_cursor",
    "parse_model_alias",
    "read_history",
    "remove_trigger",
    "run_id_for",
    "run_key",
    "trigger_dir",
    "triggers_dir",
]
