"""``%%train --backend kubernetes`` on the test cluster: real API server, scheduler, Job controller, and a
real node running each job in a container of the runner image built from docker/runner/Dockerfile.

As on a user's cluster, pods share no filesystem with the notebook (``pods_share_filesystem = False``):
the payload travels in a Secret (or S3), results come back through the pod log (or S3), and MLflow is a
tracking server the pods reach over the pod network. Where no real node can run, the node agent runs the
same tests with pods as local processes, and the tests of its fault hooks stand in for the real faults."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from helpers import stop_jobs, wait_for
from IPython.core.error import UsageError
from k8s_fixtures import KubeTarget, pod_processes
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.backends.kubernetes import ClusterWatch

pytestmark = pytest.mark.k8s


@pytest.fixture
def k8s_shell(shell: Any, state_dir: Path, k8s_cluster: KubeTarget, k8s_namespace: str, k8s_mlflow_server: str,
              monkeypatch: pytest.MonkeyPatch) -> Any:
    """The IPython shell with the Kubernetes backend pointed at this test's namespace, the runner image and a
    tracking server that pods reach."""
    config = shell.config.KubernetesBackend
    config.kubeconfig = str(k8s_cluster.kubeconfig)
    config.namespace = k8s_namespace
    config.image = k8s_cluster.pod_image
    config.pods_share_filesystem = False
    config.image_pull_failure_seconds = 3.0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", k8s_mlflow_server)
    shell.__dict__.pop("_jmk_service", None)
    yield shell
    stop_jobs(state_dir, shell.config)  # while the configuration still names the cluster
    for key in ("kubeconfig", "namespace", "image", "pods_share_filesystem", "image_pull_failure_seconds",
                "api_patience_seconds"):
        config.pop(key, None)
    shell.__dict__.pop("_jmk_service", None)
    ClusterWatch.stop_all()


def service(shell: Any) -> Any:
    from jupyter_mlflow_k8s.magics.common import service_for

    return service_for(shell)


def only_record(shell: Any) -> Any:
    (record,) = service(shell).list()
    return record


def test_cell_runs_as_a_job_and_returns_its_values(k8s_shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    k8s_shell.user_ns["scale"] = 3
    k8s_shell.run_cell_magic("train", "--backend kubernetes --cpu 1 --memory 512Mi",
                             "import os\nprint('hello from', os.environ['HOSTNAME'])\nvalues = [scale * i for i in range(4)]")

    assert k8s_shell.user_ns["values"] == [0, 3, 6, 9]
    record = only_record(k8s_shell)
    out = capsys.readouterr().out
    assert f"hello from {record.backend_ref['name']}" in out
    assert record.state.value == "succeeded" and record.exit_code == 0
    assert MlflowClient(record.tracking_uri).get_run(record.run_id).info.status == "FINISHED"
    assert "hello from" in Path(record.log_path).read_text()


def test_log_lines_reach_the_cell_while_the_job_runs(k8s_shell: Any) -> None:
    svc = service(k8s_shell)
    k8s_shell.run_cell_magic("train", "--backend kubernetes --async",
                             "import time\nfor i in range(5):\n    print('tick', i, flush=True)\n    time.sleep(0.6)")
    record = only_record(k8s_shell)
    arrivals: list[tuple[float, str]] = []
    for item in svc.follow(record.job_id):
        if isinstance(item, bytes) and item:
            arrivals.append((time.monotonic(), item.decode()))
        elif not isinstance(item, bytes):
            finished = time.monotonic()
            break
    text = "".join(t for _, t in arrivals)
    assert [line for line in text.splitlines() if line.startswith("tick")] == [f"tick {i}" for i in range(5)]
    assert arrivals[0][0] < finished - 1.5, "the first line came while the job still ran"


def test_gpu_request_beyond_the_cluster_warns_and_says_why_it_waits(
    k8s_shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    k8s_shell.run_cell_magic("train", "--backend kubernetes --gpus 4 --async", "x = 1")
    record = only_record(k8s_shell)
    svc = service(k8s_shell)
    reason = wait_for(lambda: "Insufficient nvidia.com/gpu" in (r := svc.get(record.job_id)).message and r, timeout=10)
    assert time.monotonic() - started < 10
    assert reason.state.value == "queued"
    assert "The cluster's nodes have at most 2 nvidia.com/gpu each." in reason.message
    assert "No node of the cluster has 4 nvidia.com/gpu (the most on one node: 2)" in capsys.readouterr().err
    svc.cancel_and_wait(record.job_id)


def test_oom_killed_job_says_so_with_its_limit(k8s_shell: Any) -> None:
    grow = "import time\nblocks = []\nwhile True:\n    blocks.append(bytearray(20 * 2**20))\n    time.sleep(0.05)"
    with pytest.raises(Exception) as failure:
        k8s_shell.run_cell_magic("train", "--backend kubernetes --memory 150Mi", grow)
    record = only_record(k8s_shell)
    assert "OOMKilled: the job used more than its memory limit (150Mi)" in str(failure.value)
    assert record.state.value == "failed"
    assert MlflowClient(record.tracking_uri).get_run(record.run_id).info.status == "FAILED"


def test_failing_cell_reports_its_exception_and_last_log_lines(k8s_shell: Any) -> None:
    with pytest.raises(Exception) as failure:
        k8s_shell.run_cell_magic("train", "--backend kubernetes", "print('loading data')\nraise ValueError('bad batch')")
    assert "ValueError: bad batch" in str(failure.value)
    record = only_record(k8s_shell)
    assert record.state.value == "failed" and record.exit_code == 1


def test_image_pull_failure_fails_the_job_within_seconds(k8s_shell: Any, k8s_cluster: KubeTarget) -> None:
    # On the real node: the registry answers and has no such tag. Under the node agent: its hook (.invalid).
    missing = (k8s_cluster.pod_image.rsplit(":", 1)[0] + ":no-such-tag" if k8s_cluster.real_node
               else "registry.example.invalid/team/runner:1")
    with pytest.raises(Exception) as failure:
        k8s_shell.run_cell_magic("train", f"--backend kubernetes --image {missing}", "x = 1")
    assert "the image could not be pulled" in str(failure.value)
    record = only_record(k8s_shell)
    assert record.state.value == "failed"
    assert MlflowClient(record.tracking_uri).get_run(record.run_id).info.status == "FAILED"


def test_eviction_is_reported(k8s_shell: Any, k8s_api: Any, k8s_namespace: str, k8s_cluster: KubeTarget) -> None:
    svc = service(k8s_shell)
    k8s_shell.run_cell_magic("train", "--backend kubernetes --async", "import time\nprint('up', flush=True)\n"
                             "time.sleep(600)")
    record = only_record(k8s_shell)
    core = kubernetes.client.CoreV1Api(k8s_api)
    pod = wait_for(lambda: [p for p in core.list_namespaced_pod(k8s_namespace).items if p.status.phase == "Running"])[0]
    if k8s_cluster.real_node:  # the Eviction API, as `kubectl drain` uses it
        core.create_namespaced_pod_eviction(pod.metadata.name, k8s_namespace, {
            "apiVersion": "policy/v1beta1", "kind": "Eviction",
            "metadata": {"name": pod.metadata.name, "namespace": k8s_namespace}})
        expected = f"stopped: pod {pod.metadata.name} was deleted while the job ran (evicted through the Eviction API"
    else:  # the node agent's stand-in for the kubelet's own (node-pressure) eviction
        core.patch_namespaced_pod(pod.metadata.name, k8s_namespace,
                                  {"metadata": {"annotations": {"node-agent.jmk.io/inject": "Evicted"}}})
        expected = "evicted: The node was low on resource: memory"
    ended = wait_for(lambda: (r := svc.get(record.job_id)).tracking_final and r, timeout=90, interval=0.2)
    assert ended.state.value == "failed" and ended.message.startswith(expected), ended.message
    assert MlflowClient(ended.tracking_uri).get_run(ended.run_id).info.status == "FAILED"


def test_preemption_is_reported(k8s_shell: Any, k8s_api: Any, k8s_namespace: str, real_node: KubeTarget) -> None:
    """The job holds both GPUs of the node; a pod of a higher PriorityClass needs them: the scheduler preempts."""
    svc = service(k8s_shell)
    scheduling = kubernetes.client.SchedulingV1Api(k8s_api)
    core = kubernetes.client.CoreV1Api(k8s_api)
    urgent = f"{k8s_namespace}-urgent"
    scheduling.create_priority_class({"metadata": {"name": urgent}, "value": 100000})
    try:
        k8s_shell.run_cell_magic("train", "--backend kubernetes --gpus 2 --async", "import time\ntime.sleep(600)")
        record = only_record(k8s_shell)
        wait_for(lambda: svc.get(record.job_id).state.value == "running", timeout=60)
        core.create_namespaced_pod(k8s_namespace, {"metadata": {"name": "urgent"}, "spec": {
            "restartPolicy": "Never", "priorityClassName": urgent, "containers": [{
                "name": "main", "image": real_node.pod_image, "command": ["python", "-c", "print('ran')"],
                "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}})
        ended = wait_for(lambda: (r := svc.get(record.job_id)).tracking_final and r, timeout=90, interval=0.2)
    finally:
        scheduling.delete_priority_class(urgent)
    assert ended.state.value == "failed"
    assert ended.message.startswith("preempted: the scheduler stopped it for a higher-priority pod (Preempted by "
                                    f"{k8s_namespace}/urgent"), ended.message
    assert MlflowClient(ended.tracking_uri).get_run(ended.run_id).info.status == "FAILED"


def test_the_job_runs_in_the_runner_image(k8s_shell: Any, real_node: KubeTarget) -> None:
    """Not the host checkout: the image's OS, its non-root user, its venv and the package installed there."""
    import jupyter_mlflow_k8s

    k8s_shell.run_cell_magic("train", "--backend kubernetes", "import os, sys, pathlib, jupyter_mlflow_k8s as j\n"
                             "os_release = pathlib.Path('/etc/os-release').read_text()\nprint(os_release)\n"
                             "uid, home = os.getuid(), os.environ['HOME']\nprint('uid', uid, 'home', home)\n"
                             "python, package = sys.executable, j.__file__\nprint(python, package)\n"
                             "pathlib.Path(home, 'cache-check').write_text('writable')\n"
                             "writable_tmp = os.access('/tmp', os.W_OK)")
    ns = k8s_shell.user_ns
    assert 'VERSION_CODENAME=bookworm' in ns["os_release"]
    assert (ns["uid"], ns["home"], ns["writable_tmp"]) == (1000, "/home/jovyan", True)
    assert ns["python"].startswith("/opt/venv/") and ns["package"].startswith("/opt/venv/lib/python3.11/site-packages/")
    assert not ns["package"].startswith(str(Path(jupyter_mlflow_k8s.__file__).parent))


