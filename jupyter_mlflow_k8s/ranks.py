"""The ranks of a distributed job: whose line is which, and how a failed rank is told.

Every process of a job run under torchrun (``%%train --nodes N`` or ``--procs P``) prefixes each
line it writes with ``[rank R] `` (its global rank), so that the one log of the job, merged from
every pod, still tells the ranks apart; lines without a prefix come from the launcher on each node.
This module holds that convention for both sides: the worker's side (:func:`prefix_output`, used
by the runner) and the reader's side (:func:`lines_of_rank`, :func:`failed_rank`, used by the
backends and ``%job logs --rank``). No torch here.
"""

from __future__ import annotations

import os
import re
import signal

# Set by the launcher for its workers: the job runs under torchrun (the runner acts as one rank).
DISTRIBUTED_ENV = "JMK_DISTRIBUTED"
# A folder where each rank whose cell raised writes when it did (a file named by its rank): the
# launcher tells the rank that failed first from those that failed because of it.
ERROR_TIMES_ENV = "JMK_ERROR_TIMES"
# How many of the node's GPUs each process gets; its first one becomes its default CUDA device.
GPUS_PER_PROC_ENV = "JMK_GPUS_PER_PROC"
# What the launcher says when a rank of its node failed: the backends read the rank back from it.
FAILED_LINE = "[jmk] rank {rank} failed with exit code {code}"
_FAILED_RE = re.compile(r"^\[jmk\] rank (?P<rank>\d+) failed with exit code (?P<code>-?\d+)", re.MULTILINE)
# Exit status of a launcher stopped on purpose (cancelled, or because another rank failed).
EXIT_STOPPED = 143


def rank_prefix(rank: int | str) -> str:
    """``[rank R] ``: what starts every line rank ``R`` writes."""
    return f"[rank {rank}] "


def worker_rank() -> int | None:
    """The global rank of this process when it is a rank of a distributed job; None otherwise."""
    if not os.environ.get(DISTRIBUTED_ENV) or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"])


def note_error_time(rank: int) -> None:
    """Record when this rank's cell raised, for its launcher (see :data:`ERROR_TIMES_ENV`)."""
    import time

    folder = os.environ.get(ERROR_TIMES_ENV)
    if folder:
        try:
            with open(os.path.join(folder, str(rank)), "w") as handle:
                handle.write(repr(time.time()))
        except OSError:  # the launcher then goes by when it saw the process end
            pass


def lines_of_rank(text: str, rank: int) -> str:
    """The lines of ``text`` that rank ``rank`` wrote, without their prefix."""
    prefix = rank_prefix(rank)
    return "".join(line[len(prefix):] for line in text.splitlines(keepends=True) if line.startswith(prefix))


def failed_rank(text: str) -> tuple[int, int] | None:
    """``(rank, exit code)`` of the first rank a launcher said failed in the log ``text``; None if none did."""
    match = _FAILED_RE.search(text)
    return (int(match["rank"]), int(match["code"])) if match else None


def rank_traceback(text: str, rank: int) -> tuple[str, str]:
    """``(last line, traceback)`` of what rank ``rank`` wrote last in the log ``text`` (its error)."""
    lines = lines_of_rank(text, rank)
    start = lines.rfind("Traceback (most recent call last):")
    traceback = lines[start:] if start >= 0 else ""
    last = next((line for line in reversed(lines.splitlines()) if line.strip()), "")
    return last, traceback


def failure_summary(text: str, lines: int = 20) -> str:
    """What a failed distributed job's message says: which rank failed, with its last lines; '' if none said."""
    found = failed_rank(text)
    if found is None:
        return ""
    rank, code = found
    tail = lines_of_rank(text, rank).splitlines()[-lines:]
    summary = f"rank {rank} failed with exit code {code}"
    return summary + (f"\nLast lines of rank {rank}:\n" + "\n".join(tail) if tail else "")


def prefix_output(prefix: str) -> int:
    """Prefix every line this process (and what it starts) writes to fds 1 and 2 with ``prefix``.

    Both fds go into a pipe read by a forked child, which writes each line, prefixed, to the
    original stdout in one write (lines of several ranks sharing a log never mix inside a line).
    The child outlives this process's signals and ends at end of file, once every writer has
    exited. Returns the child's pid, for :func:`drain_output`. Called first thing, before any
    thread starts (``fork``).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: copy lines until every writer has closed the pipe
        os.close(write_end)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        _copy_lines(read_end, 1, prefix.encode())
        os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    return pid


def drain_output(pid: int, timeout: float = 5.0) -> None:
    """Close this process's end of the prefixing pipe and wait (up to ``timeout``) for its last lines.

    A pod ends when its first process does, killing what is left: without this, the last lines a
    rank wrote (its traceback, or rank 0's results sent through the log) could still be in the pipe.
    A process the cell started that keeps the pipe open only costs the ``timeout``.
    """
    import time

    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.005)


def _copy_lines(source: int, target: int, prefix: bytes) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(source, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:  # a line per write: a pipe shared by several ranks keeps each whole
            _write_all(target, prefix + line + b"\n")
    if pending:
        _write_all(target, prefix + pending + b"\n")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue
        except OSError:  # nobody reads the log any more: drop the rest
            return
