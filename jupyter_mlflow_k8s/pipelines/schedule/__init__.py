"""Pipelines on a schedule: cron times, the embedded scheduler, and Kubernetes CronJobs.

Times are UTC everywhere: :func:`next_fire` reads a schedule in UTC, the embedded scheduler fires
by the UTC clock, and a CronJob built here sets ``spec.timeZone: Etc/UTC``, so ``0 3 * * *`` means
03:00 UTC on this machine and on any cluster, whatever their local zones.

Schedules are the syntax Kubernetes accepts (robfig/cron's standard parser, checked by
:func:`jupyter_mlflow_k8s.k8s.validation.check_cron`): five fields (minute, hour, day of month, month,
day of week) of ``*``/``?``, numbers, ranges, steps and lists, month and weekday names, or a
descriptor (``@hourly``, ``@daily``/``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``/``@annually``,
``@every 1h30m``). As in cron, when both the day of month and the day of week are restricted a day
matching either one fires (``0 0 13 * FRI``: every 13th and every Friday); a field counts as
unrestricted when it is ``*`` or ``?``, unstepped (robfig's rule: ``*/2`` restricts).

The embedded scheduler keeps one JSON file per schedule under ``<state dir>/pipelines/schedules/``
and fires each due schedule as a ``jmk pipeline run`` subprocess (its output in
``schedules/logs/<name>/``). Two policies, the same for the embedded scheduler and for a CronJob:

- ``missed``: ``run-once`` (default) starts one run for any number of slots missed while nothing
  fired them (the scheduler was down, or the previous run was still running); ``skip`` starts a run
  only when its slot passed at most :data:`SKIP_GRACE_SECONDS` ago (the CronJob's
  ``startingDeadlineSeconds``), so after downtime it waits for the next slot.
- ``overlap``: off by default: while a run of a schedule is running, its next slot waits (and is
  then handled as missed, like ``concurrencyPolicy: Forbid``); on, slots fire regardless.

Modules: :mod:`.cron` (cron times), :mod:`.store` (schedules on disk), :mod:`.scheduler` (the
embedded scheduler), :mod:`.cronjob` (the CronJob and ConfigMap builders, pure) and :mod:`.cluster`
(applying and removing them through :mod:`jupyter_mlflow_k8s.k8s`).
"""

from __future__ import annotations

from .cluster import apply_schedule_manifests, delete_schedule_manifests, kube_namespace
from .cron import SEARCH_YEARS, TIME_ZONE, UTC, CronError, next_fire
from .cronjob import (
    CONFIGMAP_LIMIT,
    CONTAINER,
    DEFAULT_IMAGE,
    PIPELINE_FILE,
    PIPELINE_LABEL,
    PIPELINE_MOUNT,
    SCHEDULE_LABEL,
    STATE_MOUNT,
    build_cronjob,
    build_pipeline_configmap,
    build_schedule_manifests,
    configmap_name,
    cronjob_settings,
    default_image,
    pipeline_files,
    step_resources,
)
from .scheduler import Scheduler, SchedulerRunning, lock_path, scheduler_pid
from .store import (
    MISSED_POLICIES,
    NAME_MAX,
    SKIP_GRACE_SECONDS,
    Schedule,
    add_schedule,
    check_schedule_name,
    get_schedule,
    list_schedules,
    load_scheduled_pipeline,
    remove_schedule,
    schedule_name,
    schedules_dir,
)

__all__ = [
    "CONFIGMAP_LIMIT", "CONTAINER", "DEFAULT_IMAGE", "MISSED_POLICIES", "NAME_MAX", "PIPELINE_FILE", "PIPELINE_LABEL",
    "PIPELINE_MOUNT", "SCHEDULE_LABEL", "SEARCH_YEARS", "SKIP_GRACE_SECONDS", "STATE_MOUNT", "TIME_ZONE", "UTC",
    "CronError", "Schedule", "Scheduler", "SchedulerRunning", "add_schedule", "apply_schedule_manifests",
    "build_cronjob", "build_pipeline_configmap", "build_schedule_manifests", "check_schedule_name", "configmap_name",
    "cronjob_settings", "default_image", "delete_schedule_manifests", "get_schedule", "kube_namespace",
    "list_schedules", "load_scheduled_pipeline", "lock_path", "next_fire", "pipeline_files", "remove_schedule",
    "schedule_name", "scheduler_pid", "schedules_dir", "step_resources",
]
