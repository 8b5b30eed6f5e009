"""``%%train --nodes N`` on Kubernetes: a gang of pods running the cell under torchrun.

Without a cluster: both forms of a gang (one Indexed Job, or one Job per rank) and its headless Service
are valid for Kubernetes 1.27-1.37, their names fit with any user name, the Service selects every pod,
and the diagnosis of a gang from pod objects names the rank at fault, the ranks that wait and success.

On the test cluster's real node (1.20, so one Job per rank; the Indexed form where ``JMK_TEST_KUBECONFIG``
names a newer cluster): DDP on gloo across 2 pods, a rank that raises, a cancel, and a rank left Pending
for GPUs. The pods run the real launcher in the runner image; DNS is the cluster's, the rendezvous
torch's own.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from helpers import wait_for
from k8s_fixtures import KubeTarget, pod_processes
from k8s_manifests import validate_manifest
from mlflow.tracking import MlflowClient
from test_k8s_backend import k8s_shell, only_record, service  # noqa: F401 (k8s_shell is a fixture)

from jupyter_mlflow_k8s.backends.kubernetes import KubernetesBackend, gang_jobs, rank_lines
from jupyter_mlflow_k8s.backends.kubernetes import gang as gang_module
from jupyter_mlflow_k8s.backends.kubernetes.gang import STOPPED_EXIT, diagnose_gang, pod_rank, pods_by_rank
from jupyter_mlflow_k8s.backends.kubernetes.manifests import (
    COMPLETION_INDEX_ANNOTATION,
    GANG_ANNOTATION,
    INDEXED,
    JOB_ID_LABEL,
    JOBS,
    LAUNCHER_MODULE,
    NODE_RANK_LABEL,
    RECORD_ANNOTATION,
    build_gang,
    build_gang_service,
    gang_hosts,
    gang_name,
    indexed_job_probe,
)
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.models import JobRecord, JobSpec, JobState, Resources
from jupyter_mlflow_k8s.records import JobStore

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
USER = "Ada Lovelace"


def gang_record(nodes: int = 2, gpus: int = 0, procs: int = 0, job_id: str = "1a2b3c4d", **spec: Any) -> JobRecord:
    return JobRecord(job_id=job_id, created=1_700_000_000.0, spec=JobSpec(
        code="import torch", backend="kubernetes", nodes=nodes, procs=procs, resources=Resources(gpus=gpus), **spec))


def settings(gpus: int = 0) -> PodSettings:
    return PodSettings(namespace="team-a", image="ghcr.io/example/train:1.2", cpu="2", memory="4Gi", gpus=gpus,
                       labels={"team": "vision"}, annotations={"cost-center": "42"})


def gang(form: str, record: JobRecord | None = None, user: str = USER, **kwargs: Any) -> list[dict[str, Any]]:
    record = record or gang_record()
    return build_gang(record, kwargs.pop("pod_settings", settings()), user=user,
                      payload_url="s3://bucket/jobs/1a2b3c4d/payload.json", form=form, env_secret="env", **kwargs)


# -- manifests, without a cluster --------------------------------------------------------------


@pytest.mark.parametrize("form", [INDEXED, JOBS])
@pytest.mark.parametrize("gpus", [0, 2])
def test_every_object_of_a_gang_is_valid_for_kubernetes_1_27_to_1_37(form: str, gpus: int) -> None:
    record = gang_record(nodes=3, gpus=gpus)
    jobs = gang(form, record, pod_settings=settings(gpus), payload_secret="payload",
                payload_files=["jobs/1a2b3c4d/payload.json"])
    assert len(jobs) == (1 if form == INDEXED else 3)
    service_ = build_gang_service(record, settings(gpus), gang_name(record.job_id, USER, 3), user=USER,
                                  owner={"apiVersion": "batch/v1", "kind": "Job", "name": jobs[0]["metadata"]["name"],
                                         "uid": "0f0e", "blockOwnerDeletion": False})
    for obj in [*jobs, service_, indexed_job_probe(settings(gpus))]:
        validate_manifest(obj)


def test_the_indexed_form_is_one_job_of_n_completions_never_retried() -> None:
    (job,) = gang(INDEXED, gang_record(nodes=4, gpus=2, procs=2, rendezvous_timeout=600.0),
                  pod_settings=settings(2))
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    name = job["metadata"]["name"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed", 4, 4, 0)
    assert pod["subdomain"] == name and "hostname" not in pod  # the Job controller names each pod <name>-<index>
    assert pod["containers"][0]["command"] == [
        "python", "-m", LAUNCHER_MODULE, "s3://bucket/jobs/1a2b3c4d/payload.json", "--nodes", "4", "--procs", "2",
        "--hosts", f"{name}-{{rank}}.{name}.team-a.svc.cluster.local", "--port", "29400",
        "--rendezvous-timeout", "600"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2", "--gpus is per pod"
    annotations = job["metadata"]["annotations"]
    assert json.loads(annotations[RECORD_ANNOTATION])["job_id"] == "1a2b3c4d"
    assert json.loads(annotations[GANG_ANNOTATION]) == {"form": INDEXED, "service": name, "jobs": name, "nodes": "4"}


def test_the_fallback_form_is_one_job_per_rank_with_a_fixed_rank() -> None:
    jobs = gang(JOBS, gang_record(nodes=3), cluster_domain="cluster.example")
    name = gang_name("1a2b3c4d", USER, 3)
    assert [job["metadata"]["name"] for job in jobs] == [f"{name}-0", f"{name}-1", f"{name}-2"]
    for rank, job in enumerate(jobs):
        pod = job["spec"]["template"]["spec"]
        assert "completionMode" not in job["spec"]
        assert (job["spec"]["completions"], job["spec"]["parallelism"], job["spec"]["backoffLimit"]) == (1, 1, 0)
        assert (pod["hostname"], pod["subdomain"]) == (f"{name}-{rank}", name)
        assert job["spec"]["template"]["metadata"]["labels"][NODE_RANK_LABEL] == str(rank)
        command = pod["containers"][0]["command"]
        assert command[-2:] == ["--node-rank", str(rank)]
        assert command[command.index("--hosts") + 1] == f"{name}-{{rank}}.{name}.team-a.svc.cluster.example"
    first, *others = jobs
    assert RECORD_ANNOTATION in first["metadata"]["annotations"]
    assert json.loads(first["metadata"]["annotations"][GANG_ANNOTATION])["jobs"] == ",".join(
        job["metadata"]["name"] for job in jobs)
    assert all(RECORD_ANNOTATION not in job["metadata"]["annotations"] for job in others), (
        "one record per job: a notebook finding the Jobs must not make one per rank")


@pytest.mark.parametrize("nodes", [2, 10, 100])
@pytest.mark.parametrize("user", ["ada", "Ada Lovelace-Byron, Countess of Lovelace " * 5, "日本語のユーザー", "x" * 300])
def test_names_fit_in_63_characters_with_any_user_and_rank(nodes: int, user: str) -> None:
    record = gang_record(nodes=nodes, job_id="0123456789abcdef")
    for form in (INDEXED, JOBS):
        jobs = gang(form, record, user=user)
        name = gang_name(record.job_id, user, nodes)
        assert DNS1035_LABEL.fullmatch(name) and len(name) <= 63, "the Service's name is an RFC 1035 label"
        assert record.job_id in name
        hostnames = [f"{name}-{rank}" for rank in range(nodes)]
        for hostname in hostnames:
            assert DNS1123_LABEL.fullmatch(hostname) and len(hostname) <= 63, hostname
        for job in jobs:
            assert len(job["metadata"]["name"]) <= 63
        host = gang_hosts(name, "team-a", "cluster.local").format(rank=nodes - 1)
        assert host.split(".")[0] == hostnames[-1]


def test_the_service_is_headless_and_selects_every_pod_of_the_gang() -> None:
    record = gang_record(nodes=3)
    name = gang_name(record.job_id, USER, 3)
    service_ = build_gang_service(record, settings(), name, user=USER)
    spec = service_["spec"]
    assert (spec["clusterIP"], spec["publishNotReadyAddresses"]) == ("None", True)
    assert spec["ports"] == [{"name": "rendezvous", "port": 29400, "targetPort": 29400, "protocol": "TCP"}]
    assert spec["selector"] == {JOB_ID_LABEL: record.job_id}
    other = build_gang_service(gang_record(nodes=3, job_id="99999999"), settings(), "jmk-other-99999999", user=USER)
    for form in (INDEXED, JOBS):
        for job in gang(form, record):
            labels = job["spec"]["template"]["metadata"]["labels"]
            assert spec["selector"].items() <= labels.items()
            assert not other["spec"]["selector"].items() <= labels.items(), "no other job's Service selects them"
            assert job["spec"]["template"]["spec"]["subdomain"] == service_["metadata"]["name"]


# -- the diagnosis of a gang, from pod objects ----------------------------------------------------


def pod(rank: int, phase: str, *, exit_code: int | None = None, finished: str = "2026-01-01T08:00:10Z",
        node: str | None = "node-1", indexed: bool = False, unschedulable: str = "", reason: str = "",
        deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"jmk-ada-1a2b3c4d-{rank}-abcde", "creationTimestamp": "2026-12-06T08:00:00Z",
                            "labels": {JOB_ID_LABEL: "1a2b3c4d"}, "annotations": {}}
    if indexed:
        meta["annotations"][COMPLETION_INDEX_ANNOTATION] = str(rank)
    else:
        meta["labels"][NODE_RANK_LABEL] = str(rank)
    if deleting:
        meta["deletionTimestamp"] = "2026-12-06T08:00:20Z"
    state: dict[str, Any] = {"running": {"startedAt": "2026-12-06T08:00:02Z"}} if phase == "Running" else {}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                                "finishedAt": finished}}
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [{"state": state}] if state else []}
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": unschedulable}]
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": status}


def job(name: str = "jmk-ada-1a2b3c4d-0", condition: str = "") -> dict[str, Any]:
    container = {"name": "train", "resources": {"limits": {"memory": "4Gi"}}}
    status = {"conditions": [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}]} if condition \
        else {}
    return {"metadata": {"name": name}, "spec": {"template": {"spec": {"containers": [container]}}}, "status": status}


def judge(pods: list[dict[str, Any]], nodes: int = 2, procs: int = 1, jobs: list[dict[str, Any]] | None = None) -> Any:
    return diagnose_gang(jobs if jobs is not None else [job()], pods, nodes=nodes, procs=procs, pull_grace=30)


def test_the_rank_that_failed_is_blamed_not_the_ranks_it_stopped() -> None:
    # Rank 0 was stopped (143) and its pod even finished first: rank 1's exit code 1 is the job's.
    verdict = judge([pod(0, "Failed", exit_code=STOPPED_EXIT, finished="2026-01-01T08:00:09Z"),
                     pod(1, "Failed", exit_code=1, finished="2026-01-01T08:00:10Z")])
    assert (verdict.state, verdict.exit_code, verdict.ranks, verdict.delete) == (JobState.FAILED, 1, (1,), True)
    assert verdict.message.startswith("rank 1 (pod jmk-ada-1a2b3c4d-1-abcde) failed with exit code 1")
    assert verdict.with_log


def test_a_pod_whose_launcher_could_not_start_keeps_its_own_last_lines() -> None:
    no_torch = pod(0, "Failed", exit_code=2)
    said = "[jmk] torch is not installed where this job runs (No module named 'torch'), ...\n"
    no_torch["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = said
    verdict = judge([no_torch, pod(1, "Running")])
    assert (verdict.exit_code, verdict.pod_tail) == (2, said)


def test_of_two_ranks_failed_in_the_same_second_the_one_the_log_names_first_is_blamed() -> None:
    both = [pod(0, "Failed", exit_code=1), pod(1, "Failed", exit_code=1)]
    assert judge(both).ranks == (0,), "without the log: the lower rank"
    verdict = diagnose_gang([job()], both, nodes=2, procs=1, pull_grace=30, failed_first=1)
    assert (verdict.ranks, verdict.exit_code) == ((1,), 1)


def test_the_rank_whose_error_came_first_is_the_cause_whatever_the_pods_end_times() -> None:
    # Rank 1 raised; rank 0's barrier lost its peer a moment later, and rank 0's launcher, not knowing yet,
    # said its own rank failed; its pod even ended first (rank 1's launcher was still telling the others).
    rank0_log = ("2026-12-06T08:00:05.100000000Z [rank 0] step 3\n"
                 "2026-12-06T08:00:05.912345678Z [rank 0] Traceback (most recent call last):\n"
                 "2026-12-06T08:00:05.93Z [rank 0] RuntimeError: Connection closed by peer\n"
                 "2026-12-06T08:00:06.01Z [jmk] rank 0 failed with exit code 1\n")
    rank1_log = ("2026-12-06T08:00:05.4Z [rank 1] Traceback (most recent call last):\n"
                 "2026-12-06T08:00:05.41Z [rank 1] RuntimeError: rank 1 found a bad batch\n"
                 "2026-12-06T08:00:06.2Z [jmk] rank 1 failed with exit code 1\n")
    times = {0: gang_module.first_error_time(rank0_log), 1: gang_module.first_error_time(rank1_log)}
    assert times[1] < times[0]
    assert times[0] == pytest.approx(gang_module.first_error_time("x 1\n" + rank0_log.splitlines()[1]))
    both = [pod(0, "Failed", exit_code=1, finished="2026-01-01T08:00:06Z"),
            pod(1, "Failed", exit_code=1, finished="2026-01-01T08:00:07Z")]
    assert judge(both).ranks == (0,), "by the pods' ends alone, rank 0 looks first"
    verdict = diagnose_gang([job()], both, nodes=2, procs=1, pull_grace=30, failed_first=0, error_times=times)
    assert (verdict.ranks, verdict.exit_code) == ((1,), 1)
    assert gang_module.failed_pods([*both, pod(2, "Failed", exit_code=STOPPED_EXIT), pod(3, "Running")]).keys() == {
        0, 1, 2}


def test_a_pod_that_ended_first_waits_a_moment_for_the_rank_that_failed_first() -> None:
    just_now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stopped = pod(0, "Failed", exit_code=STOPPED_EXIT, finished=just_now)
    broken = pod(0, "Failed", exit_code=1, finished=just_now)
    verdict = judge([stopped, pod(1, "Running")])
    assert (verdict.state, verdict.delete) == (JobState.RUNNING, False), "rank 0 was only stopped: rank 1 is the cause"
    verdict = diagnose_gang([job()], [broken, pod(1, "Running")], nodes=2, procs=1, pull_grace=30,
                            error_times={0: 12.5, 1: 12.0})
    assert (verdict.state, verdict.message) == (
        JobState.RUNNING, "rank 1 (pod jmk-ada-1a2b3c4d-1-abcde) failed; waiting for its pod to end")
    verdict = diagnose_gang([job()], [broken, pod(1, "Running")], nodes=2, procs=1, pull_grace=30,
                            error_times={0: 12.0, 1: 12.5})
    assert (verdict.state, verdict.ranks, verdict.delete) == (JobState.FAILED, (0,), True), "rank 0 came first"
    long_ago = pod(0, "Failed", exit_code=STOPPED_EXIT, finished="2026-01-01T00:00:00Z")
    verdict = judge([long_ago, pod(1, "Running")])
    assert (verdict.state, verdict.exit_code) == (JobState.FAILED, STOPPED_EXIT), "the wait is bounded"


def test_a_job_failed_before_its_pod_shows_waits_a_moment_for_the_pods_exit_code() -> None:
    failed = job(condition="Failed")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    failed["status"]["conditions"][0]["lastTransitionTime"] = now
    verdict = judge([pod(0, "Running"), pod(1, "Running")], jobs=[failed])
    assert verdict.state is JobState.RUNNING and not verdict.delete
    failed["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    verdict = judge([pod(0, "Running"), pod(1, "Running")], jobs=[failed])
    assert (verdict.state, verdict.delete) == (JobState.FAILED, True)
    assert verdict.message == "Job jmk-ada-1a2b3c4d-0 failed: BackoffLimitExceeded"


def test_a_failed_rank_while_the_others_run_stops_the_gang() -> None:
    verdict = judge([pod(0, "Running"), pod(1, "Failed", exit_code=2, indexed=True)], jobs=[job()])
    assert (verdict.state, verdict.exit_code, verdict.delete) == (JobState.FAILED, 2, True)
    verdict = judge([pod(0, "Running"), pod(1, "Failed", exit_code=137, reason="OOMKilled")])
    assert verdict.message.startswith("rank 1 (pod jmk-ada-1a2b3c4d-1-abcde) was OOMKilled: it used more than its "
                                      "memory limit (4Gi)")


def test_a_failed_node_of_several_processes_names_its_global_ranks() -> None:
    verdict = judge([pod(0, "Running", indexed=True), pod(1, "Failed", exit_code=1, indexed=True)], procs=4)
    assert verdict.ranks == (4, 5, 6, 7)
    assert verdict.message.startswith("node 1 (pod jmk-ada-1a2b3c4d-1-abcde, ranks 4-7) failed with exit code 1")


def test_ranks_left_pending_are_explained() -> None:
    why = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    verdict = judge([pod(0, "Running"), pod(1, "Pending", node=None, unschedulable=why)])
    assert (verdict.state, verdict.message) == (JobState.RUNNING, f"1 of 2 pods scheduled: {why}")
    verdict = judge([pod(0, "Pending", node=None, unschedulable=why), pod(1, "Pending", node=None, unschedulable=why)])
    assert (verdict.state, verdict.message) == (JobState.QUEUED, f"0 of 2 pods scheduled: {why}")
    verdict = judge([pod(0, "Pending")])
    assert verdict.message == "1 of 2 pods scheduled: waiting for the Job controller to create the pods"


def test_all_ranks_succeeded_is_success_and_all_running_is_running() -> None:
    verdict = judge([pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)])
    assert (verdict.state, verdict.exit_code) == (JobState.SUCCEEDED, 0)
    verdict = judge([pod(0, "Running"), pod(1, "Running")])
    assert verdict.state is JobState.RUNNING
    assert verdict.message == "running on 2 pods (jmk-ada-1a2b3c4d-0-abcde, jmk-ada-1a2b3c4d-1-abcde)"
    verdict = judge([pod(0, "Running"), pod(1, "Succeeded", exit_code=0)])
    assert (verdict.state, verdict.message) == (JobState.RUNNING, "1 of 2 pods running")


def test_a_pod_deleted_under_the_gang_waits_for_its_events_then_fails_the_gang() -> None:
    pods = [pod(0, "Running"), pod(1, "Running", deleting=True)]
    assert judge(pods).needs_events == "jmk-ada-1a2b3c4d-1-abcde"
    preempted = [{"reason": "Preempted", "message": "by team-b/urgent"}]
    verdict = diagnose_gang([job()], pods, nodes=2, procs=1, pull_grace=30, events=preempted)
    assert (verdict.state, verdict.delete) == (JobState.FAILED, True)
    assert verdict.message.startswith("rank 1 (pod jmk-ada-1a2b3c4d-1-abcde): preempted")


def test_pods_are_told_apart_by_rank_label_or_completion_index() -> None:
    assert pod_rank(pod(3, "Running")) == 3 and pod_rank(pod(2, "Running", indexed=True)) == 2
    older, newer = pod(1, "Failed", exit_code=1, deleting=True), pod(1, "Running")
    newer["metadata"]["creationTimestamp"] = "2026-12-06T08:01:00Z"
    assert pods_by_rank([newer, older, pod(0, "Running")]) == {0: pod(0, "Running"), 1: newer}


def test_a_failed_ranks_lines_are_read_from_the_merged_log(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("[rank 0] step 1\n[rank 1] step 1\n[jmk] rank 1 failed with exit code 1\n[rank 1] Traceback\n"
                   "[rank 10] not rank 1\n[rank 0] step 2\n")
    record = gang_record()
    record.log_path = str(log)
    assert rank_lines(record, (1,)) == "[rank 1] step 1\n[rank 1] Traceback"
    assert rank_lines(record, (0, 1), count=2) == "[rank 1] Traceback\n[rank 0] step 2"
    record.backend_ref = {"name": "a-0", "jobs": "a-0,a-1"}
    assert gang_jobs(record) == ["a-0", "a-1"]


def test_retries_are_refused_for_a_gang_before_any_api_call(tmp_path: Path) -> None:
    backend = KubernetesBackend(JobStore(tmp_path), namespace="team-a")
    with pytest.raises(JMKUsageError, match=r"--retries 2 cannot be used with --nodes/--procs on Kubernetes"):
        backend.check(JobSpec(code="x = 1", backend="kubernetes", nodes=2, retries=2))
    backend.distributed_form = "pods"
    with pytest.raises(JMKUsageError, match=r"distributed_form = 'pods' is not one of 'auto', 'indexed', 'jobs'"):
        backend.check(JobSpec(code="x = 1", backend="kubernetes", nodes=2))
    assert backend._api is None, "no client was made"


# -- end to end on the test cluster -------------------------------------------------------------

DDP_CELL = """
import hashlib, time
import mlflow, torch
import torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)  # each rank starts from other weights: DDP must make them rank 0's
model = torch.nn.Linear(4, 1)
ddp = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
x = torch.randn(64, 4)
y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
losses = []
for step in range(40):
    optimizer.zero_grad()
    loss = ((ddp(x) - y) ** 2).mean()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    if rank == 0:
        mlflow.log_metric("loss", loss.item(), step=step)
