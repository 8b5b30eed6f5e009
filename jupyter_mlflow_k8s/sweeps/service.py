"""Sweeps seen from a front door: start one, follow it, cancel it, collect its best trial and its table.

Starting a sweep checks everything before anything runs (the space, the objective, the search, the
counts), stages the cell's inputs once for every trial, opens the parent MLflow run, writes the sweep's
folder and starts its controller process (:mod:`.controller`). Nothing here imports IPython.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import tracking
from ..backends.base import Backend
from ..exceptions import JMKUsageError, JobCancelled, JobFailed
from ..jobs import JobResult, JobService
from ..models import JobRecord, JobSpec, spec_to_dict
from ..payload import stage_inputs
from .controller import SweepController, best_trial
from .record import ACTIVE, LOG, TERMINAL, SweepStore
from .space import Objective, SearchSpace, parse_objective, parse_search, parse_space, plan_trials

FOLLOW_SECONDS = 0.1
SPAWN_SECONDS = 60.0


def _positive(text: str | int | None, flag: str, example: str, minimum: int = 1) -> int | None:
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        least = "a whole number" if minimum == 0 else f"a whole number of at least {minimum}"
        raise JMKUsageError(f"{flag} {text!r}: give {least}, e.g. {flag} {example}.")
    return value


@dataclass(frozen=True)
class SweepRequest:
    """What ``--sweep`` and its companion flags ask for, checked."""

    space_text: str
    space: SearchSpace
    objective: Objective
    search: str
    trials: int
    parallel: int
    repeats: int
    prune: str | None
    max_failures: int
    seed: int | None
    plan: list[dict[str, Any]] | None

    @classmethod
    def parse(
        cls,
        space: str,
        objective: str | None,
        search: str | None = None,
        trials: str | int | None = None,
        parallel: str | int | None = None,
        repeats: str | int | None = None,
        prune: str | None = None,
        max_failures: str | int | None = None,
        seed: str | int | None = None,
    ) -> SweepRequest:
        """Check every flag of a sweep; raises :class:`JMKUsageError` saying what to change."""
        parsed = parse_space(space)
        goal = parse_objective(objective)
        if prune not in (None, "median", "halving"):
            raise JMKUsageError(f"--prune {prune!r}: use --prune (the median pruner), --prune median or halving.")
        how = parse_search(search, parsed, prune is not None)
        count = _positive(trials, "--trials", "20")
        width = _positive(parallel, "--parallel", "4") or 1
        again = _positive(repeats, "--repeats", "3") or 1
        seeded = _positive(seed, "--seed", "42", minimum=0)
        if how == "tpe" and count is None:
            raise JMKUsageError("--search tpe needs --trials N: how many trials to ask Optuna for, e.g. --trials 20.")
        plan = plan_trials(parsed, how, count, again, seeded)
        total = len(plan) if plan is not None else (count or 0) * again
        failures = _positive(max_failures, "--max-failures", "5", minimum=0)
        return cls(
            space_text=space, space=parsed, objective=goal, search=how, trials=total, parallel=width, repeats=again,
            prune=prune, max_failures=total // 4 if failures is None else failures, seed=seeded, plan=plan,
        )  # fmt: skip

    def describe(self) -> dict[str, str]:
        """The sweep's definition, as params of its parent run."""
        return {
            "sweep.space": self.space_text.strip()[:500], "sweep.objective": str(self.objective),
            "sweep.search": self.search, "sweep.trials": str(self.trials), "sweep.parallel": str(self.parallel),
            "sweep.repeats": str(self.repeats), "sweep.prune": self.prune or "none",
        }  # fmt: skip


