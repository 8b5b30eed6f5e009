"""The sweep controller: one process per sweep that launches trials, watches them and keeps the record.

It runs apart from the kernel (``python -m jupyter_mlflow_k8s.sweeps FOLDER``), so that a sweep goes on
through a kernel restart and ``%job attach`` collects it later; a controller started again on the same
folder (its process died) carries on from the record. Each trial is an ordinary job of the job service,
on the sweep's backend, with its own MLflow run under the sweep's parent run. At most ``parallel``
trials are queued or running at once. Intermediate values of the objective reach the pruner through
the trials' own MLflow metrics, the flow every job already has; nothing runs beside a trial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

from .. import tracking
from ..exceptions import JMKError, JobFailed
from ..jobs import JobService
from ..models import JobRecord, JobSpec, JobState, spec_from_dict
from ..payload import ValueEntry
from .record import ACTIVE, TERMINAL, SweepStore
from .space import Objective, OptunaSearch, parse_objective, parse_space

_log = logging.getLogger(__name__)
POLL_SECONDS = 0.1
# Reading the trials' intermediate metrics from MLflow: at most this often per trial.
OBSERVE_SECONDS = 1.0
STUDY = "optuna.db"


def group_key(params: dict[str, Any]) -> str:
    """The same params, the same group (the repeats of one point)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def best_trial(trials: list[dict[str, Any]], objective: Objective) -> int | None:
    """The index of the best trial: of the group (same params) with the best mean objective, its best repeat."""
    done = [t for t in trials if t["state"] == "succeeded" and t.get("objective") is not None]
    if not done:
        return None
    groups: dict[str, list[dict[str, Any]]] = {}
    for trial in done:
        groups.setdefault(trial["group"], []).append(trial)
    sign = 1.0 if objective.direction == "min" else -1.0
    best_group = min(groups.values(), key=lambda g: sign * statistics.fmean(t["objective"] for t in g))
    return int(min(best_group, key=lambda t: sign * t["objective"])["index"])