def test_cancel_deletes_the_job_and_stops_the_process(k8s_shell: Any, k8s_api: Any, k8s_namespace: str) -> None:
    svc = service(k8s_shell)
    k8s_shell.run_cell_magic("train", "--backend kubernetes --async", "import time\nprint('up', flush=True)\ntime.sleep(600)")
    record = only_record(k8s_shell)
    wait_for(lambda: svc.get(record.job_id).state.value == "running", timeout=30)
    assert wait_for(lambda: pod_processes(f"{k8s_namespace}/"))

    k8s_shell.run_line_magic("job", f"cancel {record.job_id}")

    batch = kubernetes.client.BatchV1Api(k8s_api)
    assert batch.list_namespaced_job(k8s_namespace).items == []
    wait_for(lambda: not pod_processes(f"{k8s_namespace}/"), timeout=40)
    ended = svc.get(record.job_id)
    assert ended.state.value == "cancelled"
    assert MlflowClient(ended.tracking_uri).get_run(ended.run_id).info.status == "KILLED"


def test_reattach_after_a_kernel_restart(k8s_shell: Any) -> None:
    k8s_shell.run_cell_magic("train", "--backend kubernetes --async",
                             "import time\ntime.sleep(2)\nanswer = 42")
    record = only_record(k8s_shell)
    # A new kernel: a new service and no watch of ours left.
    k8s_shell.__dict__.pop("_jmk_service", None)
    ClusterWatch.stop_all()
    k8s_shell.user_ns.pop("answer", None)

    k8s_shell.run_line_magic("job", f"attach {record.job_id}")

    assert k8s_shell.user_ns["answer"] == 42


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--secret 'My Creds'", "--secret"),
        ("--volume data:/x", "--volume"),
        ("--image 'my image:1'", "image"),
        ("--gpus -1", "--gpus"),
        ("--preset nope", "preset"),
        ("--retries many", "--retries"),
    ],
)
def test_bad_input_is_refused_before_any_api_call(k8s_shell: Any, flags: str, message: str) -> None:
    before = ClusterWatch._instances.copy()
    with pytest.raises(UsageError, match=message):
        k8s_shell.run_cell_magic("train", f"--backend kubernetes {flags}", "x = 1")
    assert service(k8s_shell).list() == []
    assert ClusterWatch._instances == before


