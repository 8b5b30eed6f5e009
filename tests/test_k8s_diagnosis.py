"""How a Job and its pods read to the user: every branch of ``diagnose`` on API-shaped objects.

The cluster tests (test_k8s_backend.py) show most of these end to end; this covers what the 1.20 test
control plane cannot produce (preemption's DisruptionTarget condition) and pins every message.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from jupyter_mlflow_k8s.backends.kubernetes import diagnose
from jupyter_mlflow_k8s.models import JobState

NOW = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
LONG_AGO = "2020-01-01T00:00:00Z"


def job(conditions: list[dict[str, str]] | None = None, memory: str = "4Gi", retries: int = 0) -> dict[str, Any]:
    container = {"name": "train", "resources": {"limits": {"memory": memory}}}
    return {"metadata": {"name": "jmk-ada-1"},
            "spec": {"backoffLimit": retries, "template": {"spec": {"containers": [container]}}},
            "status": {"conditions": conditions or []}}


def pod(phase: str = "Pending", state: dict[str, Any] | None = None, created: str = NOW, **status: Any) -> dict[str, Any]:
    statuses = [{"name": "train", "state": state}] if state is not None else []
    return {"metadata": {"name": "jmk-ada-1-x", "creationTimestamp": created},
            "status": {"phase": phase, "containerStatuses": statuses, **status}}


FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]


@pytest.mark.parametrize(
    ("the_job", "pods", "state", "message"),
    [
        (job([{"type": "Complete", "status": "True"}]), [], JobState.SUCCEEDED, "succeeded"),
        (job(), [], JobState.QUEUED, "waiting for the Job controller to create the pod"),
        (job(), [pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                  "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])],
         JobState.QUEUED, "Pending: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
        (job(), [pod(state={"waiting": {"reason": "ErrImagePull", "message": "not found"}})],
         JobState.QUEUED, "the image could not be pulled: ErrImagePull: not found"),
        (job(), [pod(state={"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}}, created=LONG_AGO)],
         JobState.FAILED, "the image could not be pulled: ImagePullBackOff: Back-off"),
        (job(), [pod(state={"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "wandb" not found'}},
                     created=LONG_AGO)],
         JobState.FAILED, 'the container could not be configured: CreateContainerConfigError: secret "wandb" not found'),
        (job(), [pod("Running", {"running": {"startedAt": NOW}})], JobState.RUNNING, "running in pod jmk-ada-1-x"),
        (job(), [pod("Failed", {"terminated": {"exitCode": 137}}, reason="Evicted", message="The node was low on memory.")],
         JobState.QUEUED, "pod evicted (The node was low on memory.); the Job controller may retry"),
        (job(FAILED), [pod("Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})], JobState.FAILED,
         "OOMKilled: the job used more than its memory limit (4Gi). Ask for more with --memory, or use less (smaller batches)."),
        (job(FAILED), [pod("Failed", {"terminated": {"exitCode": 137}}, reason="Evicted", message="Low on disk.")],
         JobState.FAILED, "evicted: Low on disk."),
        (job(FAILED), [pod("Failed", {"terminated": {"exitCode": 143}}, conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
             "message": "Preempted in order to admit critical pod"}])],
         JobState.FAILED, "preempted: the scheduler stopped it for a higher-priority pod (Preempted in order to admit critical pod)"),
        (job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]), [], JobState.FAILED,
         "deadline exceeded: the job ran longer than --timeout and was stopped"),
        (job(FAILED), [pod("Failed", {"terminated": {"exitCode": 2}}), pod("Failed", {"terminated": {"exitCode": 2}})],
         JobState.FAILED, "failed after 2 attempts: the cell's process exited with code 2"),
        (job(FAILED), [], JobState.FAILED, "failed: BackoffLimitExceeded: Job has reached the specified backoff limit"),
    ],
)
def test_diagnosis(the_job: dict[str, Any], pods: list[dict[str, Any]], state: JobState, message: str) -> None:
    verdict = diagnose(the_job, pods, pull_grace=30)
    assert (verdict.state, verdict.message) == (state, message)


def test_failed_image_pulls_delete_the_job_and_failed_cells_show_their_log() -> None:
    pull = diagnose(job(), [pod(state={"waiting": {"reason": "ImagePullBackOff"}}, created=LONG_AGO)], 30)
    assert pull.delete and not pull.with_log
    exited = diagnose(job(FAILED), [pod("Failed", {"terminated": {"exitCode": 1}})], 30)
    assert exited.with_log and exited.exit_code == 1 and not exited.delete


def deleted_pod(exit_code: int = 143, asked: float | None = None, grace: int = 0) -> dict[str, Any]:
    """A pod that was deleted while it ran (its last state, as the watch keeps it); its deletion was asked at
    ``asked`` (seconds since the epoch; default now, when called) with ``grace`` seconds to stop."""
    stopped = pod("Failed", {"terminated": {"exitCode": exit_code, "reason": "Error"}})
    due = (time.time() if asked is None else asked) + grace
    stopped["metadata"].update(deletionTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(due)),
                               deletionGracePeriodSeconds=grace)
    return stopped


def test_a_pod_deleted_under_the_job_is_explained_from_its_events() -> None:
    """Before 1.26 (the test cluster is 1.20) preemption and API eviction leave no pod condition."""
    first = diagnose(job(FAILED), [deleted_pod()], 30)
    assert (first.state, first.needs_events) == (JobState.FAILED, "jmk-ada-1-x")

    preempted = diagnose(job(FAILED), [deleted_pod()], 30, events=[
        {"reason": "Scheduled", "message": "Successfully assigned"},
        {"reason": "Preempted", "message": "Preempted by t-ns/urgent on node jmk-node"}])
    assert preempted.message == ("preempted: the scheduler stopped it for a higher-priority pod "
                                 "(Preempted by t-ns/urgent on node jmk-node)")
    evicted = diagnose(job(FAILED), [deleted_pod()], 30, events=[])
    assert evicted.message.startswith("stopped: pod jmk-ada-1-x was deleted while the job ran (evicted through the "
                                      "Eviction API")
    assert (evicted.exit_code, evicted.needs_events) == (143, "")


def test_a_pod_deleted_under_a_running_job_ends_it_beyond_its_retries() -> None:
    """1.20's Job controller does not count a deleted pod as failed and starts the cell again; with
    ``--retries 0`` that ends the job (deleting it, so the new pod stops), as 1.26+ would."""
    replacement = pod("Running", {"running": {"startedAt": NOW}})
    replacement["metadata"]["name"] = "jmk-ada-1-y"
    lost = deleted_pod(grace=30)
    first = diagnose(job(), [lost, replacement], 30)
    assert (first.state, first.needs_events) == (JobState.RUNNING, "jmk-ada-1-x")

    preempted = diagnose(job(), [lost, replacement], 30, events=[{"reason": "Preempted", "message": "Preempted by a/b"}])
    assert (preempted.state, preempted.delete) == (JobState.FAILED, True)
    assert preempted.message == "preempted: the scheduler stopped it for a higher-priority pod (Preempted by a/b)"
    # no event yet, moments after the delete: the scheduler may still record it (or the Job fail by its deadline)
    waiting = diagnose(job(), [lost, replacement], 30, events=[])
    assert (waiting.state, waiting.message) == (JobState.RUNNING, "pod jmk-ada-1-x is being deleted")
    stopped = diagnose(job(), [deleted_pod(asked=time.time() - 3600, grace=30), replacement], 30, events=[])
    assert (stopped.state, stopped.delete, stopped.with_log) == (JobState.FAILED, True, True)
    assert stopped.message.startswith("stopped: pod jmk-ada-1-x was deleted while the job ran")
    # within --retries the new pod runs the cell again
    retried = diagnose(job(retries=1), [lost, replacement], 30)
    assert (retried.state, retried.message) == (JobState.RUNNING, "running in pod jmk-ada-1-y")
