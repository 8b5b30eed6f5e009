"""The test cluster itself, through the official Python client: Jobs, logs, scheduling, deletion, faults.

These run against the real API server, controller manager and scheduler (tests/cluster) and its real node:
kubelet, containerd and runc run the pods in containers of the runner image built from
docker/runner/Dockerfile, with pod networking, kube-proxy and cluster DNS. Faults come from the real thing
(the kernel's OOM killer, the registry, the Eviction API, the scheduler). Where no real node can run, pods
run under the node agent and the tests of its injection hooks run instead. With JMK_TEST_KUBECONFIG they run
against that cluster.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from helpers import wait_for
from k8s_fixtures import KubeTarget, pod_processes

pytestmark = pytest.mark.k8s

CLUSTER_SCRIPT = Path(__file__).parent / "cluster" / "cluster"


# In a container python is PID 1, which the kernel gives no default SIGTERM action: without a handler of its
# own it waits out the whole grace period before the SIGKILL.
def job(name: str, code: str, image: str, *, backoff_limit: int = 0, **pod_spec: Any) -> dict[str, Any]:
    """A batch/v1 Job running ``python -u -c code`` once."""
    container = {"name": "main", "image": image, "command": ["python", "-u", "-c", code]}
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": [container], **pod_spec}}},
    }


def pod(name: str, code: str, image: str, **spec: Any) -> dict[str, Any]:
    """A bare pod running ``python -u -c code``; container fields can be overridden through ``container``."""
    container = {"name": "main", "image": image, "command": ["python", "-u", "-c", code],
                 **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **spec.pop("metadata", {})},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": [container], **spec}}


def job_pods(core: Any, namespace: str, name: str) -> list[Any]:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items


def job_condition(batch: Any, namespace: str, name: str) -> Any:
    """The Job's Complete or Failed condition once it has one."""
    conditions = batch.read_namespaced_job_status(name, namespace).status.conditions or []
    return next((c for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"), None)


def running_pod(core: Any, namespace: str, selector: str, timeout: float = 60) -> Any:
    def find() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return next((p for p in pods if p.status.phase == "Running"), None)

    return wait_for(find, timeout=timeout, interval=0.1)


def phase(core: Any, namespace: str, name: str, *wanted: str, timeout: float = 60) -> Any:
    def reached() -> Any:
        current = core.read_namespaced_pod_status(name, namespace)
        return current if current.status.phase in wanted else None

    return wait_for(reached, timeout=timeout, interval=0.1)


def gone(read: Any) -> bool:
    try:
        read()
    except kubernetes.client.ApiException as exc:
        return exc.status == 404
    return False


def test_job_succeeds_and_its_log_streams_while_it_runs(k8s_api: Any, k8s_namespace: str, pod_image: str) -> None:
    core, batch = kubernetes.client.CoreV1Api(k8s_api), kubernetes.client.BatchV1Api(k8s_api)
    code = "import time\nfor i in range(6):\n    print(f'step {i}')\n    time.sleep(0.5)\nprint('done')"
    batch.create_namespaced_job(k8s_namespace, job("stream", code, pod_image))
    running = running_pod(core, k8s_namespace, "job-name=stream")

    response = core.read_namespaced_pod_log(running.metadata.name, k8s_namespace, container="main", follow=True,
                                            _preload_content=False)
    received = b""
    phases_at_arrival = []
    for chunk in response.stream(decode_content=False):
        received += chunk
        phases_at_arrival.append(core.read_namespaced_pod_status(running.metadata.name, k8s_namespace).status.phase)
    response.release_conn()

    assert received.decode().splitlines() == [f"step {i}" for i in range(6)] + ["done"]
    assert phases_at_arrival[0] == "Running", "the first line must arrive while the process still runs"
    condition = wait_for(lambda: job_condition(batch, k8s_namespace, "stream"), timeout=30)
    assert condition.type == "Complete"
    assert batch.read_namespaced_job_status("stream", k8s_namespace).status.succeeded == 1
    finished = core.read_namespaced_pod_status(running.metadata.name, k8s_namespace).status
    terminated = finished.container_statuses[0].state.terminated
    assert (finished.phase, terminated.exit_code, terminated.reason) == ("Succeeded", 0, "Completed")


def test_failing_command_fails_the_job_with_its_exit_code_after_retries(
    k8s_api: Any, k8s_namespace: str, pod_image: str
) -> None:
    core, batch = kubernetes.client.CoreV1Api(k8s_api), kubernetes.client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(
        k8s_namespace, job("fails", "import sys; print('about to fail'); sys.exit(3)", pod_image, backoff_limit=1))

    condition = wait_for(lambda: job_condition(batch, k8s_namespace, "fails"), timeout=90, interval=0.5)
    assert (condition.type, condition.reason) == ("Failed", "BackoffLimitExceeded")
    pods = job_pods(core, k8s_namespace, "fails")
    assert len(pods) == 2, "backoffLimit 1: the Job controller retries once"
    for failed in pods:
        terminated = failed.status.container_statuses[0].state.terminated
        assert (failed.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 3, "Error")
        log = core.read_namespaced_pod_log(failed.metadata.name, k8s_namespace)
        assert log == "about to fail\n"


def test_pod_asking_for_more_gpus_than_exist_stays_pending(k8s_api: Any, k8s_namespace: str, pod_image: str) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)
    greedy = pod("greedy", "print('never runs')", pod_image, container={"resources": {"limits": {"nvidia.com/gpu": "4"}}})
    core.create_namespaced_pod(k8s_namespace, greedy)

    def unschedulable() -> Any:
        conditions = core.read_namespaced_pod_status("greedy", k8s_namespace).status.conditions or []
        return next((c for c in conditions if c.type == "PodScheduled" and c.reason == "Unschedulable"), None)

    condition = wait_for(unschedulable, timeout=30, interval=0.2)
    assert condition.status == "False"
    assert "Insufficient nvidia.com/gpu" in condition.message
    events = core.list_namespaced_event(k8s_namespace, field_selector="involvedObject.name=greedy").items
    assert any(e.reason == "FailedScheduling" and "Insufficient nvidia.com/gpu" in e.message for e in events)
    assert core.read_namespaced_pod_status("greedy", k8s_namespace).status.phase == "Pending"


def test_deleting_a_job_stops_its_process(
    k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str, pod_image: str
) -> None:
    core, batch = kubernetes.client.CoreV1Api(k8s_api), kubernetes.client.BatchV1Api(k8s_api)
    batch.create_namespaced_job(k8s_namespace, job("sleeper", "import time; print('up'); time.sleep(600)", pod_image))
    running = running_pod(core, k8s_namespace, "job-name=sleeper")
    if k8s_cluster.local:
        assert wait_for(lambda: pod_processes(f"{k8s_namespace}/{running.metadata.name}"))

    batch.delete_namespaced_job("sleeper", k8s_namespace, propagation_policy="Background")

    wait_for(lambda: gone(lambda: core.read_namespaced_pod(running.metadata.name, k8s_namespace)), timeout=90)
    if k8s_cluster.local:
        assert not pod_processes(f"{k8s_namespace}/{running.metadata.name}")


def test_namespace_deletion_completes(k8s_api: Any, k8s_cluster: KubeTarget, pod_image: str) -> None:
    core, batch = kubernetes.client.CoreV1Api(k8s_api), kubernetes.client.BatchV1Api(k8s_api)
    namespace = f"t-ns-deletion-{os.getpid()}"
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"a": "1"}})
    batch.create_namespaced_job(namespace, job("busy", "import time; print('up'); time.sleep(600)", pod_image))
    running_pod(core, namespace, "job-name=busy")

    core.delete_namespace(namespace)

    wait_for(lambda: gone(lambda: core.read_namespace(namespace)), timeout=90, interval=0.5)
    if k8s_cluster.local:
        assert not pod_processes(f"{namespace}/")


