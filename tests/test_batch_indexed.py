"""The shards of a batch prediction as ONE Indexed Job, without a cluster that has them.

The record keeps the shards; backends without Indexed Jobs refuse them; the Kubernetes backend follows
such a Job from recorded objects in the shape the Kubernetes documentation gives for 1.28+
(``status.failedIndexes``, ``completedIndexes``, the pods' ``batch.kubernetes.io/job-completion-index``
annotation and label), its log pump copies every pod's lines under a header naming its index and shard,
and the batch service keeps each shard's state from the success markers the real worker writes.
The same path on the real 1.20 node (which drops ``completionMode``) is in tests/test_k8s_batch.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_batch import batch_model, frames, service, write_local  # noqa: F401 (batch_model: a fixture)

from jupyter_mlflow_k8s.backends.kubernetes import ClusterWatch, KubernetesBackend, LogPump
from jupyter_mlflow_k8s.backends.kubernetes.diagnosis import batch_failure, parse_indexes
from jupyter_mlflow_k8s.backends.local import LocalBackend
from jupyter_mlflow_k8s.batch import BatchRequest
from jupyter_mlflow_k8s.batch.service import BatchReport, indexed_shard_code
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.models import JobRecord, JobSpec, JobState
from jupyter_mlflow_k8s.records import JobStore

NAME = "jmk-ada-1a2b3c4d"
INDEX = "batch.kubernetes.io/job-completion-index"


def spec(shards: tuple[int, ...] = (1, 3)) -> JobSpec:
    return JobSpec(code=indexed_shard_code("s3://b/out/"), backend="kubernetes", retries=1, batch_shards=shards)


def test_the_shards_of_one_indexed_job_survive_the_records_json() -> None:
    record = JobRecord(job_id="1a2b3c4d", spec=spec((1, 3)))
    data = json.loads(json.dumps(record.to_dict()))
    assert data["spec"]["batch_shards"] == [1, 3]
    again = JobRecord.from_dict(data)
    assert again.spec.batch_shards == (1, 3) and again == record
    older = {**data, "spec": {k: v for k, v in data["spec"].items() if k != "batch_shards"}}
    assert JobRecord.from_dict(older).spec.batch_shards == ()  # records written before the field


def test_backends_without_indexed_jobs_refuse_them_saying_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(JMKUsageError, match=r"shards 1, 3 as one Kubernetes Indexed Job.*--backend kubernetes"):
        LocalBackend(JobStore(tmp_path)).check(JobSpec(code="", batch_shards=(1, 3)))
    backend = KubernetesBackend(JobStore(tmp_path), namespace="team-a", image="runner:1", distributed_form="jobs")
    with pytest.raises(JMKUsageError, match=r"distributed_form = 'jobs' runs no Indexed Job.*'auto'"):
        backend.check(spec())
    with pytest.raises(JMKUsageError, match=r"cannot also be a distributed job"):
        backend.check(JobSpec(code="", backend="kubernetes", nodes=2, batch_shards=(0, 1)))


# -- following the Job: recorded objects of a 1.28+ cluster ------------------------------------------


def job(status: dict[str, Any]) -> dict[str, Any]:
    """An Indexed Job of shards 1 and 3 with per-index retries, as the API server returns it."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": NAME, "namespace": "team-a", "uid": "u-1", "labels": {"jmk.io/job-id": "1a2b3c4d"}},
        "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimitPerIndex": 1,
                 "backoffLimit": 2147483647,
                 "template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "train", "resources": {}}]}}},
        "status": status,
    }


