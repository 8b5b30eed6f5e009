"""The ``jmk`` command and a storage URL other than the default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jupyter_mlflow_k8s.magics.common import service_for

pytestmark = pytest.mark.slow


def _jmk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jupyter_mlflow_k8s.cli", *args], capture_output=True, text=True)


def test_cli_lists_logs_and_refuses_unknown_ids(shell: Any) -> None:
    shell.run_cell_magic("train", "", "print('from the job')\nv = 1")
    (record,) = service_for(shell).list()
    listing = _jmk("jobs")
    assert listing.returncode == 0 and record.job_id in listing.stdout and "succeeded" in listing.stdout
    logs = _jmk("logs", record.job_id)
    assert logs.returncode == 0 and logs.stdout == "from the job\n"
    missing = _jmk("logs", "ffffffff")
    assert missing.returncode == 2 and "No job 'ffffffff'" in missing.stderr


def test_storage_url_from_environment(shell: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "elsewhere"
    monkeypatch.setenv("JMK_STORAGE_URL", store.as_uri())
    shell.__dict__.pop("_jmk_service", None)
    shell.run_cell("big = list(range(1000))")
    shell.run_cell_magic("train", "", "n = len(big)")
    assert shell.user_ns["n"] == 1000
    (record,) = service_for(shell).list()
    assert record.payload_uri.startswith(store.as_uri())
    assert (store / "jobs" / record.job_id / "result.json").exists()
    assert len([p for p in (store / "blobs").rglob("*") if p.is_file()]) == 2  # `big` in, `n` out
