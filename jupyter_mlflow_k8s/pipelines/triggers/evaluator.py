"""Evaluating triggers: the sensor loop that the embedded scheduler ticks beside its schedules.

Modelled on Dagster's sensors: each trigger has a persisted cursor, and every run it asks for has a
run key (a hash of the trigger's name and of what made it fire: the new objects with their ETags,
or the start of a drift excursion). The run key, the objects handed on and the run's id are
written to the cursor (atomically) *before* the run is launched, so a scheduler killed at any
moment and started again never launches the same run twice; the run id, derived from the run key,
is refused by ``jmk pipeline run`` if it exists anyway.

Per trigger: one run at a time (new objects wait while one runs), ``cooldown`` seconds between
fires, and ``mode="suggest"`` records and notifies instead of running.

- ``new-objects``: an object is new when its key is not in the cursor or its ETag changed. It
  fires when at least ``min_new`` objects are new and none appeared in the last ``debounce``
  seconds; the run gets their URLs (sorted) as the pipeline parameter ``param``.
- ``drift``: fires when the served model's PSI (the highest over its features, from the endpoint's
  own metrics) was above ``psi_above`` at every check for ``hold`` seconds, as a Prometheus alert
  rule's ``for``; a check at or below it, a model without a reading, or a gap in the checks longer
  than ``stale_seconds`` (the scheduler was down) starts the count again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ...config import JMKSettings, load_settings
from ...exceptions import JMKError
from ...util.processes import process_alive, process_started
from ...util.times import iso
from .sources import DriftReader, DriftReading, list_objects
from .store import (
    Cursor,
    Trigger,
    append_history,
    list_triggers,
    load_cursor,
    save_cursor,
    trigger_dir,
)

log = logging.getLogger(__name__)

#: A gap this long between two checks of a drift trigger restarts its ``--for`` count.
STALE_SECONDS = 300.0

#: ``notify(trigger, entry)``: told of each suggestion (``mode="suggest"``) and each fire.
Notifier = Callable[[Trigger, Mapping[str, Any]], None]


def run_key(trigger: Trigger, basis: Mapping[str, Any]) -> str:
    """The run key of one fire: a SHA-256 of the trigger's name and of what made it fire."""
    text = json.dumps({"trigger": trigger.name, **basis}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def run_id_for(trigger: Trigger, key: str) -> str:
    """The pipeline run id of run key ``key``: ``<name>-<12 hex>`` (at most 40 of a-z, 0-9 and '-')."""
    return f"{trigger.name[:27].rstrip('-')}-{key[:12]}"


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    log: str
    run_id: str


class TriggerEvaluator:
    """Evaluates every trigger of a state directory on each :meth:`tick`, and launches their runs.

    Runs are ``jmk pipeline run`` subprocesses in sessions of their own, as the scheduler's are: a
    stopped evaluator leaves them running, and a later one sees them by pid and start time.
    ``drift_reader`` reads a served model's PSI (without one, drift triggers report that they
    cannot be checked); ``objects`` lists an S3 prefix (:func:`.sources.list_objects`).
    ``carried_from`` is the folder of triggers carried to a scheduler on a cluster, synced into the
    state directory before each tick (:func:`.carry.sync_carried`).
    """

    def __init__(
        self,
        settings: JMKSettings | None = None,
        *,
        drift_reader: DriftReader | None = None,
        objects: Callable[[str, str], dict[str, str]] = list_objects,
        notify: Notifier | None = None,
        stale_seconds: float = STALE_SECONDS,
        carried_from: Path | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.carried_from = carried_from
        self.drift_reader = drift_reader
        self.objects = objects
        self.notify = notify
        self.stale_seconds = stale_seconds
        self._children: dict[str, list[_Child]] = {}

    # -- runs -----------------------------------------------------------------------------------

    def command(self, trigger: Trigger, run_id: str, parameters: Mapping[str, str]) -> list[str]:
        """The command line of one run of ``trigger``'s pipeline, as pipeline run ``run_id``."""
        given = {**trigger.overrides, **parameters}
        flags = [item for key, value in given.items() for item in ("-p", f"{key}={value}")]
        return [
            sys.executable,
            "-m",
            "jupyter_mlflow_k8s.cli",
            "pipeline",
            "run",
            trigger.pipeline,
            *flags,
            "--run-id",
            run_id,
        ]

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "JMK_STATE_DIR": str(self.settings.state_dir),
            "MLFLOW_TRACKING_URI": str(self.settings.tracking_uri),
            "JMK_STORAGE_URL": str(self.settings.storage_url),
            "PYTHONUNBUFFERED": "1",
        }

    def running(self, trigger: Trigger, cursor: Cursor) -> bool:
        """Whether a run of ``trigger`` still runs (one this evaluator started, or an earlier one's)."""
        if any(child.process.poll() is None for child in self._children.get(trigger.name, [])):
            return True
        return process_alive(cursor.pid, cursor.pid_started)

    def _launch(
        self, trigger: Trigger, cursor: Cursor, run_id: str, parameters: Mapping[str, str], now: datetime
    ) -> None:
        logs = trigger_dir(trigger.name, self.settings) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{now:%Y%m%dT%H%M%S}Z-{run_id}.log"
        folder = Path(trigger.pipeline).parent
        with log_path.open("ab") as output:
            process = subprocess.Popen(
                self.command(trigger, run_id, parameters),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=folder if folder.is_dir() else None,
                env=self._env(),
                start_new_session=True,
            )
        self._children.setdefault(trigger.name, []).append(_Child(process, str(log_path), run_id))
        cursor.pid, cursor.pid_started, cursor.log = process.pid, process_started(process.pid), str(log_path)
        log.info(
            "trigger %s fired: pipeline %s as run %s (pid %d, log %s)",
            trigger.name,
            trigger.pipeline,
            run_id,
            process.pid,
            log_path,
        )

    def reap(self) -> None:
        """Notice runs that ended: their exit status goes to the cursor and the history."""
        for name, children in list(self._children.items()):
            for child in list(children):
                code = child.process.poll()
                if code is None:
                    continue
                children.remove(child)
                log.info(
                    "trigger %s: run %s %s, log %s",
                    name,
                    child.run_id,
                    "succeeded" if code == 0 else f"failed (exit {code})",
                    child.log,
                )
                append_history(
                    name,
                    {
                        "time": iso(datetime.now(timezone.utc)),
                        "event": "run-ended",
                        "run_id": child.run_id,
                        "exit": code,
                    },
                    self.settings,
                )
                cursor = load_cursor(name, self.settings)
                if cursor.log == child.log:
                    cursor.pid, cursor.pid_started, cursor.last_exit = None, None, code
                    save_cursor(name, cursor, self.settings)
            if not children:
                del self._children[name]

    # -- evaluation -----------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> list[str]:
        """Evaluate every trigger at ``now`` (default: now); the names of those that fired or suggested."""
        now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        self.reap()
        if self.carried_from is not None:
            from .carry import sync_carried

            try:
                sync_carried(self.carried_from, self.settings)
            except OSError as exc:  # the claim is not writable now: the triggers stored stand
                log.error("carried triggers under %s: cannot be synced: %s", self.carried_from, exc)
        acted: list[str] = []
        for trigger in list_triggers(self.settings):
            cursor = load_cursor(trigger.name, self.settings)
            if cursor.pid and trigger.name not in self._children and not process_alive(cursor.pid, cursor.pid_started):
                cursor.pid, cursor.pid_started = None, None  # ended while no evaluator watched: exit unknown
            try:
                if self.evaluate(trigger, cursor, now):
                    acted.append(trigger.name)
                cursor.last_error = None
            except (JMKError, OSError, ValueError) as exc:
                log.error("trigger %s: cannot be checked: %s", trigger.name, exc)
                cursor.last_error = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug, or a library's own error: the other triggers still get checked
                log.exception("trigger %s: evaluation failed", trigger.name)
                cursor.last_error = f"{type(exc).__name__}: {exc}"
            cursor.last_check = now
            save_cursor(trigger.name, cursor, self.settings)
        return acted

    def evaluate(self, trigger: Trigger, cursor: Cursor, now: datetime) -> bool:
        """Check one trigger at ``now`` and fire it if due (the cursor is updated, and saved before a launch)."""
        if trigger.kind == "drift":
            return self._drift(trigger, cursor, now)
        return self._new_objects(trigger, cursor, now)

    def _blocked(self, trigger: Trigger, cursor: Cursor, now: datetime) -> str | None:
        """Why a due trigger waits (cooldown, its previous run), or None."""
        eligible = cursor.next_eligible(trigger)
        if eligible is not None and now < eligible:
            return f"cooling down until {iso(eligible)}"
        if self.running(trigger, cursor):
            return f"its previous run {cursor.last_run_id} (pid {cursor.pid}) still runs"
        return None

    def _new_objects(self, trigger: Trigger, cursor: Cursor, now: datetime) -> bool:
        listing = self.objects(trigger.url, trigger.pattern)
        cursor.seen = {key: etag for key, etag in cursor.seen.items() if key in listing}  # deleted: new if re-added
        new = {key: etag for key, etag in listing.items() if cursor.seen.get(key) != etag}
        if set(new.items()) - set(cursor.pending.items()):
            cursor.pending_since = now  # something appeared (or changed): the debounce starts again
        cursor.pending = new
        if not new:
            cursor.pending_since = None
        cursor.last_value = float(len(new))
        if len(new) < trigger.min_new:
            return False
        quiet_since = cursor.pending_since or now
        if trigger.debounce and now - quiet_since < timedelta(seconds=trigger.debounce):
            return False
        if (why := self._blocked(trigger, cursor, now)) is not None:
            log.info("trigger %s: %d new objects wait: %s", trigger.name, len(new), why)
            return False
        objects = sorted(new)
        key = run_key(trigger, {"objects": sorted(new.items())})
        cursor.seen.update(new)
        cursor.pending, cursor.pending_since = {}, None
        return self._fire(
            trigger, cursor, now, key, {trigger.param: json.dumps(objects)}, {"objects": objects, "count": len(objects)}
        )

    def _drift(self, trigger: Trigger, cursor: Cursor, now: datetime) -> bool:
        previous = cursor.last_check
        if self.drift_reader is None:
            reading = DriftReading(None, "this scheduler has no drift reader (start it with `jmk scheduler`)")
        else:
            reading = self.drift_reader(trigger.model, trigger.alias)
        cursor.last_value = reading.value
        if reading.value is None or not reading.value > trigger.psi_above:
            if cursor.above_since is not None:
                log.info(
                    "trigger %s: PSI back to %s (threshold %g): the count starts again",
                    trigger.name,
                    reading.detail or reading.value,
                    trigger.psi_above,
                )
            cursor.above_since = None
            if reading.value is None and reading.detail:
                raise JMKError(f"no drift reading of {trigger.model}@{trigger.alias}: {reading.detail}")
            return False
        stale = previous is not None and (now - previous).total_seconds() > self.stale_seconds
        if cursor.above_since is None or stale:
            cursor.above_since = now
        if now - cursor.above_since < timedelta(seconds=trigger.hold):
            return False
        if (why := self._blocked(trigger, cursor, now)) is not None:
            log.info(
                "trigger %s: PSI %g above %g since %s, waits: %s",
                trigger.name,
                reading.value,
                trigger.psi_above,
                iso(cursor.above_since),
                why,
            )
            return False
        since = cursor.above_since
        key = run_key(trigger, {"above_since": iso(since)})
        cursor.above_since = None  # a drift that goes on has to hold for another full --for (after the cooldown)
        return self._fire(
            trigger,
            cursor,
            now,
            key,
            {},
            {
                "psi": reading.value,
                "detail": reading.detail,
                "above_since": iso(since),
                "endpoints": list(reading.endpoints),
            },
        )

    def _fire(
        self,
        trigger: Trigger,
        cursor: Cursor,
        now: datetime,
        key: str,
        parameters: Mapping[str, str],
        facts: Mapping[str, Any],
    ) -> bool:
        """Record the run key, then launch (or suggest). False when the run key was fired before."""
        entry: dict[str, Any] = {"time": iso(now), "run_key": key, **facts}
        if key in cursor.run_keys:
            log.warning("trigger %s: run key %s was fired before; not again", trigger.name, key[:12])
            append_history(trigger.name, {**entry, "event": "duplicate-skipped"}, self.settings)
            return False
        run_id = run_id_for(trigger, key)
        cursor.run_keys.append(key)
        cursor.last_fire, cursor.last_run_key = now, key
        if trigger.mode == "suggest":
            entry.update(
                event="suggested", pipeline=trigger.pipeline, command=self.command(trigger, run_id, parameters)[2:]
            )
            if not save_cursor(trigger.name, cursor, self.settings):
                return False
            append_history(trigger.name, entry, self.settings)
            log.warning(
                "trigger %s suggests a run of %s (%s): `jmk pipeline run %s%s`",
                trigger.name,
                trigger.pipeline,
                trigger.condition,
                trigger.pipeline,
                "".join(f" -p {k}='{v}'" for k, v in {**trigger.overrides, **parameters}.items()),
            )
        else:
            cursor.last_run_id, cursor.last_exit, cursor.pid, cursor.pid_started = run_id, None, None, None
            entry.update(event="fired", run_id=run_id)
            if not save_cursor(trigger.name, cursor, self.settings):  # removed meanwhile: nothing to launch
                return False
            append_history(trigger.name, entry, self.settings)
            self._launch(trigger, cursor, run_id, parameters, now)
            save_cursor(trigger.name, cursor, self.settings)  # its pid: one run at a time, across restarts too
        if self.notify is not None:
            try:
                self.notify(trigger, entry)
            except Exception:
                log.exception("trigger %s: the notification failed", trigger.name)
        return True
