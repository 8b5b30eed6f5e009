"""``jmk pipeline schedule|unschedule|schedules`` and ``jmk scheduler``: pipelines on a cron schedule, in UTC.

``args.config`` is the user's traitlets configuration that ``jmk`` read
(:func:`~jupyter_mlflow_k8s.config.jupyter_config`): a CronJob's pod and namespace come from its
``c.KubernetesBackend`` settings, as a job's do.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import JMKUsageError
from ..k8s.scheduler import DEFAULT_NAME as DEFAULT_SCHEDULER
from ..util.pairs import parse_pairs

CRON_HELP = (
    'when, in UTC: five fields (minute hour day-of-month month day-of-week) such as "0 3 * * *", '
    'or @hourly, @daily, @weekly, @monthly, @yearly, "@every 2h"'
)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}Z"


def _pod_env(config: Any = None) -> dict[str, str]:
    """Where the cluster's runs track and store, when this machine uses servers a pod can reach too.

    A local SQLite store or file:// storage is not passed on (the pod has its own disk), and neither
    is a URI with a password in it: give pods credentials through Secrets (``c.KubernetesBackend.secrets``).
    """
    from ..config import load_settings

    settings = load_settings(config)
    env = {}
    for variable, uri in (("MLFLOW_TRACKING_URI", settings.tracking_uri), ("JMK_STORAGE_URL", settings.storage_url)):
        parts = urlsplit(uri)
        if parts.scheme not in ("", "file", "sqlite") and parts.password is None:
            env[variable] = uri
    return env


def _cmd_schedule(args: argparse.Namespace) -> int:
    from .schedule import add_schedule, scheduler_pid

    overrides = parse_pairs(args.param, "-p")
    if not args.kubernetes:
        given = [flag for flag, value in (("--namespace", args.namespace), ("--image", args.image),
                                          ("--print", args.print)) if value]
        if given:
            raise JMKUsageError(f"{', '.join(given)} only go with --kubernetes (a CronJob on the cluster).")
        schedule = add_schedule(args.pipeline, args.cron, overrides, name=args.name, missed=args.missed,
                                overlap=args.allow_overlap, replace=args.replace)
        print(f"scheduled {schedule.name}: {schedule.pipeline} at {schedule.cron!r} (UTC), "
              f"next run {_when(schedule.next_fire)}")
        if scheduler_pid() is None:
            print("no scheduler is running for this state directory: start one with `jmk scheduler`")
        return 0
    return _schedule_on_kubernetes(args, overrides, getattr(args, "config", None))


def _schedule_on_kubernetes(args: argparse.Namespace, overrides: dict[str, str], config: Any = None) -> int:
    """A CronJob whose pod has the Kubernetes backend's settings (``config``'s ``c.KubernetesBackend``), as jobs do."""
    import yaml

    from .schedule import (
        apply_schedule_manifests,
        build_schedule_manifests,
        cronjob_settings,
        load_scheduled_pipeline,
        next_fire,
    )

    pipeline = load_scheduled_pipeline(args.pipeline, args.cron, overrides)
    settings = cronjob_settings(pipeline, namespace=args.namespace, image=args.image, env=_pod_env(config),
                               config=config)
    manifests = build_schedule_manifests(
        pipeline.source or Path(args.pipeline), pipeline, args.cron, overrides, name=args.name, settings=settings,
        missed=args.missed, overlap=args.allow_overlap,
    )
    if args.print:
        sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))
        return 0
    for line in apply_schedule_manifests(manifests):
        print(line)
    print(f"next run {_when(next_fire(args.cron, datetime.now().astimezone()))} (UTC, the CronJob's timeZone)")
    return 0


def _cmd_unschedule(args: argparse.Namespace) -> int:
    from .schedule import delete_schedule_manifests, remove_schedule

    if args.kubernetes:
        for line in delete_schedule_manifests(args.name, _namespace(args.namespace, getattr(args, "config", None))):
            print(line)
        return 0
    if args.namespace:
        raise JMKUsageError("--namespace only goes with --kubernetes.")
    schedule = remove_schedule(args.name)
    print(f"removed schedule {schedule.name} ({schedule.pipeline} at {schedule.cron!r})")
    return 0


def _namespace(namespace: str | None, config: Any) -> str:
    """``namespace``, else the one ``schedule --kubernetes`` put the CronJob in: the backend's (its setting first)."""
    from .schedule import kube_namespace

    if namespace or config is None:
        return kube_namespace(namespace)
    from ..backends.kubernetes import KubernetesBackend

    return str(KubernetesBackend(None, config=config).namespace)


