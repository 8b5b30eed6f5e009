"""Several server processes on one socket: a supervisor that forks them and replaces any that dies.

With ``--workers N`` (N > 1) the process that loaded the model only supervises: it forks N workers
that share its listening socket, forks a new one in place of each that dies (by a signal or an
exit), so nothing is loaded again, and tells ``replaced(pid)`` about each replacement (the caller
counts it in ``jmk_worker_restarts_total`` and marks the dead worker's metrics).
:func:`multiprocess_metrics` gives the workers one ``prometheus_client`` multiprocess directory, so
a scrape of any worker reads every worker's metrics. SIGTERM or SIGINT to the supervisor stops every
worker before it exits, and each worker is told by the kernel to stop when the supervisor dies
(``PR_SET_PDEATHSIG``), so no worker outlives it. The supervisor runs no event loop and no threads
of its own, so forking from it is safe. This module does not load models or answer requests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

#: Seconds the workers have to finish their requests after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 8.0
#: A worker that dies within this many seconds of starting died "at once".
QUICK_DEATH_SECONDS = 2.0
#: This many workers in a row dying at once means a replacement cannot help: the server gives up.
QUICK_DEATHS_LIMIT = 5
_PR_SET_PDEATHSIG = 1
_HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def multiprocess_metrics(enabled: bool = True) -> Iterator[str | None]:
    """A private ``PROMETHEUS_MULTIPROC_DIR`` for the workers forked inside, removed afterwards.

    prometheus_client picks its value class (in memory, or in files of that directory) when
    ``prometheus_client.values`` is imported, which the server's modules have already done: so the
    class is picked again here, before any metric is created, and put back on the way out. With
    ``enabled=False`` (one process) it yields ``None`` and hides a directory inherited from the
    environment, so a lone server keeps its metrics in memory.
    """
    from prometheus_client import values

    before = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    value_class = values.ValueClass
    directory = tempfile.mkdtemp(prefix="jmk-metrics-") if enabled else None
    if directory is not None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[misc,no-untyped-call]
    try:
        yield directory
    finally:
        values.ValueClass = value_class  # type: ignore[misc]
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if before is not None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = before
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def signal_name(status: int) -> str:
    """How a worker ended, from its wait status: ``killed by SIGKILL`` or ``exited with code 1``."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(number).name}"
        return f"killed by signal {number}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    """Forks ``count`` workers running ``work(ready)`` and keeps ``count`` of them alive until told to stop.

    ``work`` runs in the worker and calls ``ready()`` once it accepts requests; ``announce`` is
    called in the supervisor once every first worker is ready; ``replaced(pid)`` after a worker
    ``pid`` died, before its replacement is forked. ``restarts`` counts replacements.
    """

    def __init__(self, count: int, work: Callable[[Callable[[], None]], None], announce: Callable[[], None],
                 replaced: Callable[[int], None] = lambda pid: None, grace: float = STOP_GRACE_SECONDS) -> None:
        self.count, self.work, self.announce, self.replaced, self.grace = count, work, announce, replaced, grace
        self.restarts = 0
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (slot, started)
        self.stopping = False
        self.quick_deaths = 0

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (exit code 0) or workers that keep dying at once (1)."""
        wake_read, wake_write = os.pipe()
        ready_read, self._ready_write = os.pipe()
        os.set_blocking(wake_write, False)
        self._pipes = (wake_read, wake_write, ready_read)
        previous = {number: signal.signal(number, _noted) for number in _HANDLED}
        signal.set_wakeup_fd(wake_write)
        try:
            for slot in range(self.count):
                self._fork(slot)
            return self._loop(wake_read, ready_read)
        finally:
            self._stop_all()
            signal.set_wakeup_fd(-1)
            for number, handler in previous.items():
                signal.signal(number, handler)
            for fd in (*self._pipes, self._ready_write):
                os.close(fd)

    def _loop(self, wake_read: int, ready_read: int) -> int:
        ready, announced = 0, False
        while not self.stopping:
            readable, _, _ = select.select([wake_read, ready_read], [], [], 1.0)
            if wake_read in readable:
                for number in os.read(wake_read, 64):
                    if number in (signal.SIGTERM, signal.SIGINT):
                        self.stopping = True
            if ready_read in readable:
                ready += len(os.read(ready_read, 64))
                if not announced and ready >= self.count:
                    announced = True
                    self.announce()
            if not self.stopping and not self._replace_dead():
                return 1
        return 0

    def _replace_dead(self) -> bool:
        """Reap dead workers and fork one in place of each; False when they keep dying at once."""
        while self.workers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return True
            slot, started = self.workers.pop(pid, (None, 0.0))
            if slot is None:
                continue
            lived = time.monotonic() - started
            self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
            if self.quick_deaths >= QUICK_DEATHS_LIMIT:
                _say(f"worker {slot} (pid {pid}) {signal_name(status)}; {self.quick_deaths} workers in a row died "
                     f"within {QUICK_DEATH_SECONDS:g} s of starting, so the server stops. See the lines above.")
                return False
            self.restarts += 1
            self.replaced(pid)
            _say(f"worker {slot} (pid {pid}) {signal_name(status)} after {lived:.1f} s; starting a new one "
                 f"(restart {self.restarts})")
            self._fork(slot)
        return True

    def _fork(self, slot: int) -> None:
        parent = os.getpid()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)  # none reaches the child's copy of our handlers
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                self._become_worker(parent, blocked)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # a worker never returns into the supervisor's code
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.workers[pid] = (slot, time.monotonic())
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _become_worker(self, parent: int, blocked: set[int | signal.Signals]) -> None:
        signal.set_wakeup_fd(-1)
        for number in _HANDLED:
            signal.signal(number, signal.SIG_DFL)
        for fd in self._pipes:
            os.close(fd)
        _die_with(parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        ready_write = self._ready_write

        def ready() -> None:
            os.write(ready_write, b".")

        self.work(ready)

    def _stop_all(self) -> None:
        """SIGTERM every worker, SIGKILL those still there after the grace period, and reap them all."""
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while self.workers and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                self.workers.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in self.workers:
            _say(f"worker pid {pid} did not stop within {self.grace:g} s of SIGTERM; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.workers):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.workers.pop(pid)


def _noted(number: int, frame: object) -> None:
    """The supervisor's handler: the wakeup pipe carries the signal; nothing to do here."""


def _die_with(parent: int) -> None:
    """Ask the kernel to SIGTERM this worker when the supervisor dies (Linux); exit if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def _say(line: str) -> None:
    print(f"jmk-serve: {line}", file=sys.stderr, flush=True)


__all__ = ["Supervisor", "multiprocess_metrics", "signal_name"]
