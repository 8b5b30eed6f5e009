"""Batch prediction seen from a front door: plan the shards, run them as jobs, gather one MLflow run, judge.

:meth:`BatchService.run` checks the request, pins the model version, lists the inputs and fixes the plan
(:mod:`.plan`), kept under the output prefix: a rerun of the same command finds it and runs only the
shards without a success marker; a rerun whose inputs, model version or shard count changed is refused
(``--replan`` starts over). Each unfinished shard is one job of the job service (a local process, or a
Kubernetes Job retried by its ``backoffLimit``), a child run of the batch's own MLflow run, which gets
rows, bad rows and rows/s of every shard; or, where the backend says it has them (``batch_form``), all
the unfinished shards are ONE job, a Kubernetes Indexed Job whose pod of index I runs the I-th of them,
followed by their success markers. The batch fails when a shard does, or when the bad rows are
more than ``--error-threshold`` of all rows, saying how many. Nothing here imports IPython.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

from .. import tracking
from ..errors import JMKError
from ..exceptions import JMKUsageError
from ..jobs import JobService
from ..models import JobRecord, JobSpec, JobState, Resources
from ..tracking import model_registry
from ..tracking.refs import ModelRef
from . import files
from .plan import PLAN_FILE, QUARANTINE_FOLDER, SUCCESS_FILE, Plan, differences
from .request import BatchRequest
from .worker import shard_done

POLL_SECONDS = 0.2
# The success markers of an Indexed Job's shards are read at most this often while it runs.
MARKER_POLL_SECONDS = 1.0
# How the shards run: one job each (local processes, or one Kubernetes Job per shard) ...
FORM_JOBS = "jobs"
# ... or every unfinished shard in ONE Kubernetes Indexed Job (the shard of index I: the job's batch_shards[I]).
FORM_INDEXED = "indexed"


class BatchFailed(JMKError):
    """A batch prediction ended without success: a shard failed, or too many rows were bad."""

    def __init__(self, message: str, report: BatchReport) -> None:
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(repr=False)
class BatchReport:
    """How a batch prediction went: per shard rows, bad rows, rows/s, and whether it was skipped."""

    output: str
    plan_id: str
    model: str
    shards: list[dict[str, Any]]
    run_id: str = ""
    seconds: float = 0.0
    state: str = "running"
    message: str = ""
    form: str = FORM_JOBS

    @property
    def rows(self) -> int:
        """Rows read, over every finished shard."""
        return sum(int(s.get("rows", 0)) for s in self.shards)

    @property
    def errors(self) -> int:
        """Bad rows (in the quarantine), over every finished shard."""
        return sum(int(s.get("errors", 0)) for s in self.shards)

    @property
    def rows_run(self) -> int:
        """Rows read by the shards this command ran (not those it skipped)."""
        return sum(int(s.get("rows", 0)) for s in self.shards if s["state"] == "succeeded")

    def __repr__(self) -> str:
        return (
            f"<BatchReport {self.plan_id}: {self.state}, {self.rows:,} rows, {self.errors:,} bad, "
            f"{len(self.shards)} shard(s) -> {self.output}>"
        )

    def table(self) -> str:
        """A plain-text table of the shards."""
        lines = [f"{'shard':>5}  {'state':<9} {'rows':>10} {'bad':>8} {'rows/s':>10}  job"]
        for s in self.shards:
            lines.append(
                f"{s['shard']:>5}  {s['state']:<9} {s.get('rows', ''):>10} {s.get('errors', ''):>8} "
                f"{s.get('rows_per_s', ''):>10}  {s.get('job_id', '')}"
            )
        lines.append(f"total  {self.state:<9} {self.rows:>10} {self.errors:>8}  -> {self.output}")
        return "\n".join(lines)


def pin_model(model: str, tracking_uri: str) -> str:
    """``models:/NAME@ALIAS`` (or ``/latest``) at the version it names now; other URIs as they are."""
    ref = ModelRef.maybe(model)
    return model if ref is None else model_registry.pin(ref, tracking_uri).uri


def _absolute(url: str) -> str:
    """A local path made absolute (a shard job runs in another folder); URLs as they are."""
    if "://" in url:
        return url
    return os.path.abspath(os.path.expanduser(url)) + ("/" if url.endswith("/") else "")


def shard_code(output: str, shard: int) -> str:
    """The cell a shard's job runs."""
    return f"from jupyter_mlflow_k8s.batch.worker import run_shard\nshard_result = run_shard({output!r}, {shard})\n"


def indexed_shard_code(output: str) -> str:
    """The cell every pod of an Indexed batch Job runs: its shard comes from its completion index."""
    return (
        f"from jupyter_mlflow_k8s.batch.worker import run_indexed_shard\nshard_result = run_indexed_shard({output!r})\n"
    )


