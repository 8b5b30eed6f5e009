"""Diagnosis: what a Job and its pods mean, in the user's words (why it waits, how it ended).

Pure functions of the Job and its pods as the watch last saw them (and, when asked, the events of a
pod deleted under a running job). No API call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...k8s.pods import WAITING_FAILURES
from ...models import JobState

EVENT_WAIT_SECONDS = 3.0  # how long a pod deleted under a running job waits for the scheduler's Preempted event


class Verdict:
    """What a Job and its pods mean for the record."""

    def __init__(self, state: JobState, message: str, exit_code: int | None = None, started: float | None = None,
                 with_log: bool = False, delete: bool = False, needs_events: str = "") -> None:
        self.state, self.message, self.exit_code, self.started = state, message, exit_code, started
        self.with_log, self.delete = with_log, delete
        # The pod whose events would say more (a pod deleted under the job: preempted or evicted?)
        self.needs_events = needs_events


def _time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    import datetime as dt

    return dt.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()


def diagnose(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], pull_grace: float,
             events: Sequence[Mapping[str, Any]] | None = None) -> Verdict:
    """A Job's state in the user's words: why it waits, how it ended.

    ``pods`` may include pods already deleted (their last state). ``events`` are those of the last failed
    pod when a first verdict asked for them (``needs_events``): before Kubernetes 1.26 a pod that was
    preempted or evicted through the API has no condition saying so, only the scheduler's event or none.
    """
    status = job.get("status", {})
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")] or pods
    latest = max(live, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)
    resources = job["spec"]["template"]["spec"]["containers"][0].get("resources", {})
    if "Complete" in conditions:
        return Verdict(JobState.SUCCEEDED, "succeeded", 0)
    if "Failed" in conditions:
        return _failure(conditions["Failed"], pods, resources, events)
    # Before 1.26 a pod deleted under a running Job (preempted, evicted through the API, drained, deleted by
    # hand) is not counted as a failure: the Job controller starts the cell again in a new pod, whatever its
    # backoffLimit. Beyond --retries this ends the job, as 1.26+ does (it counts such pods as failed).
    lost = [p for p in pods
            if p["metadata"].get("deletionTimestamp") and p.get("status", {}).get("phase") != "Succeeded"]
    if lost and not job["metadata"].get("deletionTimestamp") and len(lost) > job["spec"].get("backoffLimit", 6):
        last = max(lost, key=lambda p: p["metadata"].get("creationTimestamp", ""))
        return _deleted_under_the_job(last, events, still_coming=True)
    if latest is None:
        return Verdict(JobState.QUEUED, "waiting for the Job controller to create the pod")
    return pod_verdict(latest, pull_grace)


def pod_verdict(pod: Mapping[str, Any], pull_grace: float) -> Verdict:
    """What one pod of a job that has not ended is doing: running, or why it waits (or cannot start)."""
    phase = pod.get("status", {}).get("phase", "Pending")
    state = _container_state(pod)
    if phase == "Running" or "running" in state:
        outage = node_outage(pod)
        message = f"running in pod {pod['metadata']['name']}" + (f"; {outage}" if outage else "")
        return Verdict(JobState.RUNNING, message, started=_time(state.get("running", {}).get("startedAt")))
    if phase == "Failed" and pod.get("status", {}).get("reason") == "Evicted":
        why = pod["status"].get("message", "")
        return Verdict(JobState.QUEUED, f"pod evicted ({why}); the Job controller may retry")
    waiting = state.get("waiting", {})
    reason = waiting.get("reason", "")
    if reason in WAITING_FAILURES:
        since = _time(pod["metadata"].get("creationTimestamp")) or time.time()
        message = f"{WAITING_FAILURES[reason]}: {reason}: {waiting.get('message', '')}".rstrip(": ")
        if reason in ("ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError") and \
                time.time() - since >= pull_grace:
            return Verdict(JobState.FAILED, message, delete=True)
        return Verdict(JobState.QUEUED, message)
    unschedulable = unscheduled_reason(pod)
    if unschedulable:
        return Verdict(JobState.QUEUED, f"Pending: {unschedulable}")
    if reason:
        return Verdict(JobState.QUEUED, f"Pending: {reason}")
    return Verdict(JobState.QUEUED, "Pending: waiting for a node")


def unscheduled_reason(pod: Mapping[str, Any]) -> str:
    """The scheduler's reason a pod has no node (``Unschedulable: 0/1 nodes are available: ...``), else ``""``."""
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason', 'Unschedulable')}: {condition.get('message', '')}".rstrip(": ")
    return ""