def _cmd_schedules(args: argparse.Namespace) -> int:
    from .schedule import Scheduler, list_schedules, scheduler_pid

    schedules = list_schedules()
    if not schedules:
        print("no schedules: add one with `jmk pipeline schedule PIPELINE.yaml --cron '0 3 * * *'`")
        return 0
    probe = Scheduler()
    rows = [("name", "cron (UTC)", "next run", "last run", "last", "missed", "pipeline")]
    for schedule in schedules:
        if probe.running(schedule):
            last = f"running (pid {schedule.pid})"
        elif schedule.last_exit is not None:
            last = "succeeded" if schedule.last_exit == 0 else f"failed (exit {schedule.last_exit})"
        else:
            last = _run_state(schedule.last_run_id)
        run = schedule.last_run_id or ("-" if schedule.last_fire is None else "?")
        rows.append((schedule.name, schedule.cron, _when(schedule.next_fire), f"{_when(schedule.last_fire)} {run}",
                     last, schedule.missed + (", overlap" if schedule.overlap else ""), schedule.pipeline))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    pid = scheduler_pid()
    if pid is None:
        print("no scheduler is running for this state directory: start one with `jmk scheduler`")
    else:
        print(f"scheduler running (pid {pid or '?'})")
    return 0


def _run_state(run_id: str | None) -> str:
    """The state of a pipeline run, when its exit status is not known (it ended while no scheduler watched)."""
    from .engine import PipelineEngine

    if not run_id:
        return "-"
    try:
        return PipelineEngine().load(run_id).state
    except (JMKUsageError, OSError, ValueError, TypeError):
        return "?"


def scheduler_manifests(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The scheduler on a cluster (``--state-claim``): RBAC, the carried triggers' ConfigMaps, the Deployment."""
    from ..backends.kubernetes import KubernetesBackend
    from ..k8s.presets import layered_settings
    from ..k8s.scheduler import build_scheduler_manifests
    from .schedule import default_image
    from .triggers.carry import carry, chosen

    if not args.state_claim:
        raise JMKUsageError(f"{'--apply' if args.apply else '--print-manifests'} needs --state-claim NAME: the "
                            "PersistentVolumeClaim of the state directory (schedules and triggers), e.g. "
                            "--state-claim jmk-state")
    config = getattr(args, "config", None)
    backend = KubernetesBackend(None, **({"config": config} if config is not None else {}))
    settings = layered_settings(backend.configured_settings(), backend.presets, namespace=args.namespace,
                                image=args.image or default_image(), cpu="500m", memory="1Gi",
                                env=_pod_env(config))
    triggers = [] if args.no_triggers else chosen(args.trigger or [])
    carried = carry(triggers, scheduler=args.name, namespace=settings.namespace, labels=settings.labels)
    return build_scheduler_manifests(settings, state_claim=args.state_claim, name=args.name, replicas=args.replicas,
                                     poll_seconds=args.poll, lease_seconds=args.lease_seconds, carried=carried)


def _deploy_scheduler(args: argparse.Namespace) -> int:
    """``jmk scheduler --print-manifests|--apply --state-claim NAME``: the YAML, or the objects created."""
    if args.trigger and args.no_triggers:
        raise JMKUsageError("--trigger and --no-triggers: give one (--trigger NAME carries only NAME; "
                            "--no-triggers carries none).")
    manifests = scheduler_manifests(args)
    if args.print_manifests:
        import yaml

        sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False))
        return 0
    from .schedule import apply_schedule_manifests

    for line in apply_schedule_manifests(manifests):
        print(line)
    carried = [m["metadata"]["name"] for m in manifests if m["kind"] == "ConfigMap"]
    print(f"the scheduler carries {len(carried)} trigger(s); it syncs them into its state before its next tick. "
          f"Remove one there by applying again without it.")
    return 0


