"""``%jobs`` and ``%job logs|attach|cancel``: find jobs again, from any kernel."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from ..exceptions import JMKUsageError
from ..sweeps import is_sweep_id, listed
from ..widgets import JobStatusView
from ..widgets.jobs import JobTable
from ..widgets.sweep import SweepTable
from .common import service_for, split_words, stream_to_cell, user_errors
from .train import attach, collect_sweep, sweeps_for

JOB_USAGE = """Usage:
  %job logs ID [--follow] [--rank R]
                            print the job's log (and keep following it); --rank: one rank's lines
  %job attach ID            wait for the job, stream the rest of its log, collect its results
  %job cancel ID            stop the job (its MLflow run ends KILLED)
  %job status ID            one line about the job
A sweep's id (s-1a2b3c4d) works too: status shows its leaderboard, attach collects its best trial,
cancel stops every trial, logs shows its controller's log."""

__all__ = ["JOB_USAGE", "JobMagics"]


@magics_class
class JobMagics(Magics):
    """``%jobs`` and ``%job``."""

    @line_magic
    @user_errors
    def jobs(self, line: str = "") -> JobTable:
        """List jobs under this state directory, including those of earlier kernels.

        Examples
        --------
        ::

            %jobs
        """
        limit = int(line) if line.strip().isdigit() else 50
        return JobTable(*listed(service_for(self.shell), limit))

    @line_magic
    @user_errors
    def job(self, line: str) -> Any:
        """Look at or act on one job: ``logs ID [--follow]``, ``attach ID``, ``cancel ID``, ``status ID``.

        Examples
        --------
        ::

            %job logs 1a2b3c4d --follow
            %job attach 1a2b3c4d
            %job cancel 1a2b3c4d
        """
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        words = split_words(line)
        if len(words) < 2 or words[0] not in ("logs", "attach", "cancel", "status"):
            raise JMKUsageError(JOB_USAGE)
        action, job_id, *rest = words
        rank = _take_rank(rest) if action == "logs" else None
        allowed = {"logs": {"--follow", "-f"}}.get(action, set())
        unknown = [w for w in rest if w not in allowed]
        if unknown:
            raise JMKUsageError(f"%job {action} does not take {' '.join(unknown)}.\n{JOB_USAGE}")
        if is_sweep_id(job_id):
            return self._sweep(action, job_id, rest)
        service = service_for(self.shell)
        record = service.get(job_id)
        if action == "status":
            from ..widgets.status import describe

            print(describe(record))
        elif action == "logs":
            if rest:
                stream_to_cell(service, record.job_id, rank=rank)
            else:
                print(service.read_log(record.job_id, rank), end="")
        elif action == "cancel":
            record = service.cancel_and_wait(record.job_id)
            suffix = f" ({record.message})" if record.message else ""
            print(f"[jmk] job {record.job_id}: {record.state.value}{suffix}")
        else:
            view = JobStatusView(record)
            view.show()
            result = attach(self.shell, service, record.job_id, view)
            return result.display if result.has_display else None
        return None


    def _sweep(self, action: str, sweep_id: str, rest: list[str]) -> Any:
        """``%job status|logs|attach|cancel`` on a sweep: its leaderboard, its controller's log, collect, stop."""
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        sweeps = sweeps_for(self.shell)
        record = sweeps.get(sweep_id)
        if action == "status":
            return SweepTable(record)
        if action == "logs":
            if rest:
                raise JMKUsageError(f"%job logs {sweep_id} shows the sweep's own log; a trial's: %job logs JOB_ID.")
            print(sweeps.controller_log(record["sweep_id"]), end="")
        elif action == "cancel":
            record = sweeps.cancel(record["sweep_id"])
            print(f"[jmk] sweep {record['sweep_id']}: {record['state']} {record.get('message', '')}".rstrip())
        else:
            collect_sweep(self.shell, sweeps, record["sweep_id"])
        return None


def _take_rank(words: list[str]) -> int | None:
    """Remove ``--rank R`` from ``words``; returns R (None when not given)."""
    if "--rank" not in words:
        return None
    at = words.index("--rank")
    value = words[at + 1] if at + 1 < len(words) else ""
    if not value.isdigit():
        raise JMKUsageError(f"--rank needs a rank number, e.g. %job logs ID --rank 1 (got {value or 'nothing'!r}).")
    del words[at : at + 2]
    return int(value)
