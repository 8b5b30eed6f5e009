"""Triggers carried to the scheduler on a cluster: a ConfigMap each, synced into the claim's state.

``jmk scheduler --print-manifests|--apply --state-claim PVC`` puts each trigger defined here (or those
named with ``--trigger``) in a ConfigMap of its own (:func:`carry`): its definition
(``trigger.json``, the pipeline's path rewritten to where the pod mounts it) and its pipeline's files
(``pipeline.yaml`` and its notebooks without outputs, as a scheduled pipeline's ConfigMap carries
them). The Deployment mounts them read-only under ``TRIGGERS_MOUNT/<name>/`` and runs
``jmk scheduler --triggers-from TRIGGERS_MOUNT``. Before each tick the scheduler makes its state
directory's triggers match (:func:`sync_carried`): a carried trigger that is new or whose definition
changed is stored (a changed one starts with a fresh cursor, as ``jmk trigger add --replace`` does; an
unchanged one keeps its cursor and history), one carried before and not any more is removed. Triggers
added on the claim some other way are left alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...config import JMKSettings, load_settings
from ...exceptions import JMKUsageError
from ...k8s.names import MANAGED_BY, payload_key
from ...k8s.scheduler import COMPONENT, COMPONENT_LABEL, TRIGGERS_MOUNT, MountedFiles
from ..schedule.cronjob import PIPELINE_FILE, files_configmap, pipeline_files
from .store import (
    DEFAULT_PARAM,
    Trigger,
    add_trigger,
    list_triggers,
    remove_trigger,
    trigger_dir,
    triggers_dir,
    write_json,
)

log = logging.getLogger(__name__)

DEFINITION = "trigger.json"
#: In the triggers' folder: the names the last sync carried (those it may remove when they go).
CARRIED_FILE = "carried.json"
TRIGGER_LABEL = "jmk.io/trigger"


def configmap_name(scheduler: str, trigger: str) -> str:
    """The ConfigMap carrying ``trigger`` to the scheduler ``scheduler``."""
    return f"{scheduler}-trigger-{trigger}"


def chosen(names: Sequence[str], settings: JMKSettings | None = None) -> list[Trigger]:
    """The triggers named (every trigger of this state directory when none is named), each once.

    Raises:
        JMKUsageError: A name that is no trigger here (all such names at once).
    """
    triggers = {trigger.name: trigger for trigger in list_triggers(settings)}
    unknown = [name for name in dict.fromkeys(names) if name not in triggers]
    if unknown:
        known = ", ".join(sorted(triggers)) or "none (add one with `jmk trigger add`)"
        raise JMKUsageError(f"--trigger {', '.join(unknown)}: no such trigger here. Triggers: {known}.")
    return [triggers[name] for name in dict.fromkeys(names)] if names else list(triggers.values())


def _pipeline(trigger: Trigger) -> Any:
    from ..spec import InvalidPipeline, load_pipeline

    given = dict(trigger.overrides)
    if trigger.kind == "new-objects":
        given[trigger.param or DEFAULT_PARAM] = "[]"
    try:
        return load_pipeline(trigger.pipeline, given)
    except InvalidPipeline as exc:
        raise JMKUsageError(f"trigger {trigger.name}: its pipeline {trigger.pipeline} is not valid now:\n  "
                            + "\n  ".join(exc.problems)) from None
    except (JMKUsageError, OSError) as exc:
        raise JMKUsageError(f"trigger {trigger.name}: cannot read its pipeline {trigger.pipeline}: {exc}") from None


def carry(triggers: Sequence[Trigger], *, scheduler: str, namespace: str, labels: Mapping[str, str] | None = None,
          mount: str = TRIGGERS_MOUNT) -> list[MountedFiles]:
    """Each trigger as a ConfigMap for the scheduler ``scheduler`` in ``namespace``, with where to mount it.

    The definition carried names the pipeline at ``mount/<name>/pipeline.yaml``: where the pod sees it.

    Raises:
        JMKUsageError: A trigger's pipeline cannot be read or is not valid now, a notebook is outside its
            folder, or the files are too large for a ConfigMap (every trigger is checked; the first
            problem is said).
    """
    carried = []
    for trigger in triggers:
        files = pipeline_files(Path(trigger.pipeline), _pipeline(trigger))
        definition = dataclasses.replace(trigger, pipeline=f"{mount}/{trigger.name}/{PIPELINE_FILE}")
        files[DEFINITION] = json.dumps(definition.to_dict(), indent=1, sort_keys=True).encode()
        metadata = {
            "name": configmap_name(scheduler, trigger.name),
            "namespace": namespace,
            "labels": {**(labels or {}), "app.kubernetes.io/name": scheduler,
                       "app.kubernetes.io/managed-by": MANAGED_BY, COMPONENT_LABEL: COMPONENT,
                       TRIGGER_LABEL: trigger.name},
        }
        configmap = files_configmap(files, metadata, instead=(
            f"Trigger {trigger.name} cannot be carried: put its pipeline on the state claim and add the trigger "
            "there (`jmk trigger add` with --pipeline under the claim's mount)"))
        items = [{"key": payload_key(path), "path": path} for path in sorted(files)]
        carried.append(MountedFiles(trigger.name, configmap, items))
    return carried


def _stored(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def sync_carried(folder: Path, settings: JMKSettings | None = None) -> list[str]:
    """Make the state directory's carried triggers those under ``folder``; returns what changed.

    A ``folder`` that does not exist carries none. A definition that cannot be read, or whose name is
    not its folder's, is logged and left out (a trigger it carried before stays as it was).
    """
    settings = settings or load_settings()
    record = triggers_dir(settings) / CARRIED_FILE
    before = set((_stored(record) or {}).get("names") or [])
    now: dict[str, Trigger] = {}
    unreadable: set[str] = set()
    for path in sorted(Path(folder).glob(f"*/{DEFINITION}")):
        data = _stored(path)
        try:
            trigger = Trigger.from_dict(data or {})
            if data is None or trigger.name != path.parent.name:
                raise ValueError(f"no definition of a trigger named {path.parent.name!r}")
        except (TypeError, ValueError) as exc:
            log.warning("carried trigger %s is left out: %s", path, exc)
            unreadable.add(path.parent.name)
            continue
        now[trigger.name] = trigger
    changes = []
    for name, trigger in now.items():
        current = _stored(trigger_dir(name, settings) / "trigger.json")
        if current == trigger.to_dict():
            continue
        add_trigger(trigger, replace=True, settings=settings)
        changes.append(f"{'replaced' if current is not None else 'added'} {name}")
    for name in sorted(before - now.keys() - unreadable):
        if (trigger_dir(name, settings) / "trigger.json").exists():
            remove_trigger(name, settings)
            changes.append(f"removed {name}")
    kept = sorted(now.keys() | (before & unreadable))
    if kept != sorted(before):
        write_json(record, {"names": kept})
    for change in changes:
        log.info("carried triggers: %s", change)
    return changes