class BatchService:
    """Batch predictions run through one job service."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    def _options(self, url: str) -> dict[str, Any]:
        """The fsspec options for ``url``: the job storage's when it is on the same kind of store."""
        storage = self.jobs.settings.storage_url
        same = url.split("://", 1)[0] == storage.split("://", 1)[0] and "://" in url
        return dict(self.jobs.settings.storage_options) if same else {}

    def plan(self, request: BatchRequest, say: Callable[[str], object] = print) -> Plan:
        """The plan of ``request``: the one kept under its output prefix, or a new one written there."""
        inputs = files.list_inputs(request.input, **self._options(request.input))
        model = pin_model(request.model, self.jobs.settings.tracking_uri)
        inside = [
            f.url
            for f in inputs
            if f.url.startswith(request.output) or f.url.startswith(request.output.split("://", 1)[-1])
        ]
        if inside:
            raise JMKUsageError(
                f"--output {request.output} holds input files ({inside[0]} ...): write the "
                f"predictions under another prefix, e.g. --output {request.output.rstrip('/')}-out/"
            )
        kinds = sorted({f.format for f in inputs})
        output_format = request.output_format or (kinds[0] if len(kinds) == 1 else "")
        if not output_format:
            raise JMKUsageError(
                "--input matches both CSV and Parquet files: say which to write, e.g. --output-format parquet."
            )
        new = Plan.make(model, request.model, request.input, request.output, output_format, inputs, request.shards)
        options = self._options(request.output)
        kept = files.read_json(request.output, PLAN_FILE, **options)
        if kept is not None:
            stored = Plan.from_dict(kept)
            changed = differences(stored, new)
            if not changed:
                say(f"batch {stored.plan_id}: the plan under {request.output} fits: finished shards are skipped")
                return stored
            if not request.replan:
                raise JMKUsageError(
                    f"{request.output} holds an earlier batch prediction whose plan differs: {'; '.join(changed)}. "
                    "Run the same command as before to finish it, give another --output, or add --replan to "
                    "remove its outputs and start over."
                )
            say(f"batch: --replan: removing the earlier outputs under {request.output} ({'; '.join(changed)})")
            files.remove_outputs(request.output, **options)
        files.write_json(request.output, PLAN_FILE, new.to_dict(), **options)
        say(f"batch {new.plan_id}: {len(new.files)} file(s) in {len(new.shards)} shard(s), model {model}")
        return new

    def run(self, request: BatchRequest, say: Callable[[str], object] = print) -> BatchReport:
        """Run every unfinished shard of ``request`` and wait; raises :class:`BatchFailed` when it fails."""
        started = time.monotonic()
        settings = self.jobs.settings
        backend = request.backend or settings.default_backend
        request = dataclasses.replace(request, input=_absolute(request.input), output=_absolute(request.output))
        on_this_machine = [u for u in (request.input, request.output) if "://" not in u or u.startswith("file://")]
        if backend != "local" and on_this_machine:
            raise JMKUsageError(
                f"--backend {backend}: its pods cannot read {on_this_machine[0]} on this machine. Put "
                "the files in the object store (--input 's3://bucket/in/*.parquet' --output "
                "s3://bucket/out/), or use --backend local."
            )
        plan = self.plan(request, say)
        options = self._options(request.output)
        base = JobSpec(
            code="",
            backend=backend,
            resources=Resources(gpus=request.gpus),
            experiment=request.experiment,
            retries=request.retries if backend != "local" else 0,
        )
        target = self.jobs.backend(backend)
        target.check(dataclasses.replace(base, code=shard_code(plan.output, 0)))
        form = self.form(target, base, say)
        parent = dataclasses.replace(
            base,
            params=request.describe(),
            run_name=f"batch {plan.plan_id}",
            tags={"jmk.kind": "batch", "jmk.batch": plan.plan_id, "batch.model": plan.model},
        )
        artifact_root = settings.artifact_root if settings.tracking_uri.startswith("sqlite:") else None
        _, run_id = tracking.start_run(settings.tracking_uri, artifact_root, f"batch-{plan.plan_id}", parent)
        report = BatchReport(
            plan.output,
            plan.plan_id,
            plan.model,
            [{"shard": i, "state": "pending", "attempts": 0} for i in range(len(plan.shards))],
            run_id=run_id,
            form=form,
        )
        try:
            self._run_shards(plan, base, report, request, options, say)
        except BaseException as exc:  # an interrupt, or a shard that could not be submitted: stop the others
            self._cancel(report)
            interrupted = isinstance(exc, KeyboardInterrupt)
            report.state, report.message = ("cancelled", "interrupted") if interrupted else ("failed", str(exc))
            self._close(report, settings.tracking_uri, "KILLED" if interrupted else "FAILED", started)
            raise
        failed = [s for s in report.shards if s["state"] != "succeeded" and s["state"] != "skipped"]
        limit = request.error_threshold * report.rows
        if failed:
            first = failed[0]
            report.message = (
                f"{len(failed)} of {len(plan.shards)} shard(s) failed (shard {first['shard']}: "
                f"{first.get('message') or 'see its job log'}). Run the same command again: the "
                "finished shards are skipped."
            )
        elif report.errors > limit:
            fraction = report.errors / max(report.rows, 1)
            report.message = (
                f"{report.errors:,} of {report.rows:,} rows were bad ({fraction:.2%}), more than "
                f"--error-threshold {request.error_threshold:g} allows ({int(limit):,}); see "
                f"{files.join(plan.output, QUARANTINE_FOLDER)}/ for each row and its reason."
            )
        report.state = "failed" if report.message else "succeeded"
        if report.state == "succeeded":
            files.write_json(
                plan.output,
                SUCCESS_FILE,
                {"plan_id": plan.plan_id, "rows": report.rows, "errors": report.errors, "run_id": run_id},
                **options,
            )
        self._close(report, settings.tracking_uri, "FINISHED" if report.state == "succeeded" else "FAILED", started)
        if report.state == "failed":
            raise BatchFailed(f"Batch prediction {plan.plan_id} failed: {report.message}", report)
        return report

    def form(self, target: object, base: JobSpec, say: Callable[[str], object] = print) -> str:
        """How the shards run on ``target``: :data:`FORM_INDEXED` where it says it can, else :data:`FORM_JOBS`.

        A backend that can run them as one Indexed Job says so (``batch_form``, the Kubernetes
        backend's: ``distributed_form``, or with ``auto`` what the API server keeps, asked once per
        namespace); any other backend (local processes) runs one job per shard.
        """
        batch_form = getattr(target, "batch_form", None)
        if batch_form is None:
            return FORM_JOBS
        form, per_index = batch_form(base)
        if form != FORM_INDEXED:
            return FORM_JOBS
        retries = "each index retried on its own" if per_index else "retried within the Job's backoffLimit"
        say(f"batch: the unfinished shards run as one Indexed Job ({retries})")
        return FORM_INDEXED

    def _spec(self, base: JobSpec, plan: Plan, shard: int, run_id: str) -> JobSpec:
        return dataclasses.replace(
            base,
            code=shard_code(plan.output, shard),
            run_name=f"batch {plan.plan_id} shard {shard}",
            tags={"mlflow.parentRunId": run_id, "jmk.batch": plan.plan_id, "jmk.batch.shard": str(shard)},
        )

    def _run_shards(
        self,
        plan: Plan,
        base: JobSpec,
        report: BatchReport,
        request: BatchRequest,
        options: dict[str, Any],
        say: Callable[[str], object],
    ) -> None:
        todo = []
        for entry in report.shards:
            done = shard_done(plan.output, entry["shard"], plan.plan_id, **options)
            if done is not None:
                entry.update(done, state="skipped")
                say(f"shard {entry['shard']}: finished before ({done['rows']} rows); skipped")
            else:
                todo.append(entry["shard"])
        if report.form == FORM_INDEXED:
            if todo:
                self._run_indexed(plan, base, report, todo, options, say)
            return
        running = {shard: self._submit(base, plan, report.shards[shard], report.run_id, say) for shard in todo}
        retries_here = request.retries if base.backend == "local" else 0  # Kubernetes retries by backoffLimit
        while running:
            time.sleep(POLL_SECONDS)
            for shard, record in list(running.items()):
                record = self.jobs.get(record.job_id)
                if not record.state.terminal:
                    continue
                record = self.jobs.closed(record)
                entry = report.shards[shard]
                del running[shard]
                done = shard_done(plan.output, shard, plan.plan_id, **options)
                if record.state is JobState.SUCCEEDED and done is not None:
                    entry.update(done, state="succeeded")
                    say(f"shard {shard}: {done['rows']} rows, {done['errors']} bad, {done['rows_per_s']} rows/s")
                elif entry["attempts"] <= retries_here and record.state is not JobState.CANCELLED:
                    say(f"shard {shard}: job {record.job_id} {record.state.value} ({record.message}); trying again")
                    running[shard] = self._submit(base, plan, entry, report.run_id, say)
                else:
                    entry.update(state="failed", message=record.message or f"job {record.job_id} {record.state.value}")
                    say(f"shard {shard}: failed: {entry['message']}")

    def _run_indexed(
        self,
        plan: Plan,
        base: JobSpec,
        report: BatchReport,
        todo: list[int],
        options: dict[str, Any],
        say: Callable[[str], object],
    ) -> None:
        """Run the shards ``todo`` as ONE Indexed Job and follow it until it ends.

        The Job retries its pods itself (``--retries``: per index where the cluster has
        ``backoffLimitPerIndex``), so nothing is submitted again here. Each shard is said as its
        success marker appears; when the Job ends, the shards without a marker fail with its message.
        """
        shards = ", ".join(map(str, todo))
        spec = dataclasses.replace(
            base,
            code=indexed_shard_code(plan.output),
            batch_shards=tuple(todo),
            run_name=f"batch {plan.plan_id} shards {shards}",
            tags={"mlflow.parentRunId": report.run_id, "jmk.batch": plan.plan_id, "jmk.batch.shards": shards},
        )
        record = self.jobs.submit(spec, {})
        self.jobs.watch(record.job_id)
        for shard in todo:
            report.shards[shard].update(state="running", job_id=record.job_id, attempts=1)
        files_count = sum(len(plan.shards[shard]) for shard in todo)
        say(f"shards {shards}: one Indexed Job, job {record.job_id} ({files_count} file(s))")
        checked = 0.0
        while True:
            time.sleep(POLL_SECONDS)
            record = self.jobs.get(record.job_id)
            if not record.state.terminal and time.monotonic() - checked < MARKER_POLL_SECONDS:
                continue
            checked = time.monotonic()
            if record.state.terminal:
                record = self.jobs.closed(record)
            if self.follow_indexed(plan, report, record, options, say):
                return

    def follow_indexed(
        self,
        plan: Plan,
        report: BatchReport,
        record: JobRecord,
        options: dict[str, Any],
        say: Callable[[str], object] = print,
    ) -> bool:
        """Bring the shards an Indexed Job runs up to date from their success markers; True once it has ended.

        A running shard whose marker is there succeeded (said once); when ``record`` is terminal, every
        running shard without a marker failed, with the job's message (the Kubernetes backend names
        the failed indexes and their shards where the cluster says them).
        """
        for entry in report.shards:
            if entry["state"] != "running" or entry.get("job_id") != record.job_id:
                continue
            shard = entry["shard"]
            done = shard_done(plan.output, shard, plan.plan_id, **options)
            if done is not None:
                entry.update(done, state="succeeded")
                say(f"shard {shard}: {done['rows']} rows, {done['errors']} bad, {done['rows_per_s']} rows/s")
            elif record.state.terminal:
                message = record.message or f"job {record.job_id} {record.state.value}"
                if record.state is JobState.SUCCEEDED:  # every pod exited 0, yet this shard left no marker
                    message = f"job {record.job_id} ended without this shard's success marker"
                entry.update(state="cancelled" if record.state is JobState.CANCELLED else "failed", message=message)
                say(f"shard {shard}: failed: {message}")
        return record.state.terminal

    def _submit(
        self, base: JobSpec, plan: Plan, entry: dict[str, Any], run_id: str, say: Callable[[str], object]
    ) -> JobRecord:
        record = self.jobs.submit(self._spec(base, plan, entry["shard"], run_id), {})
        self.jobs.watch(record.job_id)
        entry.update(state="running", job_id=record.job_id, attempts=entry["attempts"] + 1)
        say(f"shard {entry['shard']}: job {record.job_id} ({len(plan.shards[entry['shard']])} file(s))")
        return record

    def _cancel(self, report: BatchReport) -> None:
        stopped: set[str] = set()  # an Indexed Job runs several shards: stopped once
        for entry in report.shards:
            if entry["state"] == "running" and entry.get("job_id"):
                if entry["job_id"] not in stopped:
                    stopped.add(entry["job_id"])
                    try:
                        self.jobs.cancel_and_wait(entry["job_id"], timeout=10)
                    except Exception as exc:  # stopping the others goes on; the batch says it was interrupted
                        print(f"batch: could not stop job {entry['job_id']}: {exc}")
                entry["state"] = "cancelled"

    def _close(self, report: BatchReport, tracking_uri: str, status: str, started: float) -> None:
        report.seconds = time.monotonic() - started
        metrics: dict[str, float] = {
            "rows": report.rows,
            "errors": report.errors,
            "error_fraction": report.errors / max(report.rows, 1),
            "rows_per_s": report.rows_run / max(report.seconds, 1e-9),
        }
        tags = {"batch.state": report.state, "batch.form": report.form}
        for entry in report.shards:
            if "rows" in entry:
                prefix = f"shard_{entry['shard']}"
                metrics.update(
                    {
                        f"{prefix}/rows": entry["rows"],
                        f"{prefix}/errors": entry["errors"],
                        f"{prefix}/rows_per_s": entry["rows_per_s"],
                    }
                )
            tags[f"shard_{entry['shard']}.state"] = entry["state"]
        if report.message:
            tags["batch.message"] = report.message[:5000]
        tracking.annotate_run(tracking_uri, report.run_id, tags=tags, metrics=metrics, status=status)