class SweepController:
    """Drives one sweep to its end; see the module docstring."""

    def __init__(self, store: SweepStore, sweep_id: str, service: JobService) -> None:
        self.store = store
        self.service = service
        self.sweep_id = store.resolve(sweep_id)
        self.config = store.config(self.sweep_id)
        self.record = store.load(self.sweep_id)
        self.space = parse_space(self.config["space"])
        self.objective = parse_objective(self.config["objective"])
        self.base: JobSpec = spec_from_dict(self.config["spec"])
        self.entries = [ValueEntry(**entry) for entry in self.config["entries"]]
        self.plan: list[dict[str, Any]] | None = self.config.get("plan")
        self.search: OptunaSearch | None = None
        if self.config["search"] == "tpe" or self.config.get("prune"):
            self.search = OptunaSearch(
                self.space, self.objective, store.folder(self.sweep_id) / STUDY, self.sweep_id,
                self.config["search"], self.config.get("prune"), self.config.get("seed"),
            )  # fmt: skip
        self.stopping = ""  # why no trial is launched any more: cancelled or failed
        self._observed: dict[int, float] = {}  # trial index -> when its metrics were last read
        self._dirty = False

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Launch and watch trials until every one has ended; returns the final record."""
        started = self.record.get("started") or time.time()
        self.record.update(state="running", controller_pid=os.getpid(), started=started)
        self._save()
        for trial in self._trials(*ACTIVE):  # launched by the kernel (the first wave), or by a controller before
            if trial["job_id"]:
                self.service.watch(trial["job_id"])
        try:  # MLflow imported and its store open now, while the first wave runs, not when a slot frees
            tracking.client(self.config["tracking_uri"])
        except JMKError as exc:
            _log.warning("tracking store: %s", exc)  # each trial's submit says it again, and fails that trial
        try:
            while not self.step():
                time.sleep(POLL_SECONDS)
        except BaseException as exc:  # the controller itself broke: say so in the record, stop the trials
            self._cancel_active()
            self._end("failed", f"the sweep controller stopped: {type(exc).__name__}: {exc}")
            raise
        return self.record

    def first_wave(self) -> None:
        """Launch the first ``parallel`` trials of a planned sweep from the process that started it.

        The kernel has MLflow imported and its store open; a new controller process needs seconds for
        that before its first trial could start. Optuna's searches leave it to the controller.
        """
        if self.search is None:
            self._launch_more()
            self._save()

    def step(self) -> bool:
        """One round: cancel if asked, follow the active trials, launch more; True once the sweep is over."""
        if not self.stopping and self.store.cancel_requested(self.sweep_id):
            self.stopping = "cancelled"
            self._cancel_active()
        ended = [(trial, job) for trial in self._trials(*ACTIVE) if (job := self._follow(trial)) is not None]
        if self.plan is not None:  # the next points do not depend on these results: refill the freed slots first
            self._check_failures(sum(1 for _, job in ended if job.state is JobState.FAILED))
            self._launch_more(len(ended))
        for trial, job in ended:  # then close the ended trials' runs while the new ones start
            self._finish(trial, job)
        self._check_failures()
        self._launch_more()
        over = not self._trials(*ACTIVE) and (self.stopping or self._next_index() is None)
        if over:
            self._end(self.stopping or "succeeded", self.record.get("message", ""))
        elif self._dirty:
            self._save()
        return bool(over)

    def _check_failures(self, ending: int = 0) -> None:
        """Stop the sweep once more trials failed than allowed (``ending``: failed jobs not closed yet)."""
        failures = len(self._trials("failed")) + ending
        if not self.stopping and failures > self.record["max_failures"]:
            self.stopping = "failed"
            self.record["message"] = (
                f"{failures} trials failed, more than --max-failures {self.record['max_failures']}: "
                "the sweep stopped (see each trial's error)"
            )
            self._cancel_active()

    def _launch_more(self, ended: int = 0) -> None:
        """Launch trials until ``parallel`` are active (``ended``: active in the record, but their jobs ended)."""
        if self.stopping:
            return
        while len(self._trials(*ACTIVE)) - ended < self.record["parallel"] and self._next_index() is not None:
            self._launch()

    # -- trials -----------------------------------------------------------------------------------

    def _trials(self, *states: str) -> list[dict[str, Any]]:
        return [t for t in self.record["trials"] if t["state"] in states]

    def _next_index(self) -> int | None:
        launched = len(self.record["trials"])
        return launched if launched < self.record["total"] else None

    def _params_of(self, index: int) -> tuple[int | None, dict[str, Any]]:
        if self.plan is not None:
            params = dict(self.plan[index])
            return (self.search.ask(params)[0] if self.search else None), params
        assert self.search is not None  # tpe asks Optuna for each trial
        return self.search.ask(None)

    def _launch(self) -> None:
        index = len(self.record["trials"])
        number, params = self._params_of(index)
        repeat = sum(1 for t in self.record["trials"] if t["params"] == params)
        trial: dict[str, Any] = {
            "index": index, "params": params, "repeat": repeat, "group": group_key(params), "state": "queued",
            "objective": None, "job_id": None, "run_id": None, "error": None, "started": None, "finished": None,
            "step": None, "value": None, "optuna": number,
        }  # fmt: skip
        self.record["trials"].append(trial)
        tags = {
            "mlflow.parentRunId": self.record["parent_run_id"], "jmk.sweep": self.sweep_id,
            "jmk.sweep.trial": str(index), "jmk.sweep.group": trial["group"],
        }  # fmt: skip
        spec = dataclasses.replace(
            self.base,
            params={**self.base.params, **params},
            tags={**self.base.tags, **tags},
            run_name=f"{self.base.run_name or self.sweep_id}-trial-{index}",
        )
        try:
            job = self.service.submit(spec, self.config.get("scalars") or {}, staged=self.entries)
        except Exception as exc:  # MLflow or the cluster refused this trial: it fails, the sweep goes on
            self._close(trial, "failed", error=f"could not start: {exc}")
            return
        trial.update(job_id=job.job_id, run_id=job.run_id)
        self._save()  # at once: a controller started again after a crash must not launch this trial twice
        self.service.watch(job.job_id)  # this process closes the trial's run: MLflow is imported here

    def _follow(self, trial: dict[str, Any]) -> JobRecord | None:
        """Bring a trial's state up to date; returns its job once it has ended (to :meth:`_finish`)."""
        try:
            job = self.service.get(trial["job_id"])
        except JMKError as exc:  # the backend cannot be asked now: try again next round
            _log.warning("trial %s: %s", trial["index"], exc)
            return None
        if job.state is JobState.RUNNING and trial["state"] == "queued":
            trial.update(state="running", started=job.started)
            self._dirty = True
        if self.search and job.state is JobState.RUNNING and not trial.get("pruning"):
            self._observe(trial, job)
        return job if job.state.terminal else None

    def _observe(self, trial: dict[str, Any], job: JobRecord) -> None:
        """Give the pruner the trial's new intermediate values; stop the trial if it says so."""
        assert self.search is not None
        now = time.monotonic()
        if now - self._observed.get(trial["index"], 0.0) < OBSERVE_SECONDS or not job.run_id:
            return
        self._observed[trial["index"]] = now
        if self._report(trial, job) and self.search.should_prune(trial["optuna"]):
            trial["pruning"] = True
            self.service.cancel(trial["job_id"])

    def _report(self, trial: dict[str, Any], job: JobRecord) -> bool:
        """Give the pruner the objective's values the trial logged since the last report; whether it has any.

        Also once a trial has succeeded, before it is told complete: the pruner compares a running
        trial at a step with the completed trials' values at that step, so a completed trial must
        have all of them (not only those seen while it ran, a poll every ``OBSERVE_SECONDS``).
        """
        assert self.search is not None
        seen = trial["step"] if trial["step"] is not None else -1
        if not job.run_id or not job.tracking_uri:
            return seen >= 0
        try:
            history = tracking.metric_history(job.tracking_uri, job.run_id, self.objective.metric)
        except JMKError:
            return seen >= 0  # MLflow does not answer now: what was reported stays
        for point in sorted(history, key=lambda m: (m.step, m.timestamp)):
            if point.step > seen and math.isfinite(point.value):
                self.search.report(trial["optuna"], int(point.step), float(point.value))
                trial.update(step=int(point.step), value=float(point.value))
                seen = point.step
                self._dirty = True
        return seen >= 0

    def _finish(self, trial: dict[str, Any], job: JobRecord) -> None:
        job = self.service.closed(job)  # the trial's run ends (FINISHED, FAILED, KILLED) before the sweep moves on
        trial["finished"] = job.finished
        trial["started"] = trial["started"] or job.started
        if job.state is JobState.SUCCEEDED:
            value = self._objective_of(job)
            if value is None:
                self._close(trial, "failed", error=(
                    f"the objective {self.objective.metric} was never logged (mlflow.log_metric"
                    f"({self.objective.metric!r}, value)) nor assigned as a number in the cell"
                ))  # fmt: skip
            else:
                if self.search and trial.get("optuna") is not None:
                    self._report(trial, job)
                self._close(trial, "succeeded", objective=value)
        elif job.state is JobState.CANCELLED and trial.get("pruning"):
            last = f"{self.objective.metric}={trial['value']:.6g}"
            self._close(trial, "pruned", error=f"pruned at step {trial['step']}: {last}")
            if job.run_id and job.tracking_uri:
                try:
                    tracking.annotate_run(job.tracking_uri, job.run_id, tags={"jmk.sweep.pruned": "true"})
                except JMKError:
                    pass  # the sweep record says it too
        elif job.state is JobState.CANCELLED:
            self._close(trial, "cancelled", error=job.message or "cancelled")
        else:
            self._close(trial, "failed", error=self._error_of(job))

    def _error_of(self, job: JobRecord) -> str:
        """What the cell raised (``ValueError: ...``), else the job's own message."""
        try:
            self.service.result(job)
        except JobFailed as failure:
            return failure.message
        except (JMKError, OSError):
            pass
        return job.message or f"failed; see %job logs {job.job_id}"

    def _objective_of(self, job: JobRecord) -> float | None:
        """The objective's last logged value, else a number the cell assigned under the metric's name."""
        if job.run_id and job.tracking_uri:
            try:
                metrics = tracking.get_run(job.tracking_uri, job.run_id).data.metrics
                if self.objective.metric in metrics:
                    return float(metrics[self.objective.metric])
            except JMKError as exc:
                _log.warning("trial run %s: %s", job.run_id, exc)
        try:
            value = self.service.result_value(job, self.objective.metric)
        except (KeyError, JMKError, OSError):
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value.item())  # a 0-d numpy array or torch tensor
        except (AttributeError, TypeError, ValueError):
            return None

    def _close(
        self, trial: dict[str, Any], state: str, objective: float | None = None, error: str | None = None
    ) -> None:
        trial.update(state=state, objective=objective, error=error)
        trial["finished"] = trial["finished"] or time.time()
        if self.search and trial.get("optuna") is not None:
            kind = {"succeeded": "complete", "pruned": "pruned"}.get(state, "fail")
            self.search.tell(trial["optuna"], kind, objective)
        self.record["best"] = best_trial(self.record["trials"], self.objective)
        self._dirty = True

    def _cancel_active(self) -> None:
        for trial in self._trials(*ACTIVE):
            if trial["job_id"]:
                try:
                    self.service.cancel(trial["job_id"])
                except JMKError as exc:
                    _log.warning("cancelling trial %s: %s", trial["index"], exc)

    # -- the record and the parent run ------------------------------------------------------------

    def _save(self) -> None:
        self.store.save(self.record)
        self._dirty = False

    def _end(self, state: str, message: str) -> None:
        best = self.record.get("best")
        if state == "succeeded" and best is None:
            state, message = "failed", "no trial succeeded: see each trial's error"
        tags = {"jmk.sweep.state": state, "jmk.sweep.trials": str(len(self.record["trials"]))}
        metrics = {}
        if best is not None:
            trial = self.record["trials"][best]
            tags.update({"jmk.sweep.best_trial": str(best), "jmk.sweep.best_run_id": str(trial["run_id"]),
                         "jmk.sweep.best_params": json.dumps(trial["params"], default=str)})  # fmt: skip
            metrics[f"best_{self.objective.metric}"] = float(trial["objective"])
        status = {"succeeded": "FINISHED", "cancelled": "KILLED"}.get(state, "FAILED")
        try:
            tracking.annotate_run(self.config["tracking_uri"], self.record["parent_run_id"], tags, metrics, status)
        except JMKError as exc:
            message = f"{message}; the parent run was not closed: {exc}".lstrip("; ")
        finally:  # the record says the sweep ended only once its parent run is closed: followers read both
            self.record.update(state=state, message=message, finished=time.time())
            self._save()


def run_sweep(folder: str | Path, service: JobService | None = None) -> dict[str, Any]:
    """Drive the sweep in ``folder`` (``<state_dir>/sweeps/<id>``) to its end; returns its final record."""
    from traitlets.config import Config

    from ..config import load_settings

    path = Path(folder)
    store = SweepStore(path.parent.parent)
    lock = store.hold_controller(path.name)
    if lock is None:  # another controller drives this sweep
        return store.load(path.name)
    if service is None:  # configured as the kernel that started the sweep was
        config = json.loads((path / "config.json").read_text())
        traitlets = Config(config.get("traitlets") or {})
        service = JobService(load_settings(traitlets, **config.get("settings", {})), traitlets)
    with lock:
        return SweepController(store, path.name, service).run()


__all__ = ["SweepController", "TERMINAL", "best_trial", "group_key", "run_sweep"]
