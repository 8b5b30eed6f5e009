"""Job records for the local steps of a pipeline run, so that ``%jobs`` lists them with every other job.

A local step is run by the pipeline engine itself (papermill in a kernel of its own), not submitted
through a backend; its record says which process runs it. ``refresh`` notices when that process has
ended without recording the step's end. Steps are started and stopped with their pipeline run.
"""

from __future__ import annotations

from ..exceptions import JMKUsageError
from ..lifecycle import end_job
from ..models import JobRecord, JobSpec, JobState
from ..util.processes import process_alive
from .base import Backend

NOT_ON_THEIR_OWN = "Pipeline steps run as part of a pipeline: jmk pipeline run PIPELINE.yaml, or %pipeline run."


class PipelineStepBackend(Backend):
    """The records of local pipeline steps (the engine runs them)."""

    name = "pipeline"

    def check(self, spec: JobSpec) -> None:
        """Steps are not submitted on their own."""
        raise JMKUsageError(NOT_ON_THEIR_OWN)

    def launch(self, record: JobRecord) -> JobRecord:
        """Steps are not submitted on their own."""
        raise JMKUsageError(NOT_ON_THEIR_OWN)

    def cancel(self, record: JobRecord) -> None:
        """A step stops with its pipeline run."""
        raise JMKUsageError(
            f"Job {record.job_id} is a step of a pipeline run: interrupt that run (Ctrl-C, or the kernel's stop "
            "button) to stop it; its other steps stop too."
        )

    def refresh(self, record: JobRecord) -> JobRecord:
        """A step whose pipeline process has gone without recording its end failed."""
        if record.state.terminal or process_alive(record.pid, record.pid_start):
            return record
        return end_job(self.store, record.job_id, JobState.FAILED, "the pipeline run's process ended during this step")