def pod(index: int, attempt: int, state: dict[str, Any], phase: str, created: str) -> dict[str, Any]:
    """A pod of that Job: completion index ``index`` (annotation, and label from 1.28), its ``attempt``-th try."""
    return {
        "metadata": {"name": f"{NAME}-{index}-{'abcde'[attempt]}", "namespace": "team-a", "creationTimestamp": created,
                     "labels": {"job-name": NAME, "jmk.io/job-id": "1a2b3c4d", INDEX: str(index)},
                     "annotations": {INDEX: str(index)}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": phase, "containerStatuses": [{"name": "train", "state": state}]},
    }


FAILED_STATE = {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": "2026-12-06T10:00:05Z"}}
DONE_STATE = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2026-12-06T10:00:05Z"}}
RUNNING_STATE = {"running": {"startedAt": "2026-12-06T10:00:05Z"}}
WAITING_STATE = {"waiting": {"reason": "ContainerCreating"}}


class Api:
    class configuration:  # the shape of kubernetes.client.ApiClient's
        host = "https://recorded.invalid"


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[KubernetesBackend, ClusterWatch, JobRecord]]:
    """A backend whose namespace watch holds recorded objects (no API server: nothing is asked)."""
    (tmp_path / "jobs").mkdir()
    store = JobStore(tmp_path / "jobs")
    backend = KubernetesBackend(store, namespace="team-a", image="runner:1")
    backend._api = Api()
    watch = ClusterWatch(backend._api, "team-a", backend.list_objects)
    for event in watch._synced.values():
        event.set()
    ClusterWatch._instances[(Api.configuration.host, "team-a")] = watch
    record = store.create(spec())
    log = store.job_dir(record.job_id) / "output.log"
    log.touch()
    record = store.update(record.job_id, state=JobState.RUNNING, started=1.0, created=1.0, log_path=str(log),
                          backend_ref={"namespace": "team-a", "name": NAME, "uid": "u-1", "batch": "indexed",
                                       "per_index": "true", "shards": "1,3"})
    try:
        yield backend, watch, record
    finally:
        ClusterWatch._instances.pop((Api.configuration.host, "team-a"), None)


def show(watch: ClusterWatch, status: dict[str, Any], pods: list[dict[str, Any]]) -> None:
    with watch.lock:
        watch.jobs = {NAME: job(status)}
        watch.pod_objects = {p["metadata"]["name"]: p for p in pods}


def test_the_failed_indexes_are_named_as_shards(recorded: Any) -> None:
    backend, watch, record = recorded
    pods = [pod(0, 0, DONE_STATE, "Succeeded", "2026-12-06T10:00:00Z"),
            pod(1, 0, FAILED_STATE, "Failed", "2026-12-06T10:00:00Z"),
            pod(1, 1, FAILED_STATE, "Failed", "2026-12-06T10:00:30Z")]
    status = {"failed": 2, "succeeded": 1, "completedIndexes": "0", "failedIndexes": "1",
              "conditions": [{"type": "FailureTarget", "status": "True", "reason": "FailedIndexes",
                              "message": "Job has failed indexes"},
                             {"type": "Failed", "status": "True", "reason": "FailedIndexes",
                              "message": "Job has failed indexes"}]}
    show(watch, status, pods)
    ended = backend.refresh(record)
    assert ended.state is JobState.FAILED
    assert ended.message.startswith(
        "the Indexed Job's shard(s) 3 failed (completion index(es) 1); shard(s) 1 completed; "
        "failed after 2 attempts: the cell's process exited with code 1")


def test_without_failed_indexes_the_failed_condition_says_why(recorded: Any) -> None:
    backend, watch, record = recorded
    status = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                           "message": "Job has reached the specified backoff limit"}]}
    show(watch, status, [pod(0, 0, FAILED_STATE, "Failed", "2026-12-06T10:00:00Z")])
    ended = backend.refresh(record)
    assert ended.message.startswith(
        "the Indexed Job failed: BackoffLimitExceeded: Job has reached the specified backoff limit; failed: the "
        "cell's process exited with code 1")


def test_it_runs_while_any_index_runs_and_succeeds_when_complete(recorded: Any) -> None:
    backend, watch, record = recorded
    backend.store.update(record.job_id, state=JobState.QUEUED, started=None)
    # index 0 runs; index 1's retry (the newest pod) waits for its container
    show(watch, {"active": 2, "failed": 1}, [
        pod(0, 0, RUNNING_STATE, "Running", "2026-12-06T10:00:00Z"),
        pod(1, 0, FAILED_STATE, "Failed", "2026-12-06T10:00:00Z"),
        pod(1, 1, WAITING_STATE, "Pending", "2026-12-06T10:00:30Z")])
    running = backend.refresh(backend.store.load(record.job_id))
    assert running.state is JobState.RUNNING
    assert running.message == "running: 1 pod(s) of the Indexed Job of 2 shard(s)"
    show(watch, {"succeeded": 2, "completedIndexes": "0,1",
                 "conditions": [{"type": "Complete", "status": "True"}]}, [])
    assert backend.refresh(running).state is JobState.SUCCEEDED


def test_status_index_lists_are_read_with_their_ranges() -> None:
    assert parse_indexes("0,2-4,7") == [0, 2, 3, 4, 7]
    assert parse_indexes("") == parse_indexes(None) == []
    assert batch_failure(job({"conditions": [{"type": "Complete", "status": "True"}]}), (1, 3)) == ""


# -- the log: every pod's lines, each pod under a header naming its index and shard ------------------


class Response:
    """A finished pod log as the API returns it (``timestamps=True``)."""

    def __init__(self, lines: list[str]) -> None:
        self.body = "".join(f"{line}\n" for line in lines).encode()

    def stream(self, amt: object = None, decode_content: bool = False) -> Iterator[bytes]:
        yield self.body

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


class RecordedLogs(KubernetesBackend):
    """The recorded backend, with each pod's recorded log for ``read_pod_log``."""

    logs: dict[str, list[str]]

    def read_pod_log(self, pod: str, namespace: str, **options: Any) -> Any:
        return Response(self.logs[pod])