def test_api_server_restart_loses_neither_the_job_nor_log_lines(k8s_shell: Any, k8s_cluster: KubeTarget) -> None:
    svc = service(k8s_shell)
    cell = "import time\nfor i in range(16):\n    print('line', i, flush=True)\n    time.sleep(0.5)\ndone = True"
    k8s_shell.run_cell_magic("train", "--backend kubernetes --async", cell)
    record = only_record(k8s_shell)
    received = b""
    restarted = False
    for item in svc.follow(record.job_id):
        if not isinstance(item, bytes):
            final = item
            break
        received += item
        if not restarted and b"line 3\n" in received:
            restarted = True
            k8s_cluster.cluster.restart_apiserver(down_for=2)

    assert restarted
    assert [line for line in received.decode().splitlines() if line.startswith("line")] == [f"line {i}" for i in range(16)]
    assert final.state.value == "succeeded"
    k8s_shell.run_line_magic("job", f"attach {record.job_id}")
    assert k8s_shell.user_ns["done"] is True


def test_sqlite_tracking_is_refused_unless_pods_share_the_filesystem(
    k8s_shell: Any, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    k8s_shell.__dict__.pop("_jmk_service", None)
    with pytest.raises(UsageError, match=r"Kubernetes pods cannot record into sqlite:.*MLflow server"):
        k8s_shell.run_cell_magic("train", "--backend kubernetes", "x = 1")
    assert service(k8s_shell).list() == []


def test_object_storage_and_tracking_server_as_on_a_real_cluster(
    k8s_shell: Any, k8s_s3_server: Any, k8s_s3_bucket: str, k8s_mlflow_server_s3: Any,
    monkeypatch: pytest.MonkeyPatch, k8s_api: Any, k8s_namespace: str,
) -> None:
    """No shared filesystem: the payload and results go through S3, credentials through the job's Secret."""
    s3_server, s3_bucket, mlflow_server_s3 = k8s_s3_server, k8s_s3_bucket, k8s_mlflow_server_s3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_s3.url)
    monkeypatch.setenv("JMK_STORAGE_URL", f"s3://{s3_bucket}/jmk")
    k8s_shell.__dict__.pop("_jmk_service", None)
    k8s_shell.user_ns["weights"] = list(range(10))

    k8s_shell.run_cell_magic("train", "--backend kubernetes", "total = sum(weights)\nprint('summed')")

    assert k8s_shell.user_ns["total"] == 45
    record = only_record(k8s_shell)
    assert record.payload_uri.startswith(f"s3://{s3_bucket}/jmk/")
    assert MlflowClient(mlflow_server_s3.url).get_run(record.run_id).info.status == "FINISHED"
    secret_value = s3_server.environment()["AWS_SECRET_ACCESS_KEY"]
    job = kubernetes.client.BatchV1Api(k8s_api).read_namespaced_job(record.backend_ref["name"], k8s_namespace,
                                                                     _preload_content=False).data.decode()
    assert secret_value not in job, "credentials never appear in the Job"
    secret = kubernetes.client.CoreV1Api(k8s_api).read_namespaced_secret(f"{record.backend_ref['name']}-env",
                                                                         k8s_namespace)
    assert [(o.kind, o.uid) for o in secret.metadata.owner_references] == [("Job", record.backend_ref["uid"])]
    assert secret_value not in Path(record.log_path).read_text()


