"""How long any MLflow call may take: bounded timeouts and retries, and a quick "does it answer?".

MLflow's HTTP client waits 120 s per request and retries 7 times with a doubling backoff: a
tracking server that is down or hangs holds its caller for minutes. Every process of ours that
talks to MLflow (kernel, CLI, server extension, supervisor, the job's runner) gets the bounds
below through MLflow's own variables, unless the user has set them (theirs win). What a bounded
call could not send is kept with the job as pending and sent later (see the lifecycle).

Kept free of MLflow imports: the supervisor and the runner read it before they import MLflow.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping

# MLflow's own variables, read at every request. 10 s per request, 2 retries after 0 s and 2 s.
HTTP_BOUNDS: Mapping[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
# At a job's end nothing waits: one try, 3 s; what is not sent is kept as pending.
FINAL_BOUNDS: Mapping[str, str] = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "3", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
PROBE_SECONDS = 2.0
# A probe's answer is reused this long, so that a listing of many jobs asks a server once.
PROBE_MEMORY_SECONDS = 5.0

_probes: dict[str, tuple[float, str]] = {}
_probes_lock = threading.Lock()


def bounded_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """MLflow's request bounds: ours, except those the environment sets already."""
    env = os.environ if environ is None else environ
    return {name: env.get(name, value) for name, value in HTTP_BOUNDS.items()}


def bound_requests() -> None:
    """Give this process's MLflow calls the bounds (a variable the user set is kept)."""
    for name, value in HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)


def final_requests() -> None:
    """From now on, one short try per MLflow request in this process (a job that has ended)."""
    os.environ.update(FINAL_BOUNDS)


def unreachable(tracking_uri: str | None, timeout: float = PROBE_SECONDS) -> str:
    """Why the tracking server at ``tracking_uri`` does not answer; ``""`` when it does (or is no server).

    Asks ``/health`` once, with ``timeout``; the answer is reused for a few seconds.
    """
    uri = tracking_uri or ""
    if not uri.startswith(("http://", "https://")):
        return ""
    now = time.monotonic()
    with _probes_lock:
        seen = _probes.get(uri)
        if seen and now - seen[0] < PROBE_MEMORY_SECONDS:
            return seen[1]
    reason = _ask_health(uri, timeout)
    with _probes_lock:
        _probes[uri] = (time.monotonic(), reason)
    return reason


def forget(tracking_uri: str | None) -> None:
    """Drop the remembered answer for ``tracking_uri`` (a call to it has just failed or worked)."""
    with _probes_lock:
        _probes.pop(tracking_uri or "", None)


def _ask_health(uri: str, timeout: float) -> str:
    import urllib.error
    import urllib.request

    url = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - an http(s) URI, checked above
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return f"{type(reason).__name__ if isinstance(reason, BaseException) else 'error'}: {reason}"
    return f"/health answered {status}" if status >= 500 else ""
