"""MLflow's system-metrics monitor, fitted to a job: the container's CPU and memory, the job's own GPUs.

Imports MLflow: only the system-metrics process (:mod:`.system_metrics`) imports this module.
The monitor is MLflow's :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`
with its collectors (disk, network, NVIDIA GPUs through ``pynvml`` from nvidia-ml-py) and MLflow's
metric names (``system/cpu_utilization_percentage``, ...), so that the MLflow UI's System metrics tab
shows them. Two collectors differ:

- CPU and memory: :class:`ContainerCPUMonitor` in place of MLflow's ``CPUMonitor``, which reads the
  whole machine's ``/proc`` even inside a container: the cgroup's use against its limits where the
  cgroup has them (:mod:`.cgroup`), MLflow's (``psutil``'s) values where it has none.
- GPUs: only those ``CUDA_VISIBLE_DEVICES`` gives the job (NVML lists every GPU of the machine),
  numbered as CUDA numbers them: ``gpu_0`` is the job's first GPU.

The sampling loop is the caller's (:meth:`JobSystemMetricsMonitor.log_sample`, in :mod:`.system_metrics`):
MLflow's thread asks the tracking server for the run's status at every sample, stops at the first
request that fails, and drops the samples of a cycle that the job's end cuts short.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import psutil
from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from .cgroup import CgroupUsage

# MLflow's monitor keeps a batch it could not send and sends it again with the next; beyond this many
# points (about an hour of samples every 5 s) the oldest are dropped rather than kept without end.
MAX_KEPT_POINTS = 10_000


class ContainerCPUMonitor(BaseMetricsMonitor):  # type: ignore[misc]
    """MLflow's CPU and memory metrics, for the cgroup (the pod's container) where it has limits.

    ``cpu_utilization_percentage``: the cgroup's CPU time over its CPU limit (100 = all the CPUs
    ``--cpu`` gave it); ``system_memory_usage_megabytes`` and ``_percentage``: its working set, and
    that over its memory limit. Without a limit, MLflow's values (the machine's, from ``psutil``).
    """

    def __init__(self, usage: CgroupUsage | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.usage = usage or CgroupUsage()
        psutil.cpu_percent()  # its first answer is since boot: start its interval now

    def collect_metrics(self) -> None:
        """One sample of CPU and memory."""
        cpu = self.usage.cpu_percent()
        self._metrics["cpu_utilization_percentage"].append(psutil.cpu_percent() if cpu is None else cpu)
        memory = self.usage.memory()
        if memory is None:
            machine = psutil.virtual_memory()
            used, total = machine.used, machine.total
        else:
            used, total = memory
        self._metrics["system_memory_usage_megabytes"].append(used / 1e6)
        self._metrics["system_memory_usage_percentage"].append(used / total * 100)

    def aggregate_metrics(self) -> dict[str, float]:
        """The mean of the samples since the last publication, as MLflow rounds them."""
        return {k: round(sum(v) / len(v), 1) for k, v in self._metrics.items() if v}


def visible_gpu_handles(pynvml: Any, visible: str | None) -> list[Any] | None:
    """NVML handles of the GPUs ``CUDA_VISIBLE_DEVICES`` names, in its order; None: keep all of NVML's.

    Indices and ``GPU-`` UUIDs are understood; for anything else (MIG devices) NVML's list is kept.
    """
    if visible is None:
        return None
    handles = []
    for entry in (part.strip() for part in visible.split(",")):
        if not entry:
            continue
        if entry.isdigit():
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(entry)))
        elif entry.startswith("GPU-"):
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(entry))
        else:
            return None
    return handles


class JobSystemMetricsMonitor(SystemMetricsMonitor):  # type: ignore[misc]
    """MLflow's monitor for one job's run, with :class:`ContainerCPUMonitor` and the job's GPUs only."""

    def __init__(
        self, run_id: str, sampling_interval: float, usage: CgroupUsage | None = None, tracking_uri: str | None = None
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            run_id, sampling_interval=sampling_interval, samples_before_logging=1, tracking_uri=tracking_uri
        )
        self.sampling_interval = sampling_interval  # ours, not MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL's
        self.node_id = None  # MLFLOW_SYSTEM_METRICS_NODE_ID would rename them (system/NODE/...): the names are fixed
        self.monitors = [ContainerCPUMonitor(usage) if isinstance(m, CPUMonitor) else m for m in self.monitors]
        for monitor in self.monitors:
            if hasattr(monitor, "gpu_handles") and "pynvml" in sys.modules:
                self._keep_visible_gpus(monitor)
        self.errors = 0

    def _keep_visible_gpus(self, monitor: Any) -> None:
        try:
            handles = visible_gpu_handles(sys.modules["pynvml"], os.environ.get("CUDA_VISIBLE_DEVICES"))
        except Exception as exc:  # an entry NVML does not know: keep its whole list
            print(f"[jmk] system metrics: GPUs of CUDA_VISIBLE_DEVICES not found by NVML ({exc})", file=sys.stderr)
            return
        if handles is None:
            return
        if handles:
            monitor.gpu_handles, monitor.num_gpus = handles, len(handles)
        else:  # the job has no GPU: other jobs' GPUs are not its metrics
            self.monitors.remove(monitor)

    def log_sample(self) -> bool:
        """Take one sample and send it (with any the server did not take before); False if it did not take it."""
        try:
            self.collect_metrics()  # type: ignore[no-untyped-call]
            metrics = self.aggregate_metrics()  # type: ignore[no-untyped-call]
            step = self._logging_step
            try:
                if metrics:
                    self.publish_metrics(metrics)  # type: ignore[no-untyped-call]
            finally:  # queued even if sending failed: the next sample is the next step
                self._logging_step = step + 1 if metrics else step
                for monitor in self.monitors:
                    monitor.clear_metrics()  # type: ignore[no-untyped-call]
            if self.mlflow_logger.data:
                self.mlflow_logger.flush()  # type: ignore[no-untyped-call]
            if self.errors:
                print("[jmk] system metrics: the tracking server takes them again", file=sys.stderr)
            self.errors = 0
            return True
        except Exception as exc:  # the points stay queued in the logger and go with the next sample
            if not self.errors:
                print(
                    f"[jmk] system metrics: the tracking server did not take them ({str(exc)[:200]}); "
                    "they are sent again with the next sample",
                    file=sys.stderr,
                )
            self.errors += 1
            del self.mlflow_logger.data[:-MAX_KEPT_POINTS]
            return False