def _failure(condition: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], resources: Mapping[str, Any],
             events: Sequence[Mapping[str, Any]] | None = None) -> Verdict:
    reason = condition.get("reason", "")
    failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]
    last = max(failed, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)
    terminated = _container_state(last).get("terminated", {}) if last is not None else {}
    if last is not None and last["status"].get("reason") == "Evicted":
        return Verdict(JobState.FAILED, f"evicted: {last['status'].get('message', 'the node ran short of resources')}")
    disruption = _disruption(last) if last is not None else None
    if disruption is not None:
        return Verdict(JobState.FAILED, disruption)
    if (last is not None and last["status"].get("reason") == "DeadlineExceeded") or reason == "DeadlineExceeded":
        return Verdict(JobState.FAILED, "deadline exceeded: the job ran longer than --timeout and was stopped",
                       with_log=True)
    if last is not None and last["metadata"].get("deletionTimestamp") and terminated.get("reason") != "OOMKilled":
        return _deleted_under_the_job(last, events)
    if terminated.get("reason") == "OOMKilled":
        limit = (resources.get("limits") or {}).get("memory", "its memory limit")
        return Verdict(JobState.FAILED, f"OOMKilled: the job used more than its memory limit ({limit}). Ask for more "
                                        "with --memory, or use less (smaller batches).", terminated.get("exitCode"))
    exit_code = terminated.get("exitCode")
    attempts = len(failed)
    prefix = f"failed after {attempts} attempts" if attempts > 1 else "failed"
    if exit_code is not None:
        return Verdict(JobState.FAILED, f"{prefix}: the cell's process exited with code {exit_code}", exit_code,
                       with_log=True)
    return Verdict(JobState.FAILED, f"{prefix}: {reason}: {condition.get('message', '')}".rstrip(": "), with_log=True)


def _deleted_under_the_job(pod: Mapping[str, Any], events: Sequence[Mapping[str, Any]] | None,
                           still_coming: bool = False) -> Verdict:
    """A job's pod deleted by someone else than the job: preempted (the scheduler's event says so) or stopped.

    ``still_coming``: the Job has not failed yet, so its controller may still be at work (its deadline
    deletes pods before the Job's Failed condition) and the scheduler records ``Preempted`` just after
    the delete: for ``EVENT_WAIT_SECONDS`` after the deletion was asked, a pod without that event waits.
    """
    name = pod["metadata"]["name"]
    running = JobState.RUNNING if still_coming else JobState.FAILED
    if events is None:
        return Verdict(running, f"pod {name} is being deleted", needs_events=name)
    preempted = next((e for e in events if e.get("reason") == "Preempted"), None)
    if preempted is not None:
        return Verdict(JobState.FAILED, "preempted: the scheduler stopped it for a higher-priority pod "
                                        f"({preempted.get('message', '')})", delete=still_coming)
    meta = pod["metadata"]
    asked = (_time(meta.get("deletionTimestamp")) or 0) - (meta.get("deletionGracePeriodSeconds") or 0)
    if still_coming and 0 <= time.time() - asked < EVENT_WAIT_SECONDS:
        return Verdict(JobState.RUNNING, f"pod {name} is being deleted")
    terminated = _container_state(pod).get("terminated", {})
    return Verdict(JobState.FAILED, f"stopped: pod {name} was deleted while the job ran (evicted through the "
                                    "Eviction API, drained from its node, or deleted by hand); resubmit the cell",
                   terminated.get("exitCode"), with_log=True, delete=still_coming)


