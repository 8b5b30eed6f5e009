"""What a distributed job's gang of pods means, in the user's words: which rank failed, why ranks wait.

A gang stands or falls together: the ranks of a torchrun job block on each other, so one rank that
fails (or never gets a node) leaves the others waiting. These functions read the gang's Jobs and
pods as the watch last saw them, name the rank at fault and say whether the gang must be stopped;
the failure's message takes that rank's lines from the job's local log. Pods are told apart by their
rank: the ``jmk.io/node-rank`` label (one Job per rank) or the Job controller's completion index (an
Indexed Job). No API call.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...models import JobRecord, JobState
from ...ranks import failed_rank
from .diagnosis import (
    Verdict,
    _container_state,
    _deleted_under_the_job,
    _disruption,
    _time,
    pod_verdict,
    unscheduled_reason,
)
from .manifests import COMPLETION_INDEX_ANNOTATION, NODE_RANK_LABEL

# The launcher's exit status when it was stopped (SIGTERM), or stopped itself because another rank failed.
STOPPED_EXIT = 143
# A Job that failed before the watch shows its failed pod (two watches, two streams) waits this long for it.
POD_STATUS_WAIT_SECONDS = 5.0
# How many of a failed rank's last log lines the job's message shows.
RANK_LOG_LINES = 20
# How long after a pod of the gang failed its failure may wait for the pod of the rank that caused it.
CAUSE_WAIT_SECONDS = 10.0
# The first line of a failure in a pod's log: a rank's traceback, or its launcher saying a rank failed.
_ERROR_LINE = re.compile(r"^(\[rank \d+\] Traceback \(most recent call last\):|\[jmk\] rank \d+ failed with exit code)")


class GangVerdict(Verdict):
    """A :class:`Verdict` about a gang, naming the pod at fault.

    ``ranks`` are its global ranks (whose log lines to show); ``pod_tail`` the last lines of its own log as
    the kubelet kept them (``FallbackToLogsOnError``), with what its launcher said when no rank got to
    print anything (no torch in the image, the peers' names never resolved).
    """

    def __init__(self, state: JobState, message: str, exit_code: int | None = None, *,
                 ranks: Sequence[int] = (), pod_tail: str = "", **kwargs: Any) -> None:
        super().__init__(state, message, exit_code, **kwargs)
        self.ranks, self.pod_tail = tuple(ranks), pod_tail


def pod_rank(pod: Mapping[str, Any]) -> int | None:
    """A gang pod's node rank: its ``jmk.io/node-rank`` label, or its Indexed Job completion index."""
    meta = pod.get("metadata", {})
    value = (meta.get("labels") or {}).get(NODE_RANK_LABEL) or (meta.get("annotations") or {}).get(
        COMPLETION_INDEX_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def pods_by_rank(pods: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """Each rank's pod: its newest one not being deleted, else its newest (gang Jobs never retry, so mostly one)."""
    found: dict[int, Mapping[str, Any]] = {}
    for pod in sorted(pods, key=_age_key):
        rank = pod_rank(pod)
        if rank is not None and (rank not in found or not _deleting(pod) or _deleting(found[rank])):
            found[rank] = pod
    return dict(sorted(found.items()))


def _age_key(pod: Mapping[str, Any]) -> tuple[bool, str]:
    return (not _deleting(pod), pod["metadata"].get("creationTimestamp", ""))


def _deleting(pod: Mapping[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _exit_code(pod: Mapping[str, Any]) -> int | None:
    code = _container_state(pod).get("terminated", {}).get("exitCode")
    return int(code) if code is not None else None


def _failed(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's process has ended badly (a non-zero exit, or a pod Kubernetes failed)."""
    return pod.get("status", {}).get("phase") == "Failed" or (_exit_code(pod) or 0) != 0


def _finished(pod: Mapping[str, Any]) -> float:
    stamp = _container_state(pod).get("terminated", {}).get("finishedAt")
    return _time(stamp) or float("inf")


def global_ranks(rank: int, procs: int) -> list[int]:
    """The global ranks of node ``rank``'s processes (torchrun numbers them node by node)."""
    return list(range(rank * procs, (rank + 1) * procs))


def _who(rank: int, pod: Mapping[str, Any], procs: int) -> str:
    name = pod["metadata"]["name"]
    if procs == 1:
        return f"rank {rank} (pod {name})"
    ranks = global_ranks(rank, procs)
    return f"node {rank} (pod {name}, ranks {ranks[0]}-{ranks[-1]})"


def failed_pods(pods: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """The ranks whose pod failed (a non-zero exit, the 143 of a rank stopped by the others included)."""
    return {rank: pod for rank, pod in pods_by_rank(pods).items() if _failed(pod)}


def started_pods(pods: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """The ranks whose container has started (running or ended): those with a log to read."""
    return {rank: pod for rank, pod in pods_by_rank(pods).items()
            if {"running", "terminated"} & set(_container_state(pod))}


def first_error_time(log: str) -> float | None:
    """When a pod's log (read with timestamps) first shows a failure: a rank's traceback, or a failed rank.

    When one rank fails, its peers fail too a moment later (their collectives lose the connection); the
    rank whose error came first is the cause. These are the kubelet's times of the lines themselves,
    not of the pods' ends, which also count how long each launcher took to stop.
    """
    for line in log.splitlines():
        stamp, _, text = line.partition(" ")
        if _ERROR_LINE.match(text):
            return _precise_time(stamp)
    return None


def _precise_time(stamp: str) -> float | None:
    whole = _time(stamp)
    if whole is None:
        return None
    fraction = stamp[19:].rstrip("Z").lstrip(".")
    digits = "".join(c for c in fraction if c.isdigit())
    return whole + (int(digits[:9].ljust(9, "0")) / 1e9 if digits else 0.0)


def diagnose_gang(jobs: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], *, nodes: int, procs: int,
                  pull_grace: float, events: Sequence[Mapping[str, Any]] | None = None,
                  failed_first: int | None = None, error_times: Mapping[int, float] | None = None) -> GangVerdict:
    """A gang's state: the rank that failed first (then every rank must be stopped), success, or why it waits.

    Args:
        jobs: The gang's Jobs (one Indexed Job, or one per rank).
        pods: Every pod of the job, including those deleted since (their last state).
        nodes: How many pods the gang has.
        procs: Processes per pod (to name a failed pod's global ranks).
        pull_grace: Seconds an image that cannot be pulled is waited for before the job fails.
        events: The events of the pod a first verdict named in ``needs_events``.
        failed_first: The global rank the log says failed first (``[jmk] rank R failed ...``), if any: it is
            blamed when several ranks failed in the same second (a peer's failure breaks the others' collectives).
        error_times: When each pod's log first showed an error, by node rank (:func:`first_error_time`), once
            one failed: the earliest is the cause, the others its consequences (its pod may end after theirs).

    Returns:
        The verdict; a failure has ``delete`` set (stop every rank) and ``ranks``, whose log lines to show.
    """
    ranks = pods_by_rank(pods)
    failed = [(rank, pod) for rank, pod in ranks.items() if _failed(pod)]
    if failed:
        # A rank stopped because another failed exits 143: the other one is at fault, and the earliest.
        own = [(rank, pod) for rank, pod in failed if _exit_code(pod) != STOPPED_EXIT]
        at_fault = own or failed
        times = error_times or {}
        waiting = _cause_still_running(ranks, failed, own, times, procs)
        if waiting is not None:
            return waiting
        rank, pod = min(at_fault, key=lambda item: (
            times.get(item[0], float("inf")), _finished(item[1]), failed_first not in global_ranks(item[0], procs),
            item[0]))
        return _rank_failure(rank, pod, procs, jobs)
    for job in jobs:
        verdict = _job_failure(job)
        if verdict is not None:
            return verdict
    lost = [(rank, pod) for rank, pod in ranks.items()
            if _deleting(pod) and pod.get("status", {}).get("phase") != "Succeeded"]
    if lost and not any(job["metadata"].get("deletionTimestamp") for job in jobs):
        rank, pod = lost[0]
        single = _deleted_under_the_job(pod, events, still_coming=True)
        return GangVerdict(single.state, f"{_who(rank, pod, procs)}: {single.message}", single.exit_code,
                           ranks=global_ranks(rank, procs), with_log=True, delete=single.state.terminal,
                           needs_events=single.needs_events)
    succeeded = [rank for rank, pod in ranks.items() if pod.get("status", {}).get("phase") == "Succeeded"]
    if len(succeeded) >= nodes or (jobs and all(_condition(job, "Complete") for job in jobs)):
        return GangVerdict(JobState.SUCCEEDED, f"succeeded on {nodes} pods", 0)
    return _waiting(ranks, nodes, procs, pull_grace)


def _cause_still_running(ranks: Mapping[int, Mapping[str, Any]], failed: Sequence[tuple[int, Mapping[str, Any]]],
                         own: Sequence[tuple[int, Mapping[str, Any]]], times: Mapping[int, float],
                         procs: int) -> GangVerdict | None:
    """Wait (a few seconds at most) for the pod of the rank that failed first, when another pod ended before it.

    A rank that fails makes its peers fail a moment later, and their pods may end first: one stopped by
    the gang (143), or one whose collective lost its peer (1). The rank whose error line came first
    (``times``), or, with only stopped ranks ended, any rank still running, is the one to wait for, so
    that the job fails with that rank's own exit code and lines.
    """
    running = [rank for rank, pod in ranks.items()
               if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed") and not _failed(pod)]
    first_end = min(_finished(pod) for _, pod in failed)
    if not running or time.time() - first_end >= CAUSE_WAIT_SECONDS:
        return None
    cause = min(times, key=lambda rank: times[rank]) if times else None
    if cause in running:
        return GangVerdict(JobState.RUNNING, f"{_who(cause, ranks[cause], procs)} failed; waiting for its pod to end")
    if not own:
        return GangVerdict(JobState.RUNNING, "a rank was stopped because another failed; waiting for that one's pod")
    return None


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def _job_failure(job: Mapping[str, Any]) -> GangVerdict | None:
    """A gang Job failed with no failed pod to blame (its deadline deletes the pods first).

    When the Job failed because a pod did (its backoff limit), the watch of pods may show that pod's
    failure a moment after the watch of Jobs shows the Job's: for a few seconds this waits for it, so
    that the job fails with the rank's own exit code and lines.
    """
    condition = _condition(job, "Failed")
    if condition is None:
        return None
    since = _time(condition.get("lastTransitionTime")) or 0.0
    if condition.get("reason") == "BackoffLimitExceeded" and time.time() - since < POD_STATUS_WAIT_SECONDS:
        return GangVerdict(JobState.RUNNING, f"Job {job['metadata']['name']} failed; waiting for its pod's status")
    if condition.get("reason") == "DeadlineExceeded":
        return GangVerdict(JobState.FAILED, "deadline exceeded: the job ran longer than --timeout and every rank "
                                            "was stopped", with_log=True, delete=True)
    message = f"Job {job['metadata']['name']} failed: {condition.get('reason', '')}: {condition.get('message', '')}"
    return GangVerdict(JobState.FAILED, message.rstrip(": "), with_log=True, delete=True)


def _rank_failure(rank: int, pod: Mapping[str, Any], procs: int, jobs: Sequence[Mapping[str, Any]]) -> GangVerdict:
    """Why one rank's pod failed, in the words of a single job's failure, naming the rank."""
    who, status = _who(rank, pod, procs), pod.get("status", {})
    terminated = _container_state(pod).get("terminated", {})
    code = _exit_code(pod)
    ranks = global_ranks(rank, procs)
    if status.get("reason") == "Evicted":
        message = f"{who} was evicted: {status.get('message', 'the node ran short of resources')}"
        return GangVerdict(JobState.FAILED, message, code, ranks=ranks, with_log=True, delete=True)
    disruption = _disruption(pod)
    if disruption is not None:
        return GangVerdict(JobState.FAILED, f"{who}: {disruption}", code, ranks=ranks, with_log=True, delete=True)
    if status.get("reason") == "DeadlineExceeded":
        return GangVerdict(JobState.FAILED, "deadline exceeded: the job ran longer than --timeout and every rank "
                                            "was stopped", code, ranks=ranks, with_log=True, delete=True)
    if terminated.get("reason") == "OOMKilled":
        limits = _limits(jobs)
        message = (f"{who} was OOMKilled: it used more than its memory limit ({limits.get('memory', 'its limit')}). "
                   "Ask for more with --memory, or use less (smaller batches).")
        return GangVerdict(JobState.FAILED, message, code, ranks=ranks, with_log=True, delete=True)
    if code is not None:
        return GangVerdict(JobState.FAILED, f"{who} failed with exit code {code}; the other ranks were stopped",
                           code, ranks=ranks, with_log=True, delete=True, pod_tail=terminated.get("message", ""))
    reason = status.get("reason") or "Failed"
    return GangVerdict(JobState.FAILED, f"{who} failed: {reason}: {status.get('message', '')}".rstrip(": "),
                       ranks=ranks, with_log=True, delete=True)


def _limits(jobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if not jobs:
        return {}
    container = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    return dict(container.get("resources", {}).get("limits") or {})


def _waiting(ranks: Mapping[int, Mapping[str, Any]], nodes: int, procs: int, pull_grace: float) -> GangVerdict:
    """Ranks running, or waiting: for the Job controller, a node, or an image (which may fail the job)."""
    verdicts = {rank: pod_verdict(pod, pull_grace) for rank, pod in ranks.items()}
    for rank, verdict in verdicts.items():
        if verdict.state is JobState.FAILED:  # an image that cannot be pulled: no rank can go on without it
            return GangVerdict(JobState.FAILED, f"{_who(rank, ranks[rank], procs)}: {verdict.message}",
                               ranks=global_ranks(rank, procs), delete=True)
    running = [rank for rank, verdict in verdicts.items() if verdict.state is JobState.RUNNING]
    starts = [started for rank in running if (started := verdicts[rank].started) is not None]
    state = JobState.RUNNING if running else JobState.QUEUED
    started = min(starts) if starts else None
    scheduled = [rank for rank, pod in ranks.items() if pod.get("spec", {}).get("nodeName")]
    if len(scheduled) < nodes:
        unscheduled = [pod for rank, pod in ranks.items() if rank not in scheduled]
        why = next((reason for pod in unscheduled if (reason := unscheduled_reason(pod))), "")
        if not why:
            why = "waiting for the Job controller to create the pods" if len(ranks) < nodes else "waiting for a node"
        why = why.removeprefix("Unschedulable: ")
        return GangVerdict(state, f"{len(scheduled)} of {nodes} pods scheduled: {why}", started=started)
    if len(running) == nodes:
        names = ", ".join(pod["metadata"]["name"] for pod in ranks.values())
        outages = [outage for verdict in verdicts.values() if "; " in (outage := verdict.message)]
        message = f"running on {nodes} pods ({names})" + (f"; {outages[0].split('; ', 1)[1]}" if outages else "")
        return GangVerdict(JobState.RUNNING, message, started=started)
    waiting = [(rank, verdict) for rank, verdict in verdicts.items() if verdict.state is not JobState.RUNNING]
    detail = "; ".join(f"rank {rank}: {verdict.message}" for rank, verdict in waiting
                       if ranks[rank].get("status", {}).get("phase") != "Succeeded")
    message = f"{len(running)} of {nodes} pods running" + (f"; {detail}" if detail else "")
    return GangVerdict(state, message, started=started)


def gang_jobs(record: JobRecord) -> list[str]:
    """The names of a job's Jobs: every rank's for a gang (``backend_ref["jobs"]``), else its one Job."""
    names = record.backend_ref.get("jobs", "")
    return names.split(",") if names else [record.backend_ref["name"]]


def status_key(pod: dict[str, Any]) -> str:
    """What changes when a pod starts or ends: its name and phase."""
    return f"{pod['metadata']['name']}:{pod.get('status', {}).get('phase', '')}"


def first_failed_rank(record: JobRecord) -> int | None:
    """The global rank whose failure a launcher reported first in the job's log (``[jmk] rank R failed ...``)."""
    try:
        found = failed_rank(Path(str(record.log_path)).read_text(errors="replace"))
    except OSError:
        return None
    return found[0] if found else None


def rank_lines(record: JobRecord, ranks: tuple[int, ...], count: int = RANK_LOG_LINES) -> str:
    """The last ``count`` lines of the job's log that ``ranks`` printed (each starts ``[rank R] ``)."""
    prefixes = tuple(f"[rank {rank}] " for rank in ranks)
    try:
        lines = Path(str(record.log_path)).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join([line for line in lines if line.startswith(prefixes)][-count:])


def failure_message(record: JobRecord, verdict: GangVerdict, tail: str) -> str:
    """The job's message when its gang ended: the verdict, then the failed rank's last lines.

    Those are the lines its ranks printed (``[rank R] ...``) from the merged log; when they printed
    none, what its pod's launcher said (the kubelet's copy); else the merged log's ``tail``.
    """
    message = verdict.message
    if verdict.state is JobState.SUCCEEDED or not verdict.with_log:
        return message
    lines = rank_lines(record, verdict.ranks) if verdict.ranks else ""
    pod_tail = "\n".join(verdict.pod_tail.rstrip("\n").splitlines()[-RANK_LOG_LINES:])
    if lines:
        return message + f"\nLast lines of its log ({', '.join(f'[rank {r}]' for r in verdict.ranks)}):\n{lines}"
    if pod_tail:
        return message + f"\nLast lines of its pod's log:\n{pod_tail}"
    return message + (f"\nLast lines of the log:\n{tail}" if tail else "")
