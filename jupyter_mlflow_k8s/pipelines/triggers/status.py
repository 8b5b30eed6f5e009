"""Where each trigger stands, in words: what ``jmk trigger list`` and the sidebar show."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ...config import JMKSettings
from ...util.processes import process_alive
from .store import list_triggers, load_cursor


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}Z"


def trigger_rows(settings: JMKSettings | None = None) -> list[dict[str, Any]]:
    """Every trigger with its state, as the list and the sidebar show it."""
    rows = []
    for trigger in list_triggers(settings):
        cursor = load_cursor(trigger.name, settings)
        if cursor.pid and process_alive(cursor.pid, cursor.pid_started):
            state = f"running {cursor.last_run_id} (pid {cursor.pid})"
        elif cursor.last_error:
            state = f"error: {cursor.last_error}"
        elif cursor.last_exit is not None:
            outcome = "succeeded" if cursor.last_exit == 0 else f"failed (exit {cursor.last_exit})"
            state = f"{cursor.last_run_id} {outcome}"
        elif trigger.kind == "drift" and cursor.above_since is not None:
            state = f"PSI {cursor.last_value:.3f} above since {_when(cursor.above_since)}"
        elif cursor.pending:
            state = f"{len(cursor.pending)} new, waiting"
        else:
            state = "-" if cursor.last_check is None else "watching"
        rows.append(
            {"trigger": trigger, "cursor": cursor, "state": state, "next_eligible": cursor.next_eligible(trigger)}
        )
    return rows
