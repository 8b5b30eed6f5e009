"""Which GPUs this machine has, for the local backend's ``--gpus N``.

Read once from ``nvidia-smi`` (restricted by ``CUDA_VISIBLE_DEVICES`` when the notebook itself
was given a subset). No CUDA library is loaded: importing torch to count devices costs seconds.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess


@functools.lru_cache(maxsize=1)
def detect_gpus() -> tuple[str, ...]:
    """Indices of the GPUs jobs on this machine may use, as strings ("0", "1", ...)."""
    smi = shutil.which("nvidia-smi")
    found: list[str] = []
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            found = [line.strip() for line in out.splitlines() if line.strip().isdigit()]
        except (OSError, subprocess.SubprocessError):
            found = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and found:
        allowed = [v.strip() for v in visible.split(",") if v.strip()]
        found = [g for g in found if g in allowed]
    return tuple(found)