def test_the_pump_copies_every_pod_each_under_its_index_and_shard(recorded: Any) -> None:
    backend, watch, record = recorded
    backend.__class__ = RecordedLogs
    first, failed, retry = (pod(0, 0, DONE_STATE, "Succeeded", "2026-12-06T10:00:00Z"),
                            pod(1, 0, FAILED_STATE, "Failed", "2026-12-06T10:00:01Z"),
                            pod(1, 1, DONE_STATE, "Succeeded", "2026-12-06T10:00:30Z"))
    no_index = pod(0, 2, DONE_STATE, "Succeeded", "2026-12-06T10:00:40Z")
    del no_index["metadata"]["annotations"][INDEX], no_index["metadata"]["labels"][INDEX]
    backend.logs = {  # type: ignore[attr-defined]
        first["metadata"]["name"]: ["2026-12-06T10:00:06.1Z shard 1: done", "2026-12-06T10:00:07Z bye"],
        failed["metadata"]["name"]: ["2026-12-06T10:00:06.2Z Traceback", "2026-12-06T10:00:06.3Z OSError: gone"],
        retry["metadata"]["name"]: ["2026-12-06T10:00:35Z shard 3: done"],
        no_index["metadata"]["name"]: ["2026-12-06T10:00:45Z JMKUsageError: no JOB_COMPLETION_INDEX"],
    }
    show(watch, {"active": 0}, [first, failed, retry, no_index])
    pump = LogPump(backend, record)
    pump.catch_up()
    assert Path(str(record.log_path)).read_text().splitlines() == [
        f"[jmk] pod {NAME}-0-a: completion index 0, shard 1",
        "[shard 1] shard 1: done",
        "[shard 1] bye",
        f"[jmk] pod {NAME}-1-a: completion index 1, shard 3",
        "[shard 3] Traceback",
        "[shard 3] OSError: gone",
        f"[jmk] pod {NAME}-1-b: completion index 1, shard 3",
        "[shard 3] shard 3: done",
        f"[jmk] pod {NAME}-0-c: no completion index (the cluster dropped the Job's completionMode)",
        f"[pod {NAME}-0-c] JMKUsageError: no JOB_COMPLETION_INDEX",
    ]
    pump.catch_up()  # asked again: nothing twice
    assert len(Path(str(record.log_path)).read_text().splitlines()) == 10


# -- the service's bookkeeping: the markers the worker writes ---------------------------------------


def test_each_shard_of_the_indexed_job_is_told_by_its_marker_and_the_rest_fail_with_the_jobs_message(
    state_dir: Path, tmp_path: Path, batch_model: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from jupyter_mlflow_k8s.batch.worker import run_indexed_shard

    parts = frames()
    out = tmp_path / "out"
    request = BatchRequest.parse(batch_model, write_local(tmp_path / "in", "csv", parts), str(out), shards=3)
    batch = service(state_dir)
    plan = batch.plan(request, say=print)
    report = BatchReport(plan.output, plan.plan_id, plan.model,
                         [{"shard": i, "state": "pending", "attempts": 0} for i in range(3)], form="indexed")
    report.shards[0].update(state="skipped", rows=1)  # finished by an earlier run: not in this Job
    for shard in (1, 2):
        report.shards[shard].update(state="running", job_id="1a2b3c4d", attempts=1)
    record = JobRecord(job_id="1a2b3c4d", spec=spec((1, 2)), state=JobState.RUNNING)
    said: list[str] = []
    assert not batch.follow_indexed(plan, report, record, {}, said.append)
    assert [s["state"] for s in report.shards] == ["skipped", "running", "running"] and said == []

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")  # the pod of index 1 runs shard 2
    monkeypatch.setenv("JMK_BATCH_SHARDS", "1,2")
    marker = run_indexed_shard(str(out))
    assert marker["shard"] == 2
    assert not batch.follow_indexed(plan, report, record, {}, said.append)
    assert [s["state"] for s in report.shards] == ["skipped", "running", "succeeded"]
    assert report.shards[2]["rows"] == sum(len(parts[i]) for i in plan.shards[2]) and len(said) == 1
    assert not batch.follow_indexed(plan, report, record, {}, said.append)
    assert len(said) == 1, "a shard is said once"

    record.state, record.message = JobState.FAILED, "the Indexed Job's shard(s) 1 failed (completion index(es) 0)"
    assert batch.follow_indexed(plan, report, record, {}, said.append)
    assert [s["state"] for s in report.shards] == ["skipped", "failed", "succeeded"]
    assert report.shards[1]["message"] == record.message
    assert said[-1] == f"shard 1: failed: {record.message}"

    report.shards[1].update(state="running", job_id="1a2b3c4d")  # a Job that succeeded without shard 1's marker
    record.state = JobState.SUCCEEDED
    assert batch.follow_indexed(plan, report, record, {}, said.append)
    assert report.shards[1]["message"] == "job 1a2b3c4d ended without this shard's success marker"

    monkeypatch.delenv("JOB_COMPLETION_INDEX")  # a cluster that dropped completionMode: the worker says so
    with pytest.raises(JMKUsageError, match=r"no JOB_COMPLETION_INDEX.*dropped the Job's completionMode.*'auto'"):
        run_indexed_shard(str(out))
