"""Writes that outlast a blip of the store, and the folder where they are kept when it stays down.

A job writes its values and its result document once, at its very end: a store that does not answer
then would lose the cell's work. So those writes are retried with a doubling delay for at most
``JMK_STORAGE_RETRY_SECONDS`` (60 s by default); if the store still fails, the writer keeps them in
a local folder instead (for a local job, ``results/`` in the job's folder of the state directory,
named to the job in ``JMK_RESULTS_KEEP_DIR``), under the same keys, so that whoever reads a result
looks there with the same code. This module knows nothing about jobs or pickles.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from ..errors import JMKUsageError

T = TypeVar("T")
RETRY_SECONDS_ENV = "JMK_STORAGE_RETRY_SECONDS"
KEEP_DIR_ENV = "JMK_RESULTS_KEEP_DIR"
DEFAULT_RETRY_SECONDS = 60.0
KEPT_FOLDER = "results"  # in a local job's folder: what its runner could not write to the store
FIRST_DELAY, MAX_DELAY = 0.2, 5.0


def retry_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """How long a job keeps retrying a store that does not answer (``JMK_STORAGE_RETRY_SECONDS``)."""
    text = environ.get(RETRY_SECONDS_ENV, "")
    try:
        return max(float(text), 0.0) if text else DEFAULT_RETRY_SECONDS
    except ValueError:
        print(f"[jmk] ignoring {RETRY_SECONDS_ENV}={text!r} (not a number of seconds); "
              f"retrying for {DEFAULT_RETRY_SECONDS:g} s", file=sys.stderr)
        return DEFAULT_RETRY_SECONDS


def with_retries(call: Callable[[], T], seconds: float, what: str) -> T:
    """``call()``, again after each failure with a doubling delay, for at most ``seconds``.

    A :class:`JMKUsageError` (the value itself is at fault, e.g. it does not pickle) is raised at
    once; any other error is taken for the store's trouble and retried, then raised as it last was.
    """
    deadline = time.monotonic() + seconds
    delay = FIRST_DELAY
    attempt = 1
    while True:
        try:
            return call()
        except JMKUsageError:
            raise
        except Exception as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            print(f"[jmk] could not write {what} (attempt {attempt}: {type(exc).__name__}: {exc}); "
                  f"retrying for up to {left:.0f} s more", file=sys.stderr, flush=True)
            time.sleep(min(delay, left))
            delay = min(delay * 2, MAX_DELAY)
            attempt += 1
