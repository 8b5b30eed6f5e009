"""CPU and memory use of the cgroup this process runs in (a pod's container), when the cgroup has a limit.

Inside a container, ``psutil`` (and so MLflow's own CPU monitor) reads ``/proc/stat`` and
``/proc/meminfo``: the whole node's CPU and memory, not the container's. A job asked for with
``--cpu 2 --memory 4Gi`` would show a 64-core node's load and memory. This module reads the
cgroup instead (v2: ``cpu.stat``, ``cpu.max``, ``memory.current``, ``memory.max``; v1:
``cpuacct.usage``, ``cpu.cfs_quota_us``, ``memory.usage_in_bytes``, ``memory.limit_in_bytes``):

- CPU: CPU time the cgroup used over the interval, as a percentage of its CPU limit (the quota:
  ``--cpu 2`` fully busy is 100 %); ``None`` without a quota.
- Memory: the cgroup's working set (usage less inactive file cache, what the kubelet and the OOM
  killer go by) and its limit; ``None`` without a limit below the machine's memory.

The cgroup is found as the kernel and runc present it: ``/proc/self/cgroup`` names its path, and
``/proc/self/mountinfo`` where each hierarchy is mounted and from which root (inside a container the
mount's root is the container's own cgroup). Reads nothing but these files; imports nothing heavy.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc/self")


@dataclass(frozen=True)
class CgroupFiles:
    """Where this process's cgroup files are (``None``: that controller was not found)."""

    version: int
    cpu: Path | None  # v2: the unified directory; v1: the cpu controller's directory (the quota)
    cpuacct: Path | None  # v1 only: cpuacct.usage
    memory: Path | None


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """``(root, mount point, filesystem type, super options)`` of each cgroup mount in ``mountinfo``."""
    found = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return found


def _inside(mount_point: str, mount_root: str, path: str) -> Path:
    """The directory of cgroup ``path`` under a hierarchy mounted at ``mount_point`` from ``mount_root``."""
    relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path.lstrip("/")
    directory = Path(mount_point, "" if relative == "." else relative)
    return directory if directory.is_dir() else Path(mount_point)  # a namespaced view: the mount is ours


def find_cgroup(proc: Path = PROC) -> CgroupFiles | None:
    """The cgroup directories of this process (v2 if the unified hierarchy holds the controllers, else v1)."""
    try:
        membership = (proc / "cgroup").read_text()
        mounts = _mounts((proc / "mountinfo").read_text())
    except OSError:
        return None
    paths: dict[str, str] = {}
    for line in membership.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            paths[""] = path
        for name in controllers.split(","):
            if name:
                paths[name] = path
    for root, point, kind, _options in mounts:
        if kind == "cgroup2" and "" in paths and _controllers(Path(point)) & {"cpu", "memory"}:  # not a hybrid's
            directory = _inside(point, root, paths[""])
            has = _controllers(directory.parent) | _controllers(Path(point))
            return CgroupFiles(2, directory, None, directory if "memory" in has else None)
    found: dict[str, Path] = {}
    for root, point, kind, options in mounts:
        if kind != "cgroup":
            continue
        for name in ("cpu", "cpuacct", "memory"):
            if name in options and name in paths and name not in found:
                found[name] = _inside(point, root, paths[name])
    if not found:
        return None
    return CgroupFiles(1, found.get("cpu"), found.get("cpuacct"), found.get("memory"))


def _controllers(directory: Path) -> set[str]:
    try:
        return set((directory / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def _read(path: Path | None, name: str) -> str | None:
    if path is None:
        return None
    try:
        return (path / name).read_text().strip()
    except OSError:
        return None


def _stat(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


class CgroupUsage:
    """CPU and memory of this process's cgroup, when the cgroup limits them.

    :meth:`cpu_percent` compares the cgroup's CPU time with the previous call's (the first call with
    the moment the object was made).
    """

    def __init__(self, files: CgroupFiles | None = None, machine_memory: int | None = None) -> None:
        self.files = files if files is not None else find_cgroup()
        self.machine_memory = machine_memory or _machine_memory()
        self._last = (time.monotonic(), self.cpu_seconds())

    def cpu_limit(self) -> float | None:
        """How many CPUs the cgroup may use (its quota over its period); None without a quota."""
        files = self.files
        if files is None:
            return None
        if files.version == 2:
            words = (_read(files.cpu, "cpu.max") or "max").split()
            if words[0] == "max" or len(words) < 2:
                return None
            return int(words[0]) / int(words[1])
        quota, period = _read(files.cpu, "cpu.cfs_quota_us"), _read(files.cpu, "cpu.cfs_period_us")
        if quota is None or period is None or int(quota) <= 0 or int(period) <= 0:
            return None
        return int(quota) / int(period)

    def cpu_seconds(self) -> float | None:
        """CPU time the cgroup has used since it was made, in seconds."""
        files = self.files
        if files is None:
            return None
        if files.version == 2:
            usage = _stat(_read(files.cpu, "cpu.stat"), "usage_usec")
            return None if usage is None else usage / 1e6
        text = _read(files.cpuacct, "cpuacct.usage")
        return int(text) / 1e9 if text and text.isdigit() else None

    def cpu_percent(self) -> float | None:
        """CPU used since the last call, as a percentage of the CPU limit; None without a limit."""
        limit, now, used = self.cpu_limit(), time.monotonic(), self.cpu_seconds()
        then, before = self._last
        self._last = (now, used)
        if limit is None or used is None or before is None or now <= then:
            return None
        return max(0.0, min(100.0, (used - before) / ((now - then) * limit) * 100))

    def memory(self) -> tuple[int, int] | None:
        """``(working set, limit)`` in bytes; None without a limit below the machine's memory."""
        files = self.files
        if files is None or files.memory is None:
            return None
        if files.version == 2:
            usage, limit = _read(files.memory, "memory.current"), _read(files.memory, "memory.max")
            inactive = _stat(_read(files.memory, "memory.stat"), "inactive_file")
        else:
            usage, limit = _read(files.memory, "memory.usage_in_bytes"), _read(files.memory, "memory.limit_in_bytes")
            inactive = _stat(_read(files.memory, "memory.stat"), "total_inactive_file")
        if not usage or not usage.isdigit() or not limit or not limit.isdigit():
            return None  # memory.max "max": no limit
        if self.machine_memory and int(limit) >= self.machine_memory:
            return None  # v1 writes "no limit" as a huge number
        return max(0, int(usage) - (inactive or 0)), int(limit)


def _machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
