"""Shared by the benchmark scripts: the machine they ran on, CPU accounting, and the tables they print."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def memory_total() -> str:
    """Total memory from /proc/meminfo, in GiB ("unknown" elsewhere)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


def os_name() -> str:
    """The distribution's pretty name and the kernel release."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))} ({platform.release()})"
    return platform.platform()


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used (user+nice+system+irq+softirq+steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds this process's finished children have used."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def package_versions(packages: Sequence[str]) -> str:
    """``name version`` of each installed package, comma-separated."""
    versions = []
    for package in packages:
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    return ", ".join(versions)


def code_state(root: Path) -> str:
    """The commit the benchmark ran on, and whether the package had uncommitted changes."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "jupyter_mlflow_k8s"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes in jupyter_mlflow_k8s/" if dirty else "")
    return "unknown"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table under ``title``: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [title]
    for row in [header, ["-" * w for w in widths], *rows]:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in pairs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Settings of the machine's environment that would send a benchmark's jobs elsewhere.
JOB_SETTINGS = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "JMK_STORAGE_URL", "JMK_BACKEND")


@contextlib.contextmanager
def scratch_environment(prefix: str, keep: bool, settings: Callable[[Path], dict[str, str]]) -> Iterator[Path]:
    """A temporary directory with ``settings(root)`` as the environment, :data:`JOB_SETTINGS` unset.

    The environment is restored afterwards, and the directory removed unless ``keep``.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    saved = dict(os.environ)
    for name in JOB_SETTINGS:
        os.environ.pop(name, None)
    os.environ.update(settings(root))
    try:
        yield root
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if keep:
            print(f"[bench] kept {root}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