def test_without_object_storage_the_payload_goes_in_a_secret_and_results_come_back_in_the_log(
    k8s_shell: Any, k8s_mlflow_server: str, k8s_api: Any, k8s_namespace: str
) -> None:
    mlflow_server = k8s_mlflow_server
    k8s_shell.user_ns["numbers"] = list(range(100))

    k8s_shell.run_cell_magic("train", "--backend kubernetes", "import os\nprint('root', os.environ['JMK_PAYLOAD_ROOT'])\n"
                             "squares = [n * n for n in numbers]\nbig = b'x' * 50000")

    assert k8s_shell.user_ns["squares"][-1] == 99 * 99 and len(k8s_shell.user_ns["big"]) == 50000
    record = only_record(k8s_shell)
    assert record.payload_uri.startswith("file://")
    job = kubernetes.client.BatchV1Api(k8s_api).read_namespaced_job(record.backend_ref["name"], k8s_namespace)
    container = job.spec.template.spec.containers[0]
    assert container.command[-1] == f"/var/run/jmk/payload/jobs/{record.job_id}/payload.json"
    assert [v.secret.secret_name for v in job.spec.template.spec.volumes if v.secret] == [
        f"{record.backend_ref['name']}-payload"]
    log = Path(record.log_path).read_text()
    assert "root /" in log  # the mount path (under the node agent: rewritten to its directory)
    assert "JMK-FRAME" not in log, "frames are taken out of the log"
    assert MlflowClient(mlflow_server).get_run(record.run_id).info.status == "FINISHED"