class SweepService:
    """Sweeps under the job service's state directory."""

    def __init__(self, jobs: JobService, traitlets_config: Mapping[str, Any] | None = None) -> None:
        self.jobs = jobs
        self.store = SweepStore(jobs.settings.state_path)
        self._traitlets = traitlets_config or {}

    def start(self, spec: JobSpec, values: Mapping[str, Any], request: SweepRequest) -> dict[str, Any]:
        """Check, stage the inputs once, open the parent run, start the controller; returns the first record."""
        clash = sorted(set(request.space.names) & set(spec.params))
        if clash:
            raise JMKUsageError(f"{', '.join(clash)} is both swept and a --param: keep it in one of them.")
        backend = self.jobs.backend(spec.backend)
        first = request.plan[0] if request.plan else request.space.sample(random.Random(request.seed))  # noqa: S311
        trial_spec = dataclasses.replace(spec, params={**spec.params, **first})
        backend.check(trial_spec)
        backend.check_environment(self.jobs.storage.url, self.jobs.settings.tracking_uri)
        self.jobs.storage.check()
        tracking.check_reachable(self.jobs.settings.tracking_uri)
        entries = stage_inputs(self.jobs.storage, values)
        settings = self.jobs.settings
        parent_spec = dataclasses.replace(
            spec, params={**spec.params, **request.describe()}, tags={**spec.tags, "jmk.kind": "sweep"},
            run_name=spec.run_name or "sweep",
        )  # fmt: skip
        goal = {"metric": request.objective.metric, "direction": request.objective.direction}
        record = {
            "state": "queued", "objective": goal,
            "search": request.search, "total": request.trials, "parallel": request.parallel,
            "max_failures": request.max_failures, "prune": request.prune, "names": list(request.space.names),
            "best": None, "message": "", "trials": [], "backend": spec.backend, "experiment_id": None,
            "parent_run_id": None, "tracking_uri": settings.tracking_uri,
        }  # fmt: skip
        config = {
            "spec": spec_to_dict(spec), "entries": [dataclasses.asdict(e) for e in entries],
            "scalars": tracking.scalar_params(values), "space": request.space_text, "objective": str(request.objective),
            "search": request.search, "plan": request.plan, "prune": request.prune, "seed": request.seed,
            "tracking_uri": settings.tracking_uri, "traitlets": controller_config(self._traitlets, backend),
            "settings": {"state_dir": settings.state_dir, "storage_url": settings.storage_url,
                         "tracking_uri": settings.tracking_uri, "default_backend": settings.default_backend,
                         "storage_options": dict(settings.storage_options)},
        }  # fmt: skip
        sweep_id = self.store.create(config, record)
        try:
            artifact_root = settings.artifact_root if settings.tracking_uri.startswith("sqlite:") else None
            experiment_id, run_id = tracking.start_run(
                settings.tracking_uri, artifact_root, sweep_id, dataclasses.replace(parent_spec, tags={
                    **parent_spec.tags, "jmk.sweep": sweep_id}), values,
            )  # fmt: skip
        except Exception:
            self._discard(sweep_id)
            raise
        record = self.store.load(sweep_id)
        record.update(experiment_id=experiment_id, parent_run_id=run_id)
        self.store.save(record)
        SweepController(self.store, sweep_id, self.jobs).first_wave()
        self._spawn(sweep_id)
        return self.store.load(sweep_id)

    def parallel_note(self, spec: JobSpec, request: SweepRequest) -> str:
        """Why fewer than ``--parallel`` trials will run at once, if they will (the local backend's slots)."""
        slots = getattr(self.jobs.backend(spec.backend), "max_concurrent_jobs", None)
        if isinstance(slots, int) and 0 < slots < request.parallel:
            return (
                f"the {spec.backend} backend runs at most {slots} jobs at once, so --parallel {request.parallel} "
                f"runs {slots} trials at a time (c.LocalBackend.max_concurrent_jobs = {request.parallel} allows more)"
            )
        return ""

    def _discard(self, sweep_id: str) -> None:
        import shutil

        shutil.rmtree(self.store.folder(sweep_id), ignore_errors=True)

    def _spawn(self, sweep_id: str) -> None:
        folder = self.store.folder(sweep_id)
        with open(folder / LOG, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "jupyter_mlflow_k8s.sweeps", str(folder)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        threading.Thread(target=process.wait, daemon=True).start()  # reaped: no zombie left behind
        # Alive once it holds the sweep's lock: wait for that, so that a follower does not start another.
        deadline = time.monotonic() + SPAWN_SECONDS
        while not self.store.controller_alive(self.store.load(sweep_id)) and time.monotonic() < deadline:
            if process.poll() is not None:
                break  # it ended (another controller drives the sweep, or it failed: its log says why)
            time.sleep(0.02)

    # -- look ----------------------------------------------------------------------------------------

    def get(self, sweep_id: str) -> dict[str, Any]:
        """The current record of a sweep (a unique id prefix is enough)."""
        return self.store.load(sweep_id)

    def list(self) -> list[dict[str, Any]]:
        """Every sweep, newest first."""
        return self.store.list()

    def controller_log(self, sweep_id: str) -> str:
        """What the sweep's controller process printed."""
        try:
            return (self.store.folder(self.store.resolve(sweep_id)) / LOG).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ensure_running(self, sweep_id: str) -> dict[str, Any]:
        """Start the controller again if its process died before the sweep ended (a restarted machine)."""
        record = self.get(sweep_id)
        if record["state"] not in TERMINAL and not self.store.controller_alive(record):
            self._spawn(record["sweep_id"])
            record = self.get(sweep_id)
        return record

    def follow(
        self, sweep_id: str, on_update: Callable[[dict[str, Any]], object] = lambda record: None
    ) -> dict[str, Any]:
        """Call ``on_update`` with the record as it changes until the sweep ends; an interrupt cancels it."""
        record = self.ensure_running(sweep_id)
        seen = ""
        try:
            while True:
                text = json.dumps(record, sort_keys=True, default=str)
                if text != seen:
                    seen = text
                    on_update(record)
                if record["state"] in TERMINAL:
                    return record
                time.sleep(FOLLOW_SECONDS)
                record = self.get(sweep_id)
                if record["state"] not in TERMINAL and not self.store.controller_alive(record):
                    record = self.ensure_running(sweep_id)
        except KeyboardInterrupt:
            self.cancel(sweep_id)
            raise

    def cancel(self, sweep_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Stop every trial; returns the record once the controller has closed the sweep (or after ``timeout``)."""
        record = self.get(sweep_id)
        if record["state"] in TERMINAL:
            return record
        self.store.request_cancel(record["sweep_id"])
        self.ensure_running(record["sweep_id"])
        deadline = time.monotonic() + timeout
        while record["state"] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(FOLLOW_SECONDS)
            record = self.get(sweep_id)
        return record

    # -- collect -------------------------------------------------------------------------------------

    def best_result(self, record: dict[str, Any]) -> tuple[dict[str, Any], JobResult]:
        """The best trial and what its cell returned; :class:`JobFailed` when no trial succeeded."""
        best = record.get("best")
        if best is None:
            best = best_trial(record["trials"], parse_objective(f"{record['objective']['metric']}:"
                                                                 f"{record['objective']['direction']}"))
        if best is None:
            errors = [f"trial {t['index']}: {t['error']}" for t in record["trials"] if t.get("error")][:5]
            detail = "; ".join(errors) or "no trial ran"
            if record["state"] == "cancelled":
                raise JobCancelled(record["sweep_id"], f"cancelled before any trial succeeded ({detail})")
            raise JobFailed(record["sweep_id"], f"{record.get('message') or 'no trial succeeded'}: {detail}")
        trial = record["trials"][best]
        return trial, self.jobs.result(self.jobs.get(trial["job_id"]))

    def frame(self, record: dict[str, Any]) -> Any:
        """A pandas DataFrame of every trial: params, objective, state, run id (one row per trial)."""
        import pandas as pd

        rows = []
        metric = record["objective"]["metric"]
        for trial in record["trials"]:
            started, finished = trial.get("started"), trial.get("finished")
            rows.append({
                "trial": trial["index"], **trial["params"], "repeat": trial.get("repeat", 0), "state": trial["state"],
                metric: trial.get("objective"), "run_id": trial.get("run_id"), "job_id": trial.get("job_id"),
                "seconds": (finished - started) if started and finished else None, "error": trial.get("error"),
                "group": trial.get("group"), "best": trial["index"] == record.get("best"),
            })  # fmt: skip
        columns = ["trial", *record["names"], "repeat", "state", metric, "run_id", "job_id", "seconds", "error",
                   "group", "best"]  # fmt: skip
        return pd.DataFrame(rows, columns=columns).set_index("trial")


def listed(jobs: JobService, limit: int = 50) -> tuple[list[JobRecord], list[dict[str, Any]]]:
    """What ``%jobs`` and ``jmk jobs`` list: the jobs that are no sweep's trials, and the sweeps."""
    records = [r for r in jobs.list() if "jmk.sweep" not in r.spec.tags]  # a trial shows in its sweep's row
    return records[:limit], SweepStore(jobs.settings.state_path).list()[:limit]


def job_ids(jobs: JobService) -> list[str]:
    """The ids ``%job`` and ``jmk logs|cancel`` complete: jobs (no trials) and sweeps, running ones first.

    Read from the records alone (no backend is asked), newest first within each group: fast enough
    for a Tab key even when the cluster does not answer.
    """
    found = [(r.state.terminal, -r.created, r.job_id) for r in jobs.store.list() if "jmk.sweep" not in r.spec.tags]
    found += [(s.get("state") in TERMINAL, -float(s.get("created", 0)), str(s["sweep_id"]))
              for s in SweepStore(jobs.settings.state_path).list() if "sweep_id" in s]  # fmt: skip
    return [job_id for _, _, job_id in sorted(found)]


def controller_config(config: Mapping[str, Any], backend: Backend) -> dict[str, Any]:
    """The kernel's traitlets config as JSON, for the controller to build the same job service from.

    The sweep's backend section holds the values of the kernel's own backend: a value written
    ``c.KubernetesBackend.labels.update({...})`` is a ``LazyConfigValue``, which JSON would turn into its
    repr (a TraitError or a wrong value in the controller). Elsewhere such a value is applied to an empty
    container.
    """
    from traitlets.config.loader import LazyConfigValue

    mro = {cls.__name__ for cls in type(backend).__mro__}

    def plain(section: str, key: str, value: Any) -> Any:
        if section in mro and backend.has_trait(key):
            return getattr(backend, key)
        if isinstance(value, LazyConfigValue):
            update = value.to_dict().get("update")
            return value.get_value(set() if isinstance(update, set) else {} if update is not None else [])
        return value

    resolved = {
        section: {key: plain(section, key, value) for key, value in values.items()} if isinstance(values, Mapping)
        else values
        for section, values in config.items()
    }  # fmt: skip
    return dict(json.loads(json.dumps(resolved, default=str)))


def active(record: dict[str, Any]) -> int:
    """How many of a sweep's trials are queued or running."""
    return sum(1 for t in record["trials"] if t["state"] in ACTIVE)


__all__ = ["SweepRequest", "SweepService", "active", "controller_config", "job_ids", "listed"]