checksum = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print("world", dist.get_world_size(), "checksum", checksum, flush=True)
dist.destroy_process_group()
"""


def gang_pods(core: Any, namespace: str, record: Any) -> list[Any]:
    return core.list_namespaced_pod(namespace, label_selector=f"{JOB_ID_LABEL}={record.job_id}").items


def nothing_left(k8s_api: Any, namespace: str, record: Any) -> bool:
    """Whether every Job, pod and the Service of the gang are gone (what is left is printed)."""
    core, batch = kubernetes.client.CoreV1Api(k8s_api), kubernetes.client.BatchV1Api(k8s_api)
    selector = f"{JOB_ID_LABEL}={record.job_id}"
    left = [f"{kind} {item.metadata.name} ({getattr(item.status, 'phase', '') or ''})"
            for kind, items in (("Job", batch.list_namespaced_job(namespace, label_selector=selector).items),
                                ("pod", core.list_namespaced_pod(namespace, label_selector=selector).items),
                                ("Service", core.list_namespaced_service(namespace, label_selector=selector).items))
            for item in items]
    if left:
        print("left:", ", ".join(left))
    return not left


def expected_form(k8s_cluster: KubeTarget) -> str:
    return JOBS if k8s_cluster.local else INDEXED  # the test cluster is 1.20; a given one is newer


@pytest.mark.k8s
def test_ddp_on_two_pods_trains_one_model_into_one_run(k8s_shell: Any, k8s_cluster: KubeTarget,  # noqa: F811
                                                        k8s_api: Any, k8s_namespace: str) -> None:
    started = time.monotonic()
    k8s_shell.run_cell_magic("train", "--backend kubernetes --nodes 2 --cpu 1 --memory 1Gi --experiment gang-ddp",
                             DDP_CELL)
    print(f"--nodes 2 DDP job: {time.monotonic() - started:.1f} s from submission to results")

    record = only_record(k8s_shell)
    assert record.state is JobState.SUCCEEDED and record.exit_code == 0
    assert record.backend_ref["form"] == expected_form(k8s_cluster)
    losses = k8s_shell.user_ns["losses"]
    assert losses[-1] < losses[0] / 10, "the loss goes down"
    log = Path(record.log_path).read_text()
    sums = dict(re.findall(r"^\[rank (\d)\] world 2 checksum ([0-9a-f]{64})$", log, re.MULTILINE))
    assert sums.keys() == {"0", "1"}, log[-3000:]
    assert sums["0"] == sums["1"] == k8s_shell.user_ns["checksum"], "the weights are the same on both ranks"
    client = MlflowClient(record.tracking_uri)
    (run,) = client.search_runs([record.experiment_id])
    assert run.info.run_id == record.run_id and run.info.status == "FINISHED"
    assert {k: run.data.params[k] for k in ("jmk.nodes", "jmk.world_size")} == {"jmk.nodes": "2", "jmk.world_size": "2"}
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 40, "rank 0 logs each step once"
    wait_for(lambda: not pod_processes(f"{k8s_namespace}/") if k8s_cluster.local else True, timeout=30)


@pytest.mark.k8s
def test_a_rank_that_raises_stops_every_rank_and_fails_the_job_with_its_traceback(
    k8s_shell: Any, k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str  # noqa: F811
) -> None:
    cell = ("import time\nimport torch.distributed as dist\ndist.init_process_group('gloo')\n"
            "if dist.get_rank() == 1:\n    print('raising at', time.time(), flush=True)\n"
            "    raise RuntimeError('rank 1 found a bad batch')\n"
            "dist.barrier()  # rank 0 waits for rank 1 in a collective, as in training\n")
    with pytest.raises(Exception) as failure:
        k8s_shell.run_cell_magic("train", "--backend kubernetes --nodes 2 --cpu 1 --memory 1Gi", cell)

    record = only_record(k8s_shell)
    raised_at = float(re.search(r"^\[rank 1\] raising at ([0-9.]+)$", Path(record.log_path).read_text(),
                                re.MULTILINE)[1])  # type: ignore[index]
    print(f"rank 1 raised; the job was FAILED {record.finished - raised_at:.1f} s later")
    assert (record.state, record.exit_code) == (JobState.FAILED, 1), record.message
    assert "RuntimeError: rank 1 found a bad batch" in str(failure.value)
    assert re.match(r"rank 1 \(pod \S+-1-\w+\) failed with exit code 1", record.message), record.message
    assert "[rank 1] RuntimeError: rank 1 found a bad batch" in record.message, "the message shows rank 1's lines"
    core = kubernetes.client.CoreV1Api(k8s_api)
    wait_for(lambda: nothing_left(k8s_api, k8s_namespace, record), timeout=120, interval=0.2)
    assert not gang_pods(core, k8s_namespace, record), "rank 0's pod was stopped with the gang"
    if k8s_cluster.local:
        wait_for(lambda: not pod_processes(f"{k8s_namespace}/"), timeout=30)


@pytest.mark.k8s
def test_cancel_stops_every_rank(k8s_shell: Any, k8s_cluster: KubeTarget, k8s_api: Any,  # noqa: F811
                                 k8s_namespace: str) -> None:
    svc = service(k8s_shell)
    cell = ("import time\nimport torch.distributed as dist\ndist.init_process_group('gloo')\n"
            "print('joined', flush=True)\ntime.sleep(600)")
    k8s_shell.run_cell_magic("train", "--backend kubernetes --nodes 2 --cpu 1 --memory 1Gi --async", cell)
    record = only_record(k8s_shell)
    running = wait_for(lambda: (r := svc.get(record.job_id)).message.startswith("running on 2 pods") and r,
                       timeout=120, interval=0.2)
    if k8s_cluster.local:
        assert wait_for(lambda: len({p.pid for p in pod_processes(f"{k8s_namespace}/")}) >= 2)

    ended = svc.cancel_and_wait(running.job_id)

    assert ended.state is JobState.CANCELLED
    wait_for(lambda: nothing_left(k8s_api, k8s_namespace, record), timeout=120, interval=0.2)
    if k8s_cluster.local:
        wait_for(lambda: not pod_processes(f"{k8s_namespace}/"), timeout=30)


@pytest.mark.k8s
def test_a_ranks_job_deleted_by_hand_ends_the_whole_gang(k8s_shell: Any, k8s_cluster: KubeTarget,  # noqa: F811
                                                         k8s_api: Any, k8s_namespace: str) -> None:
    svc = service(k8s_shell)
    cell = "import time\nimport torch.distributed as dist\ndist.init_process_group('gloo')\ntime.sleep(600)"
    k8s_shell.run_cell_magic("train", "--backend kubernetes --nodes 2 --cpu 1 --memory 1Gi --async", cell)
    record = only_record(k8s_shell)
    wait_for(lambda: svc.get(record.job_id).message.startswith("running on 2 pods"), timeout=120, interval=0.2)

    kubernetes.client.BatchV1Api(k8s_api).delete_namespaced_job(gang_jobs(record)[1], k8s_namespace,
                                                                 propagation_policy="Background")
    deleted = time.monotonic()

    ended = wait_for(lambda: (r := svc.get(record.job_id)).state.terminal and r, timeout=60, interval=0.2)
    print(f"rank 1's Job deleted: the job ended {time.monotonic() - deleted:.1f} s later")
    assert ended.state is JobState.CANCELLED and "the Job is gone from the cluster" in ended.message
    wait_for(lambda: nothing_left(k8s_api, k8s_namespace, record), timeout=120, interval=0.2)
    print(f"rank 1's Job deleted: every pod gone {time.monotonic() - deleted:.1f} s later")
    if k8s_cluster.local:
        wait_for(lambda: not pod_processes(f"{k8s_namespace}/"), timeout=30)


@pytest.mark.k8s
def test_a_rank_pending_for_gpus_is_explained_in_the_cell(k8s_shell: Any, k8s_api: Any,  # noqa: F811
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    svc = service(k8s_shell)
    k8s_shell.run_cell_magic("train", "--backend kubernetes --nodes 2 --gpus 2 --async", "x = 1")
    record = only_record(k8s_shell)
    err = capsys.readouterr().err
    assert ("--nodes 2 asks for 2 pods with 2 nvidia.com/gpu each; only 1 node of the cluster has that many, room "
            "for 1 such pod at once: the job will wait in Pending until the cluster grows.") in err

    waiting = wait_for(lambda: "Insufficient" in (r := svc.get(record.job_id)).message and r, timeout=60,
                       interval=0.2)
    assert waiting.message.startswith("1 of 2 pods scheduled: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu")
    assert waiting.state in (JobState.QUEUED, JobState.RUNNING)
    ended = svc.cancel_and_wait(record.job_id)
    assert ended.state is JobState.CANCELLED
    wait_for(lambda: nothing_left(k8s_api, record.backend_ref["namespace"], record), timeout=60, interval=0.2)


@pytest.mark.k8s
def test_a_rank_never_scheduled_fails_the_gang_at_the_rendezvous_timeout(k8s_shell: Any, k8s_api: Any,  # noqa: F811
                                                                          k8s_namespace: str) -> None:
    """Rank 1 never gets a node (real capacity: the node has 2 GPUs, each pod asks for 2): rank 0 does not wait
    forever; after --rendezvous-timeout the job fails with what rank 0's launcher said, and rank 1 is deleted."""
    with pytest.raises(Exception) as failure:
        k8s_shell.run_cell_magic(
            "train", "--backend kubernetes --nodes 2 --gpus 2 --procs 1 --rendezvous-timeout 5s", "x = 1")
    record = only_record(k8s_shell)
    assert (record.state, record.exit_code) == (JobState.FAILED, 2), record.message
    assert re.match(r"rank 0 \(pod \S+-0-\w+\) failed with exit code 2", record.message), record.message
    assert "did not resolve within 5 s" in record.message, "what rank 0's launcher said, from its pod"
    assert "rank 0 (pod" in str(failure.value)
    wait_for(lambda: nothing_left(k8s_api, k8s_namespace, record), timeout=120, interval=0.2)


