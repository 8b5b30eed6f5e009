"""Faults of the real node under a followed ``%%train --backend kubernetes`` job (issue 16).

Each fault is injected for real on the test cluster's node while a job prints numbered lines and the test
follows it: the kubelet restarted, containerd restarted, the node NotReady (its kubelet stopped until the
controller manager marks it so, ``NODE_MONITOR_GRACE`` s on the test cluster). The container must run on
(same container, same processes, no restart), the job must end succeeded with its values, and the followed
log must hold every line exactly once and in order; while the node is NotReady the user is told so.

Real node only: the node agent has no kubelet or containerd to restart (its own tests stand in there).
The API server restart is ``test_k8s_backend.py::test_api_server_restart_loses_neither_the_job_nor_log_lines``.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from helpers import wait_for
from k8s_fixtures import KubeTarget, pod_processes
from test_batch_indexed import Response
from test_k8s_backend import k8s_shell, only_record, service  # noqa: F401  (the shell on the test cluster)


@pytest.fixture
def node(real_node: KubeTarget) -> Iterator[Any]:
    """The test cluster's real node, to inject faults into; left with kubelet and containerd running and Ready."""
    if real_node.cluster is None:
        pytest.skip("needs the test cluster's own node (its kubelet and containerd are restarted); "
                    "JMK_TEST_KUBECONFIG names another cluster")
    from cluster.node import RealNode

    control = RealNode(real_node.cluster)
    try:
        yield control
    finally:
        control.ensure_running()


def numbered_lines(count: int, pace: float) -> str:
    """A cell printing ``line 0`` ... ``line {count-1}``, one every ``pace`` s, that then sets ``done``."""
    return f"import time\nfor i in range({count}):\n    print('line', i, flush=True)\n    time.sleep({pace})\ndone = {count}"


def follow_with_fault(shell: Any, record: Any, inject: Callable[[], None]) -> tuple[str, Any]:
    """Follow the job as a cell does; once ``line 3`` has come, inject the fault (the follow waits meanwhile,
    as a busy kernel would). Returns everything followed and the final record."""
    received = b""
    injected = False
    for item in service(shell).follow(record.job_id):
        if not isinstance(item, bytes):
            assert injected, "the job ended before the fault was injected"
            return received.decode(), item
        received += item
        if not injected and b"line 3\n" in received:
            injected = True
            inject()
    raise AssertionError("the follow ended without the final record")


def container(k8s_api: Any, record: Any) -> tuple[str, str, int, set[int]]:
    """The job's pod uid, its container's id and restart count, and the pids of the pod's processes."""
    core = kubernetes.client.CoreV1Api(k8s_api)
    namespace, job = record.backend_ref["namespace"], record.backend_ref["name"]
    (pod,) = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    (status,) = pod.status.container_statuses
    pids = {p.pid for p in pod_processes(f"{namespace}/{pod.metadata.name}")}
    return pod.metadata.uid, status.container_id, status.restart_count, pids


def running_container(k8s_api: Any, record: Any) -> tuple[str, str, int, set[int]]:
    """``container()`` once the container runs (its id is known and its processes are there)."""
    return wait_for(lambda: (found := container(k8s_api, record))[1] and found[3] and found, timeout=30)


def numbered(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("line ")]


def test_log_timestamps_are_ordered_as_times_not_as_strings() -> None:
    """After a reconnect the pump skips lines up to the last one written: by time. The kubelet trims trailing
    zeros from nanoseconds, so ``05.1Z`` (written) sorts after ``05.12Z`` (new) as strings: it would be lost."""
    from jupyter_mlflow_k8s.backends.kubernetes.watch import _stamp_key

    stamps = ["2026-12-06T04:40:05Z", "2026-12-06T04:40:05.000000001Z", "2026-12-06T04:40:05.1Z",
              "2026-12-06T04:40:05.12Z", "2026-12-06T04:40:05.123456789Z", "2026-12-06T04:40:06.01Z"]
    assert sorted(stamps, key=_stamp_key) == stamps
    assert sorted(stamps) != stamps


def test_a_reconnect_answered_late_still_asks_from_the_last_line_written(tmp_path: Path) -> None:
    """A restarting API server answers a reconnect seconds after it was made (the client retries it meanwhile).
    The kubelet counts ``sinceSeconds`` back from when the request reaches it, so a reconnect asking for "the
    last N seconds" loses the lines of the delay; the pump asks from the last line's time (``sinceTime``)."""
    from jupyter_mlflow_k8s.backends.kubernetes import LogPump
    from jupyter_mlflow_k8s.models import JobRecord, JobSpec

    def stamp(moment: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1e9):09d}Z"

    now = time.time()
    lines = [(now - 7.5 + 0.5 * i, f"line {i}") for i in range(16)]  # line 15 printed just now
    late = 5.0  # seconds until the reconnect reaches the kubelet
    asked: dict[str, Any] = {}

    class Node:
        """What the kubelet returns for the request, as it filters by time when the request arrives."""

        requests = 0

        def watch_of(self, record: Any) -> Any:
            return self

        def read_pod_log(self, pod: str, namespace: str, **options: Any) -> Any:
            asked.update(options)
            if "since_seconds" in options:
                since = now + late - options["since_seconds"]
            else:
                since = calendar.timegm(time.strptime(options["since_time"], "%Y-%m-%dT%H:%M:%SZ"))
            return Response([f"{stamp(moment)} {text}" for moment, text in lines if moment >= since])

    log = tmp_path / "output.log"
    log.write_text("".join(f"{text}\n" for _, text in lines[:14]))
    record = JobRecord(job_id="1a2b3c4d", spec=JobSpec(code="", backend="kubernetes"), log_path=str(log),
                       backend_ref={"namespace": "team-a", "name": "jmk-ada-1a2b3c4d"})
    pump = LogPump(Node(), record)  # type: ignore[arg-type]
    pump.position = {"jmk-ada-1a2b3c4d-x": stamp(lines[13][0])}  # line 13 was the last written before the break

    assert pump._copy({"metadata": {"name": "jmk-ada-1a2b3c4d-x"}}, follow=False) == 2
    assert numbered(log.read_text()) == [f"line {i}" for i in range(16)]
    assert asked["since_time"] == stamp(lines[13][0])[:19] + "Z" and "since_seconds" not in asked