def test_a_payload_too_big_for_a_secret_asks_for_object_storage(k8s_shell: Any) -> None:
    k8s_shell.user_ns["blob"] = b"x" * (2 * 2**20)
    with pytest.raises(UsageError, match="JMK_STORAGE_URL=s3://"):
        k8s_shell.run_cell_magic("train", "--backend kubernetes", "n = len(blob)")


def test_quickstart_on_kubernetes_matches_the_local_backend(
    state_dir: Path, tmp_path: Path, k8s_cluster: KubeTarget, k8s_namespace: str, k8s_mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quickstart notebook through papermill, once per backend: the same training, the same numbers."""
    import papermill

    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text(f"c.KubernetesBackend.image = {k8s_cluster.pod_image!r}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", k8s_mlflow_server)
    monkeypatch.setenv("IPYTHONDIR", str(profile.parent))
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    monkeypatch.setenv("JMK_K8S_NAMESPACE", k8s_namespace)
    root = Path(__file__).resolve().parent.parent
    outputs = {}
    for backend in ("local", "kubernetes"):
        nb = papermill.execute_notebook(
            str(root / "notebooks" / "quickstart.ipynb"), str(tmp_path / f"{backend}.ipynb"),
            parameters={"epochs": 10, "backend": backend}, kernel_name="python3", cwd=str(root), progress_bar=False,
        )
        outputs[backend] = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))

    def numbers(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(("held-out accuracy", "trained on", "epoch 9 loss"))]

    assert numbers(outputs["kubernetes"]) == numbers(outputs["local"]) != []
    assert "on kubernetes" in outputs["kubernetes"] and "run status FINISHED" in outputs["kubernetes"]


def test_a_new_notebook_pod_finds_the_jobs_by_label(k8s_shell: Any, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """The state directory is gone (a new JupyterHub pod): %jobs and %job attach find the Job by its labels."""
    k8s_shell.run_cell_magic("train", "--backend kubernetes --async", "import time\ntime.sleep(1)\nanswer = 42")
    record = only_record(k8s_shell)
    monkeypatch.setenv("JMK_STATE_DIR", str(tmp_path / "new-pod-state"))
    monkeypatch.setenv("JMK_BACKEND", "kubernetes")
    k8s_shell.__dict__.pop("_jmk_service", None)
    ClusterWatch.stop_all()
    k8s_shell.user_ns.pop("answer", None)

    (found,) = service(k8s_shell).list()
    assert found.job_id == record.job_id and found.run_id == record.run_id
    k8s_shell.run_line_magic("job", f"attach {record.job_id}")

    assert k8s_shell.user_ns["answer"] == 42


def test_timeout_and_exhausted_retries_are_told_apart(k8s_shell: Any) -> None:
    with pytest.raises(Exception) as timed_out:
        k8s_shell.run_cell_magic("train", "--backend kubernetes --timeout 3", "import time\ntime.sleep(120)")
    assert "deadline exceeded: the job ran longer than --timeout" in str(timed_out.value)
    with pytest.raises(Exception) as retried:
        k8s_shell.run_cell_magic("train", "--backend kubernetes --retries 1", "raise ValueError('flaky')")
    assert "ValueError: flaky" in str(retried.value)  # the cell's own error, from its last attempt
    newest, oldest = service(k8s_shell).list()
    assert (oldest.state.value, newest.state.value) == ("failed", "failed")
    assert newest.message.startswith("failed after 2 attempts: the cell's process exited with code 1")


def test_a_silent_api_server_ends_the_wait_not_the_job(k8s_shell: Any, k8s_cluster: KubeTarget) -> None:
    import threading

    k8s_shell.config.KubernetesBackend.api_patience_seconds = 2.0
    k8s_shell.__dict__.pop("_jmk_service", None)
    k8s_shell.run_cell_magic("train", "--backend kubernetes --async", "import time\nprint('up', flush=True)\n"
                             "time.sleep(25)\nanswer = 1")
    record = only_record(k8s_shell)
    wait_for(lambda: service(k8s_shell).get(record.job_id).state.value == "running", timeout=30)
    failed: list[BaseException] = []

    def outage() -> None:
        try:
            k8s_cluster.cluster.restart_apiserver(down_for=8)
        except BaseException as exc:  # said below: a thread's exception would otherwise only be printed
            failed.append(exc)

    thread = threading.Thread(target=outage)
    thread.start()
    try:
        with pytest.raises(Exception, match=r"No answer from the Kubernetes API for \d+ s .*%job attach"):
            k8s_shell.run_line_magic("job", f"attach {record.job_id}")
    finally:
        thread.join()
        assert not failed, f"the API server did not restart: {failed[0]}"
    k8s_shell.config.KubernetesBackend.api_patience_seconds = 300.0
    k8s_shell.__dict__.pop("_jmk_service", None)
    k8s_shell.run_line_magic("job", f"attach {record.job_id}")  # the job ran on meanwhile
    assert k8s_shell.user_ns["answer"] == 1


def test_a_pipeline_step_runs_as_a_kubernetes_job(k8s_shell: Any, tmp_path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from jupyter_mlflow_k8s.pipelines.engine import PipelineEngine
    from jupyter_mlflow_k8s.pipelines.spec import load_pipeline

    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    for name, parameters, code in [
        ("first", "", "from jupyter_mlflow_k8s import output\noutput('x', 20)"),
        ("second", "x = 0", "import os\nfrom jupyter_mlflow_k8s import output\noutput('y', x + 1)\n"
                            "output('host', os.environ.get('HOSTNAME', ''))"),
    ]:
        cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell(code)]
        nbformat.write(new_notebook(cells=cells, metadata=meta), tmp_path / f"{name}.ipynb")
    (tmp_path / "pipeline.yaml").write_text(
        "name: mixed\nsteps:\n  first: {notebook: first.ipynb}\n"
        "  second: {notebook: second.ipynb, needs: [first], backend: kubernetes, "
        "parameters: {x: '{{ steps.first.outputs.x }}'}}\n")
    svc = service(k8s_shell)

    run = PipelineEngine(service=svc).run(load_pipeline(tmp_path / "pipeline.yaml"))

    assert run.state == "succeeded", {s.name: s.reason for s in run.steps.values()}
    second = run.steps["second"]
    assert second.outputs["y"] == 21 and second.outputs["host"].startswith("jmk-")
    records = {r.spec.run_name: r for r in svc.list()}  # every step is in %jobs
    assert records["first"].spec.backend == "pipeline" and records["first"].state.value == "succeeded"
    record = records["second"]  # the Kubernetes step is a job like any other
    assert (record.job_id, record.spec.backend, record.state.value) == (second.job_id, "kubernetes", "succeeded")
    assert MlflowClient(record.tracking_uri).get_run(record.run_id).data.tags["mlflow.parentRunId"] == run.mlflow_run_id
    assert Path(second.executed_notebook).read_text().count("output('y'") == 1
