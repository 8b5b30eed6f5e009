"""Process checks: is a recorded pid still the process we started, and detached children reaped.

A pid alone is not an identity (pids are reused), so records keep the process's start time
(``pid_start``) too, and :func:`process_alive` compares both.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

import psutil

# Start times agree to this many seconds. psutil adds /proc/stat's btime to the start in ticks since
# boot, and btime is a whole second that moves by one when the clock is adjusted across a second.
START_TOLERANCE_SECONDS = 2.0
# Detached children this process started; polled now and then so that exited ones do not
# linger as zombies in a long-lived kernel.
_children: list[subprocess.Popen[bytes]] = []


def process_started(pid: int) -> float | None:
    """The start time (epoch seconds) of process ``pid``; ``None`` when there is none."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def process_alive(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` still runs and is the process that started at ``started`` (``None``: any start)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < START_TOLERANCE_SECONDS
    except psutil.Error:
        return False


def pid_exists(pid: int) -> bool:
    """Whether any process has this pid (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_children() -> None:
    """Collect the exit status of child processes that have ended (no zombies left behind)."""
    _children[:] = [child for child in _children if child.poll() is None]


def track_child(proc: subprocess.Popen[bytes]) -> None:
    """Keep a detached child's handle, so that it is reaped once it ends."""
    reap_children()
    _children.append(proc)


def wait_child(pid: int, timeout: float) -> None:
    """Reap the tracked child ``pid``, which is ending, so that it does not stay a zombie."""
    for child in _children:
        if child.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=timeout)
