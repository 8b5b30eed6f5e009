"""Fuzzing with hypothesis, bounded for CI (a pytest plugin: see conftest).

Every fuzz test runs a fixed number of examples, derandomized (the same cases on every run, so a
failure in CI is a failure on a laptop), with no example database written into the repository.
``JMK_FUZZ_SCALE=10`` multiplies the examples of every fuzz test for a longer local run.
Each fuzz target counts the cases it tried; the terminal summary lists them per target.
"""

from __future__ import annotations

import collections
import os
from typing import Any

from hypothesis import HealthCheck, settings

#: Cases tried per fuzz target in this session (the terminal summary prints them).
CASES: collections.Counter[str] = collections.Counter()

settings.register_profile(
    "jmk-fuzz",
    deadline=None,  # servers and kernels answer in their own time; a hang is caught by the client's timeout
    database=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("jmk-fuzz")


def bounded(examples: int) -> settings:
    """Settings for one fuzz test: ``examples`` cases (times ``JMK_FUZZ_SCALE``)."""
    scale = float(os.environ.get("JMK_FUZZ_SCALE", "1") or 1)
    return settings(max_examples=max(1, int(examples * scale)))


def tried(target: str) -> None:
    """Count one case of ``target``."""
    CASES[target] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """``fuzz cases tried``: per target and in all, when any fuzz test ran."""
    if not CASES:
        return
    terminalreporter.section("fuzz cases tried")
    for target, count in sorted(CASES.items()):
        terminalreporter.write_line(f"{target}: {count}")
    terminalreporter.write_line(f"total: {sum(CASES.values())}")