def node_outage(pod: Mapping[str, Any]) -> str:
    """What to tell the user when a running pod's node stopped reporting (NotReady), else ``""``.

    The pod keeps the last status its kubelet reported, so its container still looks running and ready;
    only the controller manager's mark says the node is gone: it sets the pod's ``Ready`` condition to
    False and leaves ``ContainersReady`` True, which a kubelet never reports itself. The pod is not
    stopped for that: it runs on, and is evicted only after its toleration (300 s by default).
    """
    status = pod.get("status", {})
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready, containers = conditions.get("Ready", {}), conditions.get("ContainersReady", {})
    if status.get("phase") != "Running" or ready.get("status") != "False" or containers.get("status") != "True":
        return ""
    node = pod.get("spec", {}).get("nodeName") or "its node"
    since = ready.get("lastTransitionTime", "")
    when = f" since {since[11:19]} UTC" if len(since) >= 19 else ""
    return (f"node {node} is NotReady{when}: the job's pod keeps running there, and its log and status go on "
            "when the node is Ready again (Kubernetes evicts the pod if the node stays NotReady, by default for 5 min)")


def _disruption(pod: Mapping[str, Any]) -> str | None:
    """Why Kubernetes stopped a pod that was fine (1.26+: the DisruptionTarget condition), in words."""
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            reason = condition.get("reason", "")
            if reason == "PreemptionByScheduler":
                return f"preempted: the scheduler stopped it for a higher-priority pod ({condition.get('message', '')})"
            return f"disrupted: {reason}: {condition.get('message', '')}".rstrip(": ")
    return None


def _container_state(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The ``state`` of the pod's (only) container: ``{"running": ...}``, ``{"waiting": ...}``, ..."""
    statuses: list[dict[str, Any]] = pod.get("status", {}).get("containerStatuses") or []
    return dict(statuses[0].get("state", {})) if statuses else {}


def _container_started(pod: Mapping[str, Any]) -> bool:
    state = _container_state(pod)
    return "running" in state or "terminated" in state


def _container_done(pod: Mapping[str, Any]) -> bool:
    return "terminated" in _container_state(pod)


# -- the Indexed Job of a batch prediction's shards ----------------------------------------------


def parse_indexes(text: str | None) -> list[int]:
    """The completion indexes a Job status field lists (``completedIndexes``, ``failedIndexes``): "1,3-5" -> 1,3,4,5."""
    found: list[int] = []
    for part in (text or "").split(","):
        first, _, last = part.strip().partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            found.extend(range(int(first), int(last or first) + 1))
    return found


def batch_failure(job: Mapping[str, Any], shards: Sequence[int]) -> str:
    """Why a batch prediction's Indexed Job failed, naming its shards: ``""`` while it has not failed.

    Where the status has ``failedIndexes`` (1.28+, with ``backoffLimitPerIndex``) the failed shards
    are named (index I runs ``shards[I]``), with those that completed; else the Failed condition's
    reason and message (e.g. ``BackoffLimitExceeded``: all the Job's retries used up).
    """
    status = job.get("status", {})
    failed_condition = next((c for c in status.get("conditions") or []
                             if c.get("type") == "Failed" and c.get("status") == "True"), None)
    if failed_condition is None:
        return ""

    def named(indexes: list[int]) -> str:
        return ", ".join(str(shards[i]) if i < len(shards) else f"index {i}" for i in indexes)

    failed = parse_indexes(status.get("failedIndexes"))
    if failed:
        completed = parse_indexes(status.get("completedIndexes"))
        done = f"; shard(s) {named(completed)} completed" if completed else ""
        return (f"the Indexed Job's shard(s) {named(failed)} failed (completion index(es) "
                f"{status['failedIndexes']}){done}")
    reason = failed_condition.get("reason", "")
    return f"the Indexed Job failed: {reason}: {failed_condition.get('message', '')}".rstrip(": ")


def batch_running(pods: Sequence[Mapping[str, Any]], shards: Sequence[int], pull_grace: float) -> Verdict | None:
    """A batch Indexed Job with some pod running: RUNNING, saying how many of its shards' pods run (else None).

    :func:`diagnose` looks at the newest pod, which may be one index's retry waiting while the others run.
    """
    running = [p for p in pods if not p["metadata"].get("deletionTimestamp")
               and pod_verdict(p, pull_grace).state is JobState.RUNNING]
    if not running:
        return None
    first = min(running, key=lambda p: p["metadata"].get("creationTimestamp", ""))
    verdict = pod_verdict(first, pull_grace)
    verdict.message = f"running: {len(running)} pod(s) of the Indexed Job of {len(shards)} shard(s)"
    return verdict
