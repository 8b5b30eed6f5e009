"""Shared fixtures: an isolated state directory, one real SQLite MLflow store per session,
an in-process IPython shell with the extension loaded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import stop_jobs

# Real servers (mlflow server, an S3 endpoint) as fixtures: tests/servers.py.
pytest_plugins = ["servers", "k8s_fixtures", "serving_fixtures", "trigger_fixtures", "fuzzing"]  # fuzzing: hypothesis profile, case counts


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real SQLite tracking store, created once (its migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str) -> Path:
    """A fresh JMK_STATE_DIR (and an empty JUPYTER_CONFIG_DIR) per test, sharing the session's MLflow store."""
    state = tmp_path / "state"
    monkeypatch.setenv("JMK_STATE_DIR", str(state))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.delenv("JMK_STORAGE_URL", raising=False)
    monkeypatch.delenv("JMK_BACKEND", raising=False)
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "jupyter"))  # `jmk` reads none of the machine's config
    return state


@pytest.fixture
def shell(state_dir: Path) -> Iterator[object]:
    """An in-process IPython shell with ``%load_ext jupyter_mlflow_k8s`` done."""
    from IPython.testing.globalipapp import get_ipython, start_ipython

    ip = start_ipython() or get_ipython()  # the test shell is a process-wide singleton
    assert ip is not None
    ip.reset(new_session=True)
    ip.__dict__.pop("_jmk_service", None)
    ip.__dict__.pop("_jmk_sweeps", None)
    ip.run_line_magic("load_ext", "jupyter_mlflow_k8s")
    yield ip
    ip.__dict__.pop("_jmk_service", None)
    ip.__dict__.pop("_jmk_sweeps", None)
    stop_jobs(state_dir, ip.config)


os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