def test_only_the_node_controllers_mark_reads_as_a_node_outage() -> None:
    """A pod whose own container is not ready (a failing readiness probe) is not a NotReady node."""
    from jupyter_mlflow_k8s.backends.kubernetes.diagnosis import node_outage

    def pod(ready: str, containers_ready: str) -> dict[str, Any]:
        conditions = [{"type": "Ready", "status": ready, "lastTransitionTime": "2026-12-06T05:00:17Z"},
                      {"type": "ContainersReady", "status": containers_ready}]
        return {"spec": {"nodeName": "gpu-7"}, "status": {"phase": "Running", "conditions": conditions}}

    assert node_outage(pod("False", "True")).startswith("node gpu-7 is NotReady since 05:00:17 UTC: ")
    assert node_outage(pod("False", "False")) == ""
    assert node_outage(pod("True", "True")) == ""


@pytest.mark.k8s
@pytest.mark.parametrize("component", ["kubelet", "containerd"])
def test_a_node_component_restart_loses_no_log_line_and_keeps_the_container(
    k8s_shell: Any, node: Any, k8s_api: Any, component: str  # noqa: F811
) -> None:
    """The kubelet, or containerd (its shims keep the containers), stopped for 3 s while a job prints."""
    k8s_shell.run_cell_magic("train", "--backend kubernetes --async", numbered_lines(48, 0.25))
    record = only_record(k8s_shell)
    seen: dict[str, Any] = {}

    def restart() -> None:
        seen["before"] = running_container(k8s_api, record)
        pid = node.cluster._components[component].pid
        restart_component = getattr(node, f"restart_{component}")
        restart_component(down_for=3, while_down=lambda: seen.update(during=container(k8s_api, record)))
        assert node.cluster._components[component].pid != pid

    text, final = follow_with_fault(k8s_shell, record, restart)

    assert seen["during"] == seen["before"], "the same container runs on, with the same processes"
    assert container(k8s_api, record)[:3] == (*seen["before"][:2], 0), "the same container ran to its end, not restarted"
    assert numbered(text) == [f"line {i}" for i in range(48)]
    assert final.state.value == "succeeded" and final.exit_code == 0
    k8s_shell.run_line_magic("job", f"attach {record.job_id}")
    assert k8s_shell.user_ns["done"] == 48


@pytest.mark.k8s
def test_node_not_ready_is_told_and_the_job_runs_on(k8s_shell: Any, node: Any, k8s_api: Any) -> None:  # noqa: F811
    k8s_shell.run_cell_magic("train", "--backend kubernetes --async", numbered_lines(150, 0.25))
    record = only_record(k8s_shell)
    svc = service(k8s_shell)
    seen: dict[str, Any] = {}

    def node_not_ready() -> None:
        seen["before"] = running_container(k8s_api, record)
        node.make_not_ready()
        assert node.ready_condition()["status"] != "True"
        # Told while it lasts: in the followed log (once), and in the job's record.
        wait_for(lambda: "is NotReady since" in Path(record.log_path).read_text(), timeout=15)
        seen["message"] = wait_for(lambda: "NotReady" in (m := svc.get(record.job_id).message) and m, timeout=15)
        seen["state"] = svc.get(record.job_id).state.value
        seen["during"] = container(k8s_api, record)
        node.start_kubelet()

    text, final = follow_with_fault(k8s_shell, record, node_not_ready)

    assert seen["state"] == "running", "a job on a NotReady node is not failed"
    assert re.fullmatch(rf"running in pod \S+; node {node.cluster.node_name} is NotReady since \d\d:\d\d:\d\d UTC: "
                        r"the job's pod keeps running there, .*", seen["message"]), seen["message"]
    uid, container_id = seen["before"][:2]
    assert seen["during"] == seen["before"], "not evicted, not stopped"
    assert container(k8s_api, record)[:3] == (uid, container_id, 0), "the same container ran to its end"
    told = [line for line in text.splitlines() if line.startswith("[jmk] ")]
    assert len(told) == 2 and "is NotReady since" in told[0], told
    assert told[1] == f"[jmk] node {node.cluster.node_name} answers again: the log goes on"
    assert numbered(text) == [f"line {i}" for i in range(150)]
    assert final.state.value == "succeeded" and final.exit_code == 0 and final.message == "succeeded"
    k8s_shell.run_line_magic("job", f"attach {record.job_id}")
    assert k8s_shell.user_ns["done"] == 150