@pytest.mark.k8s
def test_a_new_notebook_pod_finds_a_gang_as_one_job(k8s_shell: Any, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                     tmp_path: Path) -> None:
    """The state directory is gone (a new JupyterHub pod): %jobs finds the gang once, not once per rank's Job."""
    from jupyter_mlflow_k8s.backends.kubernetes import ClusterWatch

    cell = ("import torch, torch.distributed as dist\ndist.init_process_group('gloo')\n"
            "total = torch.tensor([dist.get_rank() + 1])\ndist.all_reduce(total)\ntotal = int(total)\n"
            "dist.destroy_process_group()")
    k8s_shell.run_cell_magic("train", "--backend kubernetes --nodes 2 --cpu 1 --memory 1Gi --async", cell)
    record = only_record(k8s_shell)
    monkeypatch.setenv("JMK_STATE_DIR", str(tmp_path / "new-pod-state"))
    monkeypatch.setenv("JMK_BACKEND", "kubernetes")
    k8s_shell.__dict__.pop("_jmk_service", None)
    ClusterWatch.stop_all()

    (found,) = service(k8s_shell).list()
    assert found.job_id == record.job_id
    assert {k: found.backend_ref[k] for k in ("form", "service", "jobs", "nodes")} == {
        k: record.backend_ref[k] for k in ("form", "service", "jobs", "nodes")}
    k8s_shell.run_line_magic("job", f"attach {record.job_id}")

    assert k8s_shell.user_ns["total"] == 3, "rank 0's value, summed over both ranks"