def test_pod_deletion_sends_sigterm_then_sigkill_after_the_grace_period(
    k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str, pod_image: str
) -> None:
    if not k8s_cluster.local:
        pytest.skip("looks at the pod's processes on this machine")
    core = kubernetes.client.CoreV1Api(k8s_api)
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, lambda *_: print('ignoring SIGTERM'))\nprint('up')\ntime.sleep(600)"
    core.create_namespaced_pod(k8s_namespace, pod("stubborn", stubborn, pod_image))
    phase(core, k8s_namespace, "stubborn", "Running")
    wait_for(lambda: core.read_namespaced_pod_log("stubborn", k8s_namespace) == "up\n", timeout=10)

    started = time.monotonic()
    core.delete_namespaced_pod("stubborn", k8s_namespace, grace_period_seconds=2)
    wait_for(lambda: not pod_processes(f"{k8s_namespace}/stubborn"), timeout=20)
    stopped_after = time.monotonic() - started

    assert stopped_after >= 1.9, "SIGTERM was ignored, so only SIGKILL after the grace period ends it"
    wait_for(lambda: gone(lambda: core.read_namespaced_pod("stubborn", k8s_namespace)), timeout=20)


def test_gpu_pod_sees_its_env_volumes_and_termination_message(
    k8s_cluster: KubeTarget, k8s_api: Any, k8s_namespace: str, pod_image: str
) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": "cfg"}, "data": {"lr": "0.01"}})
    core.create_namespaced_secret(k8s_namespace, {"metadata": {"name": "creds"}, "stringData": {"key": "s3cr3t"}})
    code = (
        "import os, pathlib\n"
        "print(os.environ.get('CUDA_VISIBLE_DEVICES', '-'), os.environ['POD'], os.environ['LR'], os.environ['OUT'])\n"
        "print(pathlib.Path('/etc/cfg/lr').read_text(), pathlib.Path('/secrets/key').read_text())\n"
        "pathlib.Path('/scratch/x').write_text('y')\n"
        "pathlib.Path('/dev/termination-log').write_text('trained: 3 epochs')\n"
    )
    spec = pod("gpu", code, pod_image, container={
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "LR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "lr"}}},
                {"name": "OUT", "value": "/scratch/out"}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "creds", "mountPath": "/secrets"},
                         {"name": "scratch", "mountPath": "/scratch"}]},
        volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "creds", "secret": {"secretName": "creds"}},
                 {"name": "scratch", "emptyDir": {}}])
    core.create_namespaced_pod(k8s_namespace, spec)

    done = phase(core, k8s_namespace, "gpu", "Succeeded", "Failed")
    output = core.read_namespaced_pod_log("gpu", k8s_namespace)
    assert done.status.phase == "Succeeded", output
    first, second = output.splitlines()
    devices, name, lr, out = first.split()
    assert (name, lr) == ("gpu", "0.01")
    if k8s_cluster.real_node:
        # nvidia.com/gpu is an extended resource here (no device plugin): scheduled and admitted, no devices.
        assert (devices, out) == ("-", "/scratch/out")
    else:
        assert devices in ("0", "1")
        assert out.endswith("/volumes/scratch/out"), "mount paths in env values are rewritten to the pod's directory"
    assert second == "0.01 s3cr3t"
    assert done.status.container_statuses[0].state.terminated.message == "trained: 3 epochs"


