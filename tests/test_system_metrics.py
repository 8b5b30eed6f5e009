"""MLflow system metrics recorded by a job (local backend here; tests/test_k8s_system_metrics.py in a pod).

Real jobs against a real SQLite store, the system-metrics process against a tracking server that does not
answer, and the cgroup reader on cgroup trees written like the kernel's (v1 and v2).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import wait_for
from mlflow.tracking import MlflowClient
from traitlets import TraitError

from jupyter_mlflow_k8s.config import load_settings
from jupyter_mlflow_k8s.magics.common import service_for
from jupyter_mlflow_k8s.tracking import system_metrics
from jupyter_mlflow_k8s.tracking.cgroup import CgroupFiles, CgroupUsage, find_cgroup

STANDARD = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/system_memory_usage_percentage")  # fmt: skip

# Waits (bounded) until its own run has system metrics: no guess at how long MLflow's import takes.
WAITING_CELL = """
import time, mlflow
client = mlflow.MlflowClient()
run_id = mlflow.active_run().info.run_id
deadline = time.monotonic() + 60
while time.monotonic() < deadline and "system/cpu_utilization_percentage" not in client.get_run(run_id).data.metrics:
    time.sleep(0.2)
"""


def _record(shell: Any) -> Any:
    (record,) = service_for(shell).list()
    return wait_for(lambda: (r := service_for(shell).get(record.job_id)).tracking_final and r)


def _interval(shell: Any, seconds: float) -> None:
    shell.config.JMKSettings.system_metrics_interval = seconds
    shell.__dict__.pop("_jmk_service", None)


@pytest.fixture
def metrics_shell(shell: Any) -> Any:
    """The test shell; its system-metrics interval is reset afterwards."""
    yield shell
    shell.config.JMKSettings.pop("system_metrics_interval", None)
    shell.__dict__.pop("_jmk_service", None)


@pytest.mark.slow
def test_a_local_job_records_cpu_and_memory_under_mlflows_names(metrics_shell: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_NODE_ID", "node-a")  # would rename them system/node-a/...
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "3600")  # the setting wins
    _interval(metrics_shell, 1.0)
    metrics_shell.run_cell_magic("train", "", WAITING_CELL + "time.sleep(1.5)\n")
    record = _record(metrics_shell)
    client = MlflowClient(record.tracking_uri)
    metrics = client.get_run(record.run_id).data.metrics
    assert set(STANDARD) <= set(metrics), sorted(metrics)
    history = client.get_metric_history(record.run_id, "system/system_memory_usage_megabytes")
    assert len(history) >= 2 and all(point.value > 0 for point in history)  # a sample, and the last one at the end
    assert [point.step for point in history] == list(range(len(history)))
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert not any(name.startswith("system/gpu") for name in metrics)  # a job without GPUs shows no GPU
    assert not [name for name in metrics if name.startswith("system/node-a")]


@pytest.mark.slow
def test_a_distributed_job_records_them_once_from_rank_zero(metrics_shell: Any) -> None:
    _interval(metrics_shell, 1.0)
    metrics_shell.run_cell_magic("train", "--procs 2", WAITING_CELL)  # both ranks wait for the run's metrics
    record = _record(metrics_shell)
    history = MlflowClient(record.tracking_uri).get_metric_history(record.run_id, "system/cpu_utilization_percentage")
    assert history and [point.step for point in history] == list(range(len(history))), history  # one series, not one per rank


@pytest.mark.slow
def test_interval_zero_records_no_system_metrics(metrics_shell: Any) -> None:
    _interval(metrics_shell, 0)
    metrics_shell.run_cell_magic("train", "", "import os, time\ntime.sleep(3)\nseen = os.environ['JMK_SYSTEM_METRICS_INTERVAL']")
    assert metrics_shell.user_ns["seen"] == "0"
    record = _record(metrics_shell)
    metrics = MlflowClient(record.tracking_uri).get_run(record.run_id).data.metrics
    assert not [name for name in metrics if name.startswith("system/")], metrics


def test_the_interval_is_a_setting_that_refuses_negative_numbers() -> None:
    assert load_settings().system_metrics_interval == 5.0
    with pytest.raises(TraitError, match=r"system_metrics_interval = -1.*use e\.g\. 5"):
        load_settings(system_metrics_interval=-1)
    assert system_metrics.job_environment(2.5) == {"JMK_SYSTEM_METRICS_INTERVAL": "2.5"}
    assert system_metrics.interval_from({"JMK_SYSTEM_METRICS_INTERVAL": "0"}) == 0
    assert system_metrics.interval_from({}) == 0
    assert system_metrics.interval_from({"JMK_SYSTEM_METRICS_INTERVAL": "soon"}) == 0


def test_the_local_backends_old_settings_say_what_to_set_instead() -> None:
    from traitlets.config import Config

    from jupyter_mlflow_k8s.backends.local import LocalBackend
    from jupyter_mlflow_k8s.records import JobStore

    config = Config({"LocalBackend": {"system_metrics_after": 30}})
    with pytest.warns(FutureWarning, match=r"c\.JMKSettings\.system_metrics_interval"):
        LocalBackend(JobStore(Path(load_settings().state_dir, "jobs")), config=config)


# -- a tracking server that does not answer ---------------------------------------------------------


@pytest.fixture
def silent_server() -> Any:
    """An HTTP address that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def test_a_tracking_server_that_hangs_never_holds_the_jobs_end(silent_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_server)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3600")  # it would wait an hour on each request
    monitor = system_metrics.start("0" * 32, 0.2)
    assert monitor is not None
    out = monitor.process.stdout
    assert out is not None and out.read(1) == system_metrics.READY  # sampling: stuck in a request by now
    monitor.process.stdout = None  # read already
    monitor.stop(timeout=2)
    assert monitor.process.returncode is not None