def _cmd_scheduler(args: argparse.Namespace) -> int:
    from .schedule import Scheduler, SchedulerRunning

    if args.print_manifests and args.apply:
        raise JMKUsageError("--print-manifests and --apply: give one (--print-manifests writes the YAML for "
                            "kubectl apply; --apply creates the objects).")
    if args.print_manifests or args.apply:
        return _deploy_scheduler(args)
    given = [flag for flag, value in (("--state-claim", args.state_claim), ("--namespace", args.namespace),
                                      ("--image", args.image), ("--replicas", args.replicas != 1),
                                      ("--trigger", args.trigger), ("--no-triggers", args.no_triggers),
                                      ("--name", args.name != DEFAULT_SCHEDULER)) if value]
    if given:
        verb = "goes" if len(given) == 1 else "go"
        raise JMKUsageError(f"{', '.join(given)} only {verb} with --print-manifests or --apply (the scheduler on "
                            "a cluster).")
    from .triggers import TriggerEvaluator

    for name in ("jupyter_mlflow_k8s.pipelines.schedule", "jupyter_mlflow_k8s.pipelines.triggers"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stdout)
            formatter = logging.Formatter("%(asctime)sZ %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
            formatter.converter = time.gmtime
            handler.setFormatter(formatter)
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
    factory = getattr(args, "drift_reader", None)
    reader = factory(getattr(args, "config", None)) if factory is not None else None
    gate = None
    if args.lease:
        import os
        import socket

        from ..k8s.lease import LeaseHolder
        from .schedule import kube_namespace

        namespace = args.lease_namespace or os.environ.get("POD_NAMESPACE") or kube_namespace(None)
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        gate = LeaseHolder(args.lease, namespace, identity, duration=args.lease_seconds).held
    elif args.lease_namespace:
        raise JMKUsageError("--lease-namespace only goes with --lease NAME.")
    carried_from = Path(args.triggers_from) if args.triggers_from else None
    try:
        Scheduler(tickers=[TriggerEvaluator(drift_reader=reader, carried_from=carried_from)]).serve(
            poll_seconds=args.poll, gate=gate)
    except SchedulerRunning as exc:
        print(f"jmk: {exc}", file=sys.stderr)
        return 1
    return 0


def add_schedule_commands(commands: Any) -> None:
    """Add ``schedule``, ``unschedule`` and ``schedules`` to ``jmk pipeline``'s subcommands."""
    schedule = commands.add_parser(
        "schedule", help="run a pipeline on a cron schedule (UTC): `jmk scheduler` fires it, or a Kubernetes CronJob"
    )
    schedule.add_argument("pipeline", help="path of pipeline.yaml")
    schedule.add_argument("--cron", required=True, help=CRON_HELP)
    schedule.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="a parameter of each run")
    schedule.add_argument("--name", help="the schedule's name (default: the pipeline's name)")
    schedule.add_argument("--missed", choices=("run-once", "skip"), default="run-once",
                          help="after missed slots (downtime, a long previous run): one run (default), or none "
                          "until the next slot")
    schedule.add_argument("--allow-overlap", action="store_true",
                          help="start a run even while the previous one still runs (default: wait for it)")
    schedule.add_argument("--replace", action="store_true", help="replace an embedded schedule of the same name")
    schedule.add_argument("--kubernetes", action="store_true", help="a CronJob (and a ConfigMap of the files)")
    schedule.add_argument("--namespace", help="with --kubernetes (default: the jobs' namespace: "
                          "$JMK_K8S_NAMESPACE, the pod's own, else the kubeconfig context's)")
    schedule.add_argument("--image", help="with --kubernetes: the runner image (default: the backend's)")
    schedule.add_argument("--print", action="store_true", help="with --kubernetes: write the YAML, apply nothing")
    schedule.set_defaults(func=_cmd_schedule)
    unschedule = commands.add_parser("unschedule", help="remove a schedule (its running run carries on)")
    unschedule.add_argument("name")
    unschedule.add_argument("--kubernetes", action="store_true", help="delete the CronJob and its ConfigMap")
    unschedule.add_argument("--namespace", help="with --kubernetes (default: the jobs' namespace, as for schedule)")
    unschedule.set_defaults(func=_cmd_unschedule)
    listing = commands.add_parser("schedules", help="the embedded schedules, with their next and last runs")
    listing.set_defaults(func=_cmd_schedules)


