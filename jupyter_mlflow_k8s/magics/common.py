"""What the magics share: the job service of this kernel, flag parsing, and the one error rule (:func:`user_errors`)."""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from IPython.core.error import UsageError

from ..errors import JMKUsageError, translate
from ..exceptions import JobFailed
from ..jobs import JobService
from ..util.durations import duration_seconds
from ..util.pairs import parse_pairs

F = TypeVar("F", bound=Callable[..., Any])
__all__ = ["cancel_on_interrupt", "literal", "notebook_path", "parse_duration", "parse_flags", "parse_pairs",
           "service_for", "stream_to_cell", "user_errors"]


def service_for(shell: Any) -> JobService:
    """One job service per shell, configured from the shell's traitlets config."""
    service = getattr(shell, "_jmk_service", None)
    if service is None:
        from ..config import load_settings

        service = JobService(load_settings(shell.config), backend_config=shell.config)
        shell._jmk_service = service
    return service


def user_errors(func: F) -> F:
    """The one error rule of every magic: an error of a family becomes IPython's ``UsageError``.

    Ours, and MLflow's, Kubernetes' and storage's once :func:`~jupyter_mlflow_k8s.errors.translate`
    has said what to do about them, show as one line without a traceback. A :class:`JobFailed`
    stays itself: its message carries the job's own traceback. Anything else is a bug and keeps its
    traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        try:
            return func(*args, **kwargs)
        except JobFailed:
            raise
        except Exception as exc:
            error = translate(exc)
            if error is None:
                raise
            raise UsageError(str(error)) from None

    return wrapper  # type: ignore[return-value]


def parse_flags(magic: Callable[..., Any], line: str) -> Any:
    """The magic's flags from ``line`` (IPython's ``parse_argstring``), every mistake a usage error.

    IPython splits the line like a shell and lets ``shlex``'s ``ValueError`` through for an
    unbalanced quote: the user would get a traceback for a typo.
    """
    from IPython.core.magic_arguments import parse_argstring

    try:
        args = parse_argstring(magic, line)
    except ValueError as exc:
        raise JMKUsageError(f"Cannot read the flags {line.strip()!r}: {exc}. Close the quote, or put a value "
                            "with a quote or a space in the other kind of quotes (--run-name \"it's mine\").") from None
    for name, value in vars(args).items():  # IPython splits without posix rules: it keeps the quotes
        if isinstance(value, str):
            setattr(args, name, _unquoted(value))
        elif isinstance(value, list):
            setattr(args, name, [_unquoted(v) if isinstance(v, str) else v for v in value])
    return args


def _unquoted(text: str) -> str:
    """``"my run"`` -> ``my run``: the value the user meant, as a shell would give it."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def split_words(line: str) -> list[str]:
    """``line`` split like a shell; an unbalanced quote is a usage error, not a traceback."""
    import shlex

    try:
        return shlex.split(line)
    except ValueError as exc:
        raise JMKUsageError(f"Cannot read {line.strip()!r}: {exc}. Close the quote, or put a value with a quote "
                            "or a space in the other kind of quotes.") from None


def literal(text: str) -> Any:
    """A ``--param`` value as the cell sees it: a Python literal when it is one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_duration(text: str | None, flag: str = "--timeout") -> float | None:
    """Seconds of ``--timeout`` (or ``flag``) from ``90``, ``90s``, ``30m``, ``2h`` or ``1d``."""
    if text is None:
        return None
    seconds = duration_seconds(text)
    if seconds is None or seconds <= 0:
        raise JMKUsageError(f"{flag} {text!r} is not a duration. Use seconds (900) or 15m, 2h, 1d.")
    return seconds


def notebook_path(shell: Any) -> str | None:
    """The notebook this kernel belongs to, when the server told the kernel."""
    return shell.user_ns.get("__session__") or os.environ.get("JPY_SESSION_NAME") or None


@contextlib.contextmanager
def cancel_on_interrupt(service: JobService, job_id: str) -> Iterator[None]:
    """Interrupting the kernel while waiting cancels the job and says so."""
    try:
        yield
    except KeyboardInterrupt:
        try:
            record = service.cancel_and_wait(job_id)
        except Exception as exc:  # the interrupt must still reach the user
            print(f"Interrupted: cancelling job {job_id} failed: {exc}. Retry with %job cancel {job_id}.")
        else:
            print(f"Interrupted: cancelled job {job_id} ({record.state.value}; MLflow run {record.run_id} KILLED).")
        raise


def stream_to_cell(service: JobService, job_id: str, view: Any = None, offset: int = 0, rank: int | None = None) -> Any:
    """Print a job's output (or one rank's) into the cell as it arrives; return the final record.

    Whole lines go to stdout at once; a progress bar's redraws update ``view`` instead.
    """
    import sys

    from ..logstream import ProgressLines
    from ..models import JobRecord, JobState

    lines = ProgressLines()
    metrics = _MetricsPoller()
    record = None
    said = ""
    with cancel_on_interrupt(service, job_id):
        for item in service.follow(job_id, offset, rank):
            if isinstance(item, JobRecord):
                record = item
                break
            if not item:  # a quiet moment: say why a job still waits (a pending pod, an image pull)
                current = service.store.load(job_id)
                if current.state is JobState.QUEUED and current.message and current.message != said:
                    said = current.message
                    print(f"[jmk] waiting: {said}", flush=True)
            text = lines.feed(item)
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
            if view is not None:
                record = service.store.load(job_id)
                view.update(record, progress=lines.current, metrics=metrics.poll(record))
    rest = lines.flush()
    if rest:
        sys.stdout.write(rest)
        sys.stdout.flush()
    if view is not None and record is not None:
        view.update(record, progress="", force=True, metrics=metrics.poll(record, final=True))
    return record


class _MetricsPoller:
    """Reads a running job's metrics from MLflow at most once per ``interval`` seconds, on a thread of its own.

    The log never waits on it: a slow or unreachable tracking server only leaves the metrics shown
    older. The final read is waited for ``final_wait`` seconds at most.
    """

    def __init__(self, interval: float = 1.0, final_wait: float = 3.0) -> None:
        self.interval = interval
        self.final_wait = final_wait
        self.last = 0.0
        self.latest: Any = None
        self._reading: threading.Thread | None = None

    def poll(self, record: Any, final: bool = False) -> Any:
        now = time.monotonic()
        if not record.run_id or not record.tracking_uri:
            return None
        if final and self._reading is not None:
            self._reading.join(self.final_wait)  # a read under way: the final one follows it
        busy = self._reading is not None and self._reading.is_alive()
        if not busy and (final or now - self.last >= self.interval):
            self.last = now
            self._reading = threading.Thread(target=self._read, args=(record.tracking_uri, record.run_id),
                                             name="jmk-live-metrics", daemon=True)
            self._reading.start()
        if final and self._reading is not None:
            self._reading.join(self.final_wait)
        return self.latest

    def _read(self, tracking_uri: str, run_id: str) -> None:
        from .. import tracking

        with contextlib.suppress(Exception):  # a slow or failing tracking server must not break the cell
            self.latest = tracking.live_metrics(tracking_uri, run_id)