def test_logs_with_tail_lines_timestamps_and_previous(k8s_api: Any, k8s_namespace: str, pod_image: str) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)
    # The first instance fails; the next prints the same lines and stays up (two dead instances would let the
    # kubelet's container GC remove the older, which `previous` may name: it keeps one per container).
    code = ("import os, pathlib, sys, time\nfor i in range(5):\n    print(f'line {i}')\n"
            "marker = pathlib.Path(os.environ['STATE'], 'ran')\nif not marker.exists():\n"
            "    marker.touch()\n    sys.exit(1)\ntime.sleep(300)")
    core.create_namespaced_pod(k8s_namespace, pod(
        "flaky", code, pod_image, restartPolicy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}],
        container={"env": [{"name": "STATE", "value": "/state"}],
                   "volumeMounts": [{"name": "state", "mountPath": "/state"}]}))

    def restarted() -> Any:
        statuses = core.read_namespaced_pod_status("flaky", k8s_namespace).status.container_statuses or []
        return statuses and statuses[0].restart_count >= 1 and statuses[0].last_state.terminated

    last = wait_for(restarted, timeout=30, interval=0.2)
    assert (last.exit_code, last.reason) == (1, "Error")
    # The current instance prints the same lines (it may not have yet when the restart is reported).
    wait_for(lambda: core.read_namespaced_pod_log("flaky", k8s_namespace, tail_lines=2) == "line 3\nline 4\n")
    stamped = core.read_namespaced_pod_log("flaky", k8s_namespace, timestamps=True, tail_lines=1)
    stamp, text = stamped.rstrip("\n").split(" ", 1)
    assert text == "line 4" and stamp.endswith("Z") and len(stamp) == len("2026-01-01T00:00:00.000000000Z")
    previous = core.read_namespaced_pod_log("flaky", k8s_namespace, previous=True)
    assert previous.splitlines() == [f"line {i}" for i in range(5)]


GROW = "import time\nblocks = []\nprint('up')\nwhile True:\n    blocks.append(bytearray(20 * 2**20))\n    time.sleep(0.05)"