def add_scheduler_command(sub: Any, drift_reader: Callable[[Any], Any] | None = None) -> None:
    """Add ``jmk scheduler`` (the embedded scheduler, in the foreground) to the ``jmk`` parser's subcommands.

    ``drift_reader(config)`` makes the reader of served models' drift that drift triggers need
    (:data:`~jupyter_mlflow_k8s.pipelines.triggers.DriftReader`); the ``jmk`` composition gives the serving side's.
    """
    scheduler = sub.add_parser("scheduler", help="fire the pipeline schedules and triggers of this state directory "
                               "until stopped")
    scheduler.add_argument("--poll", type=float, default=15.0, metavar="SECONDS", help="how often to look (default 15)")
    scheduler.add_argument("--lease", metavar="NAME", help="on a cluster: evaluate only while this replica holds "
                           "the coordination.k8s.io Lease NAME (one replica of several evaluates)")
    scheduler.add_argument("--lease-namespace", metavar="NAMESPACE",
                           help="with --lease (default: $POD_NAMESPACE, else the jobs' namespace)")
    scheduler.add_argument("--lease-seconds", type=int, default=30, metavar="SECONDS",
                           help="with --lease: how long the Lease lasts unrenewed (default 30)")
    scheduler.add_argument("--triggers-from", metavar="FOLDER",
                           help="sync the triggers carried in FOLDER (one folder each) into the state before each "
                           "tick: what the Deployment of --print-manifests runs")
    scheduler.add_argument("--print-manifests", action="store_true",
                           help="write the YAML of the scheduler on a cluster (a Deployment holding the Lease, "
                           "its ServiceAccount, Role and RoleBinding, a ConfigMap per trigger carried) and start "
                           "nothing")
    scheduler.add_argument("--apply", action="store_true",
                           help="create (or replace) those objects on the cluster instead of writing them")
    scheduler.add_argument("--state-claim", metavar="PVC", help="with --print-manifests or --apply: the "
                           "PersistentVolumeClaim of the state directory")
    scheduler.add_argument("--trigger", action="append", metavar="NAME",
                           help="with --print-manifests or --apply: carry this trigger and its pipeline (repeat it; "
                           "default: every trigger of `jmk trigger list`)")
    scheduler.add_argument("--no-triggers", action="store_true",
                           help="with --print-manifests or --apply: carry no trigger (those carried before go)")
    scheduler.add_argument("--name", default=DEFAULT_SCHEDULER,
                           help=f"with --print-manifests or --apply: the Deployment's and Lease's name "
                           f"(default {DEFAULT_SCHEDULER})")
    scheduler.add_argument("--replicas", type=int, default=1, help="with --print-manifests or --apply (default 1)")
    scheduler.add_argument("--namespace", help="with --print-manifests or --apply (default: the jobs' namespace)")
    scheduler.add_argument("--image", help="with --print-manifests or --apply: the runner image (default: the "
                           "backend's)")
    scheduler.set_defaults(func=_cmd_scheduler, drift_reader=drift_reader)