def test_a_monitor_that_has_not_started_sampling_is_killed_at_once() -> None:
    monitor = system_metrics.start("0" * 32, 3600)  # waits an hour for its first sample
    assert monitor is not None
    monitor.stop(timeout=3600)
    assert monitor.process.returncode == -9


# -- the cgroup reader ------------------------------------------------------------------------------


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_cgroup_v2_in_a_container_is_its_own_root(tmp_path: Path) -> None:
    root = _write(tmp_path / "sys", {"cgroup.controllers": "cpuset cpu io memory pids", "cpu.max": "200000 100000",
                                     "cpu.stat": "usage_usec 1000000\nuser_usec 1\n", "memory.current": "300000000",
                                     "memory.max": "1073741824", "memory.stat": "anon 1\ninactive_file 100000000\n"})
    proc = _write(tmp_path / "proc", {
        "cgroup": "0::/\n",
        "mountinfo": f"1273 1271 0:27 / {root} ro,nosuid - cgroup2 cgroup rw,nsdelegate\n"})
    files = find_cgroup(proc)
    assert files == CgroupFiles(2, root, None, root)
    usage = CgroupUsage(files, machine_memory=64 * 2**30)
    assert usage.cpu_limit() == 2.0 and usage.cpu_seconds() == 1.0
    assert usage.memory() == (200_000_000, 1073741824)  # the working set: less the inactive file cache
    (root / "cpu.stat").write_text("usage_usec 1000000000\n")  # far more than 2 CPUs could in the time
    assert usage.cpu_percent() == 100.0
    assert usage.cpu_percent() == 0.0  # nothing since
    (root / "memory.max").write_text("max\n")
    (root / "cpu.max").write_text("max 100000\n")
    assert usage.memory() is None and usage.cpu_limit() is None and usage.cpu_percent() is None