def test_the_kernel_oom_kills_a_container_at_its_memory_limit(
    k8s_api: Any, k8s_namespace: str, pod_image: str
) -> None:
    """No hook: the container's memory cgroup has the limit, the kernel kills it, the runtime says OOMKilled."""
    core = kubernetes.client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("oom", GROW, pod_image, container={
        "resources": {"limits": {"memory": "100Mi"}}}))

    failed = phase(core, k8s_namespace, "oom", "Failed", timeout=60)
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_a_container_sees_its_memory_limit_in_its_cgroup(real_node: KubeTarget, k8s_api: Any, k8s_namespace: str,
                                                         pod_image: str) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)
    code = ("import pathlib\nfor p in ('/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory.max'):\n"
            "    if pathlib.Path(p).exists(): print(pathlib.Path(p).read_text().strip())")
    core.create_namespaced_pod(k8s_namespace, pod("limited", code, pod_image, container={
        "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}}))
    done = phase(core, k8s_namespace, "limited", "Succeeded", "Failed")
    assert core.read_namespaced_pod_log("limited", k8s_namespace).split() == [str(64 * 2**20)], done.status


def test_eviction_through_the_eviction_api_stops_the_pod(real_node: KubeTarget, k8s_api: Any, k8s_namespace: str,
                                                        pod_image: str) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("evictee", "import time; print('up'); time.sleep(600)", pod_image))
    phase(core, k8s_namespace, "evictee", "Running")
    wait_for(lambda: pod_processes(f"{k8s_namespace}/evictee"))

    core.create_namespaced_pod_eviction("evictee", k8s_namespace, {
        "apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": "evictee", "namespace": k8s_namespace},
        "deleteOptions": {"gracePeriodSeconds": 1}})

    wait_for(lambda: gone(lambda: core.read_namespaced_pod("evictee", k8s_namespace)), timeout=30)
    assert wait_for(lambda: not pod_processes(f"{k8s_namespace}/evictee"), timeout=20)


def test_a_missing_image_fails_the_pull_from_the_registry(real_node: KubeTarget, k8s_api: Any, k8s_namespace: str,
                                                          pod_image: str) -> None:
    """The image's registry answers, but has no such tag: ErrImagePull, then ImagePullBackOff."""
    core = kubernetes.client.CoreV1Api(k8s_api)
    missing = pod_image.rsplit(":", 1)[0] + ":no-such-tag"
    core.create_namespaced_pod(k8s_namespace, pod("unpullable", "print('never')", pod_image, container={"image": missing}))

    def waiting_reason() -> Any:
        statuses = core.read_namespaced_pod_status("unpullable", k8s_namespace).status.container_statuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason

    assert wait_for(lambda: waiting_reason() in ("ErrImagePull", "ImagePullBackOff"), timeout=30)
    unpullable = core.read_namespaced_pod_status("unpullable", k8s_namespace)
    assert unpullable.status.phase == "Pending"
    assert "no-such-tag" in unpullable.status.container_statuses[0].state.waiting.message


def test_a_preempted_pod_makes_room_for_a_higher_priority_one(real_node: KubeTarget, k8s_api: Any,
                                                               k8s_namespace: str, pod_image: str) -> None:
    """Real capacity (the node's 2 nvidia.com/gpu) and PriorityClasses: the scheduler preempts the low one."""
    core = kubernetes.client.CoreV1Api(k8s_api)
    scheduling = kubernetes.client.SchedulingV1Api(k8s_api)
    urgent_class = f"{k8s_namespace}-urgent"
    scheduling.create_priority_class({"metadata": {"name": urgent_class}, "value": 100000})
    try:
        gpus = {"resources": {"limits": {"nvidia.com/gpu": "2"}}}
        core.create_namespaced_pod(k8s_namespace, pod("routine", "import time; time.sleep(600)", pod_image, container=gpus))
        phase(core, k8s_namespace, "routine", "Running")
        core.create_namespaced_pod(k8s_namespace, pod("urgent", "print('ran')", pod_image, container=gpus,
                                                      priorityClassName=urgent_class))

        phase(core, k8s_namespace, "urgent", "Succeeded", timeout=90)
        events = core.list_namespaced_event(k8s_namespace, field_selector="involvedObject.name=routine").items
        assert any(e.reason == "Preempted" and "urgent" in e.message for e in events), [e.reason for e in events]
    finally:
        scheduling.delete_priority_class(urgent_class)


@pytest.mark.parametrize("how", ["annotation", "memory-limit"])
def test_node_agent_oom_killed(how: str, node_agent: KubeTarget, k8s_api: Any, k8s_namespace: str,
                               pod_image: str) -> None:
    """Under the node agent (no real node here): its memory watch, and its injection hook."""
    core = kubernetes.client.CoreV1Api(k8s_api)
    if how == "annotation":
        spec = pod("oom", "import time; print('up'); time.sleep(600)", pod_image)
    else:
        spec = pod("oom", GROW, pod_image, container={"resources": {"limits": {"memory": "100Mi"}}})
    core.create_namespaced_pod(k8s_namespace, spec)
    phase(core, k8s_namespace, "oom", "Running")
    if how == "annotation":
        core.patch_namespaced_pod("oom", k8s_namespace, {"metadata": {"annotations": {
            "node-agent.jmk.io/inject": "OOMKilled"}}})

    failed = phase(core, k8s_namespace, "oom", "Failed", timeout=60)
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_node_agent_eviction_and_image_pull_failure(node_agent: KubeTarget, k8s_api: Any, k8s_namespace: str,
                                                    pod_image: str) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(k8s_namespace, pod("evictee", "import time; time.sleep(600)", pod_image))
    bad_image = pod("unpullable", "print('never')", pod_image, container={"image": "registry.example.invalid/team/train:1"})
    core.create_namespaced_pod(k8s_namespace, bad_image)
    phase(core, k8s_namespace, "evictee", "Running")
    core.patch_namespaced_pod("evictee", k8s_namespace, {"metadata": {"annotations": {
        "node-agent.jmk.io/inject": "Evicted"}}})

    evicted = phase(core, k8s_namespace, "evictee", "Failed")
    assert evicted.status.reason == "Evicted"
    assert not pod_processes(f"{k8s_namespace}/evictee")

    def waiting_reason() -> Any:
        statuses = core.read_namespaced_pod_status("unpullable", k8s_namespace).status.container_statuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason

    assert wait_for(lambda: waiting_reason() == "ImagePullBackOff", timeout=20)
    unpullable = core.read_namespaced_pod_status("unpullable", k8s_namespace)
    assert unpullable.status.phase == "Pending"
    assert "registry.example.invalid" in unpullable.status.container_statuses[0].state.waiting.message


def test_cluster_script_up_and_down_leaves_nothing(k8s_cluster: KubeTarget, tmp_path: Path) -> None:
    """``tests/cluster/cluster up`` prints a kubeconfig; ``down`` stops everything, pods included.

    One real node runs per machine and the session's cluster holds it, so this one runs the node agent;
    the session cluster's own teardown checks the real node's (k8s_fixtures: ``Cluster.leftovers``).
    """
    from cluster.control import Cluster

    if not k8s_cluster.local:
        pytest.skip("starts a test cluster of its own")
    state = tmp_path / "cluster"
    if k8s_cluster.real_node:
        refused = subprocess.run([str(CLUSTER_SCRIPT), "up", "--state", str(state), "--node", "real"],
                                 capture_output=True, text=True, timeout=120, check=False)
        assert refused.returncode == 1
        assert "a real-node test cluster already runs from" in refused.stderr and "Traceback" not in refused.stderr
    up = subprocess.run([str(CLUSTER_SCRIPT), "up", "--state", str(state), "--node", "agent"], capture_output=True,
                        text=True, timeout=120, check=False)
    assert up.returncode == 0, up.stderr
    kubeconfig = Path(up.stdout.strip().splitlines()[-1])
    cluster = Cluster(state)
    try:
        assert kubeconfig.is_file()
        core = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))
        core.create_namespaced_pod("default", pod("sleeper", "import time; print('up'); time.sleep(600)", "python"))
        phase(core, "default", "sleeper", "Running")
        assert pod_processes("default/sleeper")
    finally:
        down = subprocess.run([str(CLUSTER_SCRIPT), "down", "--state", str(state)], capture_output=True, text=True,
                              timeout=120, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    assert cluster.leftovers() == []
    assert not pod_processes("default/sleeper")


def test_deployment_becomes_available_through_its_readiness_probe(k8s_api: Any, k8s_namespace: str, pod_image: str) -> None:
    import socket

    with socket.socket() as probe:  # under the node agent pods share the host network: take a free port
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    apps, core = kubernetes.client.AppsV1Api(k8s_api), kubernetes.client.CoreV1Api(k8s_api)
    container = {
        "name": "web", "image": pod_image, "ports": [{"name": "http", "containerPort": port}],
        "command": ["python", "-c", f"import time, http.server as h; time.sleep(1.5); "
                    f"h.HTTPServer(('', {port}), h.SimpleHTTPRequestHandler).serve_forever()"],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    apps.create_namespaced_deployment(k8s_namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}}}})

    pod_running = running_pod(core, k8s_namespace, "app=web")
    assert not pod_running.status.container_statuses[0].ready, "not ready before the server listens"
    wait_for(lambda: apps.read_namespaced_deployment_status("web", k8s_namespace).status.available_replicas == 1,
             timeout=30, interval=0.2)
    ready = core.read_namespaced_pod_status(pod_running.metadata.name, k8s_namespace).status
    assert {c.type: c.status for c in ready.conditions}["Ready"] == "True"
