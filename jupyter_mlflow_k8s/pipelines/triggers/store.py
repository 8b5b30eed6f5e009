"""Triggers on disk: their definitions, their cursors and their histories, and the checks of a new one.

Each trigger has a folder ``<state dir>/pipelines/triggers/<name>/``: ``trigger.json`` (what the user
asked for; written once by ``jmk trigger add``), ``cursor.json`` (what the evaluator has seen and
done; rewritten atomically after each evaluation, and before any run is launched), ``history.jsonl``
(one line per fire, suggestion, skipped duplicate and run end) and ``logs/`` (the runs' output).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ...config import JMKSettings, load_settings
from ...exceptions import JMKUsageError
from ...k8s.validation import check_dns1123_label
from ...util.durations import duration_seconds
from ...util.names import dns_slug
from ...util.times import from_iso, iso, utc
from ..model import Pipeline

log = logging.getLogger(__name__)

KINDS = ("new-objects", "drift")
MODES = ("run", "suggest")
NAME_MAX = 52
#: The pipeline parameter that receives the new objects' URLs (a list), unless ``--param`` names another.
DEFAULT_PARAM = "new_objects"
#: How many run keys a cursor remembers (the newest); a run key older than these could fire again.
RUN_KEYS_KEPT = 1000
_MODEL_ALIAS = re.compile(r"^(?:models:/)?(?P<model>[^@/\s]+)@(?P<alias>[A-Za-z0-9_\-]+)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def span(seconds: float) -> str:
    """A duration as the flags take it: ``6h``, ``10m``, ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass
class Trigger:
    """What ``jmk trigger add`` stored: when to run which pipeline.

    ``kind`` is ``new-objects`` (``url``, ``pattern``, ``min_new``, ``debounce``, ``param``) or ``drift``
    (``model``, ``alias``, ``psi_above``, ``hold``: the seconds PSI must stay above the threshold).
    Durations are seconds; ``overrides`` are ``-p`` texts as ``jmk pipeline run`` reads them.
    """

    name: str
    pipeline: str  # the absolute path of pipeline.yaml
    kind: str
    mode: str = "run"
    cooldown: float = 0.0
    overrides: dict[str, str] = field(default_factory=dict)
    url: str = ""
    pattern: str = "*"
    min_new: int = 1
    debounce: float = 0.0
    param: str = DEFAULT_PARAM
    model: str = ""
    alias: str = ""
    psi_above: float = 0.0
    hold: float = 0.0
    created: datetime | None = None

    @property
    def condition(self) -> str:
        """The condition in the words of the command line."""
        if self.kind == "drift":
            return f"drift of {self.model}@{self.alias}: PSI > {self.psi_above:g} for {span(self.hold)}"
        extra = f", at least {self.min_new}" if self.min_new > 1 else ""
        wait = f", quiet {span(self.debounce)}" if self.debounce else ""
        return f"new objects in {self.url} matching {self.pattern}{extra}{wait}"

    def to_dict(self) -> dict[str, Any]:
        """As JSON data."""
        data = dataclasses.asdict(self)
        data["created"] = iso(self.created)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trigger:
        """From its JSON data; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["created"] = from_iso(values.get("created"))
        return cls(**values)


@dataclass
class Cursor:
    """What the evaluator knows of one trigger, persisted after each evaluation.

    ``seen``: the objects already handed to a run or a suggestion (key to ETag: an object rewritten
    with another ETag is new again). ``pending``: new objects not yet handed on, and ``pending_since``
    when that set last changed (debounce counts from there). ``run_keys``: every run key fired or
    suggested, newest last; a run key is recorded here before its run is launched. ``above_since``:
    since when PSI has been above the threshold at every check (drift), ``None`` when it is not.
    """

    seen: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    pending_since: datetime | None = None
    run_keys: list[str] = field(default_factory=list)
    last_check: datetime | None = None
    last_fire: datetime | None = None
    last_run_id: str | None = None
    last_run_key: str | None = None
    last_error: str | None = None
    last_value: float | None = None
    above_since: datetime | None = None
    pid: int | None = None
    pid_started: float | None = None
    log: str | None = None
    last_exit: int | None = None

    _TIMES = ("pending_since", "last_check", "last_fire", "above_since")

    def to_dict(self) -> dict[str, Any]:
        """As JSON data (times as ISO 8601 UTC strings)."""
        data = dataclasses.asdict(self)
        for key in self._TIMES:
            data[key] = iso(getattr(self, key))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cursor:
        """From its JSON data; unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in cls._TIMES:
            values[key] = from_iso(values.get(key))
        return cls(**values)

    def next_eligible(self, trigger: Trigger) -> datetime | None:
        """When the cooldown after the last fire ends (None: no cooldown pending)."""
        if self.last_fire is None or not trigger.cooldown:
            return None
        return self.last_fire + timedelta(seconds=trigger.cooldown)