def test_cgroup_v1_on_the_host_resolves_the_path_and_ignores_no_limit(tmp_path: Path) -> None:
    cpu = _write(tmp_path / "cpu,cpuacct" / "kubepods" / "pod1" / "c1", {
        "cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000", "cpuacct.usage": "2500000000"})
    memory = _write(tmp_path / "memory" / "kubepods" / "pod1" / "c1", {
        "memory.usage_in_bytes": "600000000", "memory.limit_in_bytes": "9223372036854771712",
        "memory.stat": "cache 1\ntotal_inactive_file 100000000\n"})
    proc = _write(tmp_path / "proc", {
        "cgroup": "12:memory:/kubepods/pod1/c1\n4:cpu,cpuacct:/kubepods/pod1/c1\n0::/\n",
        "mountinfo": (f"30 25 0:26 / {tmp_path}/unified rw - cgroup2 cgroup2 rw\n"
                      f"32 25 0:28 / {tmp_path}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
                      f"35 25 0:31 / {tmp_path}/memory rw - cgroup cgroup rw,memory\n")})
    files = find_cgroup(proc)
    assert files == CgroupFiles(1, cpu, cpu, memory)  # the unified hierarchy holds no controller: a hybrid
    usage = CgroupUsage(files, machine_memory=64 * 2**30)
    assert usage.cpu_limit() == 0.5 and usage.cpu_seconds() == 2.5
    assert usage.memory() is None  # "no limit" is a huge number in v1
    (memory / "memory.limit_in_bytes").write_text("1073741824\n")
    assert usage.memory() == (500_000_000, 1073741824)


def test_cgroup_v1_inside_a_container_mounts_its_own_cgroup(tmp_path: Path) -> None:
    memory = _write(tmp_path / "memory", {"memory.usage_in_bytes": "100", "memory.limit_in_bytes": "1000",
                                          "memory.stat": "total_inactive_file 0\n"})
    proc = _write(tmp_path / "proc", {
        "cgroup": "12:memory:/kubepods/burstable/pod1/c1\n",
        "mountinfo": f"35 25 0:31 /kubepods/burstable/pod1/c1 {memory} ro - cgroup cgroup rw,memory\n"})
    files = find_cgroup(proc)
    assert files is not None and files.memory == memory
    assert CgroupUsage(files, machine_memory=10**12).memory() == (100, 1000)


# -- the collectors in place of MLflow's ------------------------------------------------------------


def test_cpu_and_memory_are_the_containers_under_mlflows_names() -> None:
    from jupyter_mlflow_k8s.tracking.system_monitor import ContainerCPUMonitor

    usage = SimpleNamespace(cpu_percent=lambda: 42.0, memory=lambda: (256_000_000, 512_000_000))
    monitor = ContainerCPUMonitor(usage)  # type: ignore[arg-type]
    monitor.collect_metrics()
    assert monitor.aggregate_metrics() == {"cpu_utilization_percentage": 42.0, "system_memory_usage_megabytes": 256.0,
                                           "system_memory_usage_percentage": 50.0}
    machine = ContainerCPUMonitor(SimpleNamespace(cpu_percent=lambda: None, memory=lambda: None))  # type: ignore[arg-type]
    machine.collect_metrics()
    import psutil

    assert machine.aggregate_metrics()["system_memory_usage_percentage"] <= 100
    assert psutil.virtual_memory().total > 0


def test_the_jobs_gpus_are_those_cuda_visible_devices_names() -> None:
    from jupyter_mlflow_k8s.tracking.system_monitor import visible_gpu_handles

    nvml = SimpleNamespace(nvmlDeviceGetHandleByIndex=lambda i: f"index {i}",
                           nvmlDeviceGetHandleByUUID=lambda u: f"uuid {u}")  # fmt: skip
    assert visible_gpu_handles(nvml, "2,0") == ["index 2", "index 0"]
    assert visible_gpu_handles(nvml, "GPU-8f3e") == ["uuid GPU-8f3e"]
    assert visible_gpu_handles(nvml, "") == []  # a job without GPUs
    assert visible_gpu_handles(nvml, None) is None  # not restricted: all of NVML's
    assert visible_gpu_handles(nvml, "MIG-1a2b") is None


def test_the_system_metrics_process_imports_no_mlflow_before_its_first_sample() -> None:
    code = ("import sys, jupyter_mlflow_k8s.tracking.system_metrics, jupyter_mlflow_k8s.tracking.cgroup; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow')))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])}).stdout
    assert json.loads(out) == []