@pytest.mark.k8s
def test_the_indexed_form_end_to_end(k8s_shell: Any, k8s_api: Any, k8s_namespace: str,  # noqa: F811
                                     tmp_path: Path) -> None:
    backend = KubernetesBackend(JobStore(tmp_path), kubeconfig=k8s_shell.config.KubernetesBackend.kubeconfig,
                                namespace=k8s_namespace)
    settings_ = backend.configured_settings()
    if backend.probe_indexed_jobs(settings_) != INDEXED:
        version = kubernetes.client.VersionApi(k8s_api).get_code().git_version
        pytest.skip(f"the API server ({version}) drops an Indexed Job's completionMode: this cluster has no Indexed "
                    "Jobs; run with JMK_TEST_KUBECONFIG naming a Kubernetes 1.22+ cluster")
    k8s_shell.config.KubernetesBackend.distributed_form = INDEXED
    try:
        cell = ("import os, torch, torch.distributed as dist\ndist.init_process_group('gloo')\n"
                "total = torch.tensor([dist.get_rank() + 1])\ndist.all_reduce(total)\ntotal = int(total)\n"
                "print('index', os.environ['JOB_COMPLETION_INDEX'], flush=True)\ndist.destroy_process_group()")
        k8s_shell.run_cell_magic("train", "--backend kubernetes --nodes 2 --cpu 1 --memory 1Gi", cell)
    finally:
        k8s_shell.config.KubernetesBackend.pop("distributed_form", None)
    record = only_record(k8s_shell)
    assert record.backend_ref["form"] == INDEXED and k8s_shell.user_ns["total"] == 3
    log = Path(record.log_path).read_text()
    assert "[rank 0] index 0" in log and "[rank 1] index 1" in log