# -- files -----------------------------------------------------------------------------------


def triggers_dir(settings: JMKSettings | None = None) -> Path:
    """Where triggers are kept: ``<state dir>/pipelines/triggers``."""
    return (settings or load_settings()).state_path / "pipelines" / "triggers"


def trigger_dir(name: str, settings: JMKSettings | None = None) -> Path:
    """The folder of trigger ``name``."""
    return triggers_dir(settings) / name


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def get_trigger(name: str, settings: JMKSettings | None = None) -> Trigger:
    """The trigger ``name``.

    Raises:
        JMKUsageError: There is none by that name (the known ones are listed).
    """
    try:
        if check_dns1123_label(name, "name"):
            raise FileNotFoundError(name)
        return Trigger.from_dict(json.loads((trigger_dir(name, settings) / "trigger.json").read_text()))
    except FileNotFoundError:
        known = ", ".join(t.name for t in list_triggers(settings)) or "none"
        raise JMKUsageError(f"No trigger named {name!r}. Triggers: {known} (`jmk trigger list`).") from None


def list_triggers(settings: JMKSettings | None = None) -> list[Trigger]:
    """Every trigger, by name; one whose file cannot be read is logged and left out."""
    found = []
    for path in sorted(triggers_dir(settings).glob("*/trigger.json")):
        try:
            found.append(Trigger.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("trigger file %s is unreadable, left out: %s", path, exc)
    return found


def load_cursor(name: str, settings: JMKSettings | None = None) -> Cursor:
    """The cursor of trigger ``name`` (an empty one before its first evaluation)."""
    try:
        return Cursor.from_dict(json.loads((trigger_dir(name, settings) / "cursor.json").read_text()))
    except FileNotFoundError:
        return Cursor()


def save_cursor(name: str, cursor: Cursor, settings: JMKSettings | None = None) -> bool:
    """Write the cursor atomically, unless the trigger was removed meanwhile; whether it was written."""
    folder = trigger_dir(name, settings)
    if not (folder / "trigger.json").exists():
        return False
    cursor.run_keys = cursor.run_keys[-RUN_KEYS_KEPT:]
    write_json(folder / "cursor.json", cursor.to_dict())
    return True


def append_history(name: str, entry: Mapping[str, Any], settings: JMKSettings | None = None) -> None:
    """Add one line to the trigger's history (flushed to disk before returning)."""
    folder = trigger_dir(name, settings)
    if not folder.exists():
        return
    with (folder / "history.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(entry), sort_keys=True, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_history(name: str, settings: JMKSettings | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The trigger's history, oldest first (the last ``limit`` entries); unreadable lines are skipped."""
    get_trigger(name, settings)
    path = trigger_dir(name, settings) / "history.jsonl"
    entries = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries[-limit:] if limit else entries


# -- checks of a new trigger -----------------------------------------------------------------


def trigger_name(pipeline_name: str) -> str:
    """A trigger name from a pipeline's name: lowercase letters, digits and '-', at most 52."""
    return dns_slug(pipeline_name, NAME_MAX) or "trigger"


def _duration(value: object, flag: str, example: str, problems: list[str], *, zero: bool = True) -> float:
    if value is None or value == "" or (zero and str(value).strip() in ("0", "0s", "0m", "0h")):
        return 0.0
    seconds = duration_seconds(value)
    if seconds is None:
        problems.append(
            f"{flag} {value!r} is not a duration: use seconds or a number with s, m, h or d, e.g. {flag} {example}"
        )
        return 0.0
    return seconds


def _go(flags: list[str]) -> str:
    return "only goes" if len(flags) == 1 else "only go"


def _number(value: Any, kind: type, flag: str, example: str, problems: list[str]) -> Any:
    """``value`` as an int or float when it is text (from the command line); a problem when it is not one."""
    if not isinstance(value, str):
        return value
    try:
        return kind(value.strip())
    except ValueError:
        problems.append(f"{flag} {value!r} is not a {'whole ' if kind is int else ''}number: e.g. {flag} {example}")
        return None


def parse_model_alias(text: str) -> tuple[str, str] | None:
    """``(model, alias)`` from ``NAME@ALIAS`` (or ``models:/NAME@ALIAS``); None if it is not that."""
    match = _MODEL_ALIAS.match(text.strip())
    return (match["model"], match["alias"]) if match else None


def check_objects_url(url: str) -> str | None:
    """The problem of an ``--on-new-objects`` URL, or None: it must be ``s3://BUCKET/PREFIX/``."""
    if not url.startswith("s3://"):
        return f"--on-new-objects {url!r}: give an S3 folder, e.g. --on-new-objects s3://my-bucket/incoming/"
    bucket = url[5:].split("/", 1)[0]
    if not _BUCKET.match(bucket):
        return (
            f"--on-new-objects {url!r}: {bucket!r} is not a bucket name (3-63 of a-z, 0-9, '.' and '-'); "
            "e.g. --on-new-objects s3://my-bucket/incoming/"
        )
    return None


def build_trigger(
    pipeline_path: str | Path,
    *,
    name: str | None = None,
    on_new_objects: str | None = None,
    pattern: str | None = None,
    min_new: int | str | None = None,
    debounce: str | float | None = None,
    param: str | None = None,
    on_drift: str | None = None,
    psi_above: float | str | None = None,
    hold: str | float | None = None,
    cooldown: str | float | None = None,
    mode: str = "run",
    overrides: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Trigger:
    """A checked trigger, not yet stored: every problem of the flags and of the pipeline in one error.

    Raises:
        JMKUsageError: Each problem on a line, with what to type instead.
    """
    problems: list[str] = []
    min_new = _number(min_new, int, "--min-new", "3", problems)
    psi_above = _number(psi_above, float, "--psi-above", "0.2", problems)
    if (on_new_objects is None) == (on_drift is None):
        problems.append(
            "give one condition: --on-new-objects s3://BUCKET/PREFIX/ or --on-drift MODEL@ALIAS "
            "--psi-above 0.2 --for 15m"
        )
    if mode not in MODES:
        problems.append(f"--mode {mode!r}: use --mode run (run the pipeline) or --mode suggest (record and notify)")
    cool = _duration(cooldown, "--cooldown", "6h", problems)
    objects_only = [
        flag
        for flag, value in (
            ("--pattern", pattern),
            ("--min-new", min_new),
            ("--debounce", debounce),
            ("--param-name", param),
        )
        if value is not None
    ]
    drift_only = [flag for flag, value in (("--psi-above", psi_above), ("--for", hold)) if value is not None]
    kind = "drift" if on_drift is not None else "new-objects"
    fields: dict[str, Any] = {}
    if on_new_objects is not None:
        if drift_only:
            problems.append(f"{', '.join(drift_only)} {_go(drift_only)} with --on-drift MODEL@ALIAS.")
        url_problem = check_objects_url(on_new_objects)
        if url_problem:
            problems.append(url_problem)
        if min_new is not None and (isinstance(min_new, bool) or not isinstance(min_new, int) or min_new < 1):
            problems.append(f"--min-new {min_new!r}: give a whole number of at least 1, e.g. --min-new 3")
        if pattern is not None and not pattern.strip():
            problems.append("--pattern is empty: give a glob of object names, e.g. --pattern '*.parquet'")
        fields = {
            "url": on_new_objects.rstrip("/") + "/",
            "pattern": (pattern or "*").strip(),
            "min_new": min_new if isinstance(min_new, int) and min_new >= 1 else 1,
            "debounce": _duration(debounce, "--debounce", "10m", problems),
            "param": param if param is not None else DEFAULT_PARAM,
        }
        if param is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", param):
            problems.append(
                f"--param-name {param!r}: give a pipeline parameter's name, e.g. --param-name {DEFAULT_PARAM}"
            )
    elif on_drift is not None:
        if objects_only:
            problems.append(f"{', '.join(objects_only)} {_go(objects_only)} with --on-new-objects s3://BUCKET/PREFIX/.")
        parsed = parse_model_alias(on_drift)
        if parsed is None:
            problems.append(
                f"--on-drift {on_drift!r}: give a registered model and its alias, e.g. --on-drift churn@champion"
            )
        if psi_above is None:
            problems.append("--on-drift needs --psi-above, the PSI that counts as drift, e.g. --psi-above 0.2")
        elif (
            isinstance(psi_above, bool)
            or not isinstance(psi_above, (int, float))
            or not psi_above > 0
            or psi_above != psi_above
            or psi_above == float("inf")
        ):
            problems.append(f"--psi-above {psi_above!r}: give a positive number, e.g. --psi-above 0.2")
        if hold is None:
            problems.append("--on-drift needs --for, how long PSI must stay above the threshold, e.g. --for 15m")
        model, alias = parsed or ("", "")
        fields = {
            "model": model,
            "alias": alias,
            "psi_above": float(psi_above or 0.0),
            "hold": _duration(hold, "--for", "15m", problems, zero=False) if hold is not None else 0.0,
        }
    if name is not None:
        problems += check_dns1123_label(name, "--name")
        if len(name) > NAME_MAX:
            problems.append(f"--name: {name!r} is {len(name)} characters, more than {NAME_MAX}")
    texts = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (overrides or {}).items()}
    pipeline = _check_pipeline(pipeline_path, texts, kind, fields.get("param"), problems)
    if problems:
        raise JMKUsageError("The trigger was not added:\n" + "\n".join(f"- {p}" for p in problems))
    assert pipeline is not None
    return Trigger(
        name=name or trigger_name(pipeline.name),
        pipeline=str((pipeline.source or Path(pipeline_path)).resolve()),
        kind=kind,
        mode=mode,
        cooldown=cool,
        overrides=texts,
        created=utc(now or datetime.now().astimezone()),
        **fields,
    )


def _check_pipeline(
    path: str | Path, overrides: dict[str, str], kind: str, param: str | None, problems: list[str]
) -> Pipeline | None:
    """The pipeline, loaded and validated with the parameter the trigger will set; its problems added."""
    from ..spec import InvalidPipeline, load_pipeline

    if not Path(path).is_file():
        problems.append(f"--pipeline {str(path)!r}: no such file; give the path of a pipeline.yaml")
        return None
    given = dict(overrides)
    if kind == "new-objects" and param:
        if param in given:
            problems.append(f"-p {param}: the trigger sets this parameter to the new objects' URLs; leave it out")
        given[param] = "[]"
    try:
        return load_pipeline(path, given)
    except InvalidPipeline as exc:
        for problem in exc.problems:
            if param and f"-p {param}:" in problem:
                problem = (
                    f"the pipeline declares no parameter {param!r}, which receives the new objects' URLs: "
                    f"add `{param}: []` under parameters: in {path}, or name another with --param-name"
                )
            problems.append(problem)
    except JMKUsageError as exc:
        problems.append(str(exc))
    return None


def add_trigger(trigger: Trigger, *, replace: bool = False, settings: JMKSettings | None = None) -> Trigger:
    """Store a trigger built by :func:`build_trigger` (a replaced one starts with a fresh cursor).

    Raises:
        JMKUsageError: The name is taken (and not ``replace``).
    """
    folder = trigger_dir(trigger.name, settings)
    if (folder / "trigger.json").exists():
        if not replace:
            raise JMKUsageError(
                f"A trigger named {trigger.name!r} exists already. Remove it (`jmk trigger remove {trigger.name}`), "
                "replace it (--replace), or give this one another --name."
            )
        (folder / "cursor.json").unlink(missing_ok=True)
    write_json(folder / "trigger.json", trigger.to_dict())
    return trigger


def remove_trigger(name: str, settings: JMKSettings | None = None) -> Trigger:
    """Remove trigger ``name``, its cursor and history (a run it started keeps running); returns it.

    Raises:
        JMKUsageError: There is none by that name.
    """
    trigger = get_trigger(name, settings)
    shutil.rmtree(trigger_dir(name, settings), ignore_errors=True)
    return trigger
