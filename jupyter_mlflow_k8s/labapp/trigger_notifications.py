"""Tell the browser when a pipeline trigger fires or suggests a run: a watcher of the triggers' histories.

Triggers are evaluated by ``jmk scheduler`` (another process, or a Deployment on the cluster), which
appends each fire and each suggestion to ``<state>/pipelines/triggers/<name>/history.jsonl``. The
watcher reads the newest entries of every trigger every few seconds in the API's thread pool and
announces each ``fired`` or ``suggested`` entry it had not seen as a jupyter_events event, which
jupyter_server relays to the browser's ``/api/events/subscribe`` websocket, as the job-ended events
of :mod:`.notifications` are. Entries written before the server started are never announced.

Nothing here blocks the event loop: :class:`TriggerEventWatcher` is plain and synchronous (tests
drive it directly); :func:`.notifications.watch_events` is the asyncio loop around it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

#: The event's id (jupyter_events needs a URI; it names the event, nothing is fetched from it).
SCHEMA_ID = "https://jupyter-mlflow-k8s.org/events/trigger-fired"
SCHEMA_VERSION = "1"
SCHEMA: dict[str, Any] = {
    "$id": SCHEMA_ID,
    "version": SCHEMA_VERSION,
    "title": "A pipeline trigger fired or suggested a run",
    "personal-data": False,
    "description": "Emitted once for each fired or suggested entry that a trigger's history gains.",
    "type": "object",
    "required": ["trigger", "event", "mode", "pipeline", "condition", "time"],
    "properties": {
        "trigger": {"type": "string"},
        "event": {"enum": ["fired", "suggested"]},
        "mode": {"enum": ["run", "suggest"]},
        "pipeline": {"type": "string"},
        "condition": {"type": "string", "description": "e.g. new objects in s3://b/in/ matching *.parquet"},
        "time": {"type": "number", "description": "epoch seconds of the fire"},
        "run_id": {"type": ["string", "null"], "description": "the pipeline run a fire launched"},
        "objects": {"type": "integer", "description": "how many new objects made it fire"},
        "psi": {"type": ["number", "null"], "description": "the PSI that made a drift trigger fire"},
        "command": {"type": ["string", "null"], "description": "a suggestion's command, to run it by hand"},
    },
}

ANNOUNCED = ("fired", "suggested")

#: A trigger as the watcher needs it: its definition (name, mode, pipeline, condition) and its newest entries.
TriggerEntries = tuple[Any, list[dict[str, Any]]]


def _epoch(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _command(argv: object) -> str | None:
    """``jmk pipeline run ...`` from the argv a suggestion recorded (``jupyter_mlflow_k8s.cli pipeline run ...``)."""
    if not isinstance(argv, list) or not argv:
        return None
    words = [str(word) for word in argv]
    if words[0].endswith("jupyter_mlflow_k8s.cli"):
        words = words[1:]
    return shlex.join(["jmk", *words])


def trigger_event(trigger: Any, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The event's data for one history entry of ``trigger`` (a fire or a suggestion)."""
    objects = entry.get("objects")
    return {
        "trigger": trigger.name,
        "event": entry["event"],
        "mode": trigger.mode,
        "pipeline": trigger.pipeline,
        "condition": trigger.condition,
        "time": _epoch(entry.get("time")) or 0.0,
        "run_id": entry.get("run_id"),
        "objects": len(objects) if isinstance(objects, list) else 0,
        "psi": entry.get("psi"),
        "command": _command(entry.get("command")),
    }


def _key(entry: Mapping[str, Any]) -> str:
    return f"{entry.get('time')}|{entry.get('event')}|{entry.get('run_key') or entry.get('run_id')}"


class TriggerEventWatcher:
    """Which fires and suggestions are new since the last look: the entries seen, remembered per trigger.

    ``list_entries`` gives each trigger with its newest history entries. Each entry recorded at or after
    ``since`` (the server's start) is announced once, whichever look first sees it.
    """

    def __init__(self, list_entries: Callable[[], Iterable[TriggerEntries]], since: float) -> None:
        self.list_entries = list_entries
        self.since = since
        self._seen: dict[str, set[str]] = {}

    def check(self) -> list[dict[str, Any]]:
        """The events of the fires and suggestions not seen by the previous call and recorded after ``since``."""
        found = list(self.list_entries())
        previous = self._seen
        self._seen = {trigger.name: {_key(entry) for entry in entries} for trigger, entries in found}
        events = []
        for trigger, entries in found:
            known = previous.get(trigger.name, set())
            for entry in entries:
                if entry.get("event") not in ANNOUNCED or _key(entry) in known:
                    continue
                if (_epoch(entry.get("time")) or 0.0) < self.since:
                    continue  # written before the server started
                events.append(trigger_event(trigger, entry))
        return events


def history_lister(settings: Any, limit: int = 50) -> Callable[[], list[TriggerEntries]]:
    """Every trigger of ``settings``' state directory with its last ``limit`` history entries."""
    from ..exceptions import JMKError
    from ..pipelines.triggers import list_triggers, read_history

    def list_entries() -> list[TriggerEntries]:
        found = []
        for trigger in list_triggers(settings):
            try:
                found.append((trigger, read_history(trigger.name, settings, limit=limit)))
            except JMKError:  # removed between the listing and the read
                continue
        return found

    return list_entries


def describe(event: Mapping[str, Any]) -> str:
    """The event in the server's log."""
    return f"trigger {event['trigger']} {event['event']}"
