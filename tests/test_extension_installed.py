"""The installed package shows up in Jupyter's own listings: the server extension and the labextension, enabled.

These read the environment the test suite runs in (``make test`` installs the package with
``pip install -e '.[test]'``, which builds the labextension and installs both into the venv's
``share/jupyter`` and ``etc/jupyter``), the way a user checks an installation.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

JUPYTER = [sys.executable, "-m", "jupyter"]


def listing(*args: str) -> str:
    """What ``jupyter ARGS`` prints, without its colours."""
    done = subprocess.run([*JUPYTER, *args], capture_output=True, text=True, timeout=120)
    return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)


def test_server_extension_is_listed_enabled() -> None:
    text = listing("server", "extension", "list")
    assert re.search(r"jupyter_mlflow_k8s\.labapp\s+enabled", text), text
    assert re.search(r"jupyter_mlflow_k8s\.labapp\s+(\S+\s+)?OK", text), text  # it imports and validates


def test_labextension_is_listed_enabled() -> None:
    share = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyter-mlflow-k8s"
    if not (share / "package.json").exists():
        pytest.fail(f"{share} has no package.json: the package was installed without building the labextension "
                    "(pip install -e '.[test]' builds it with Node.js)")
    text = listing("labextension", "list")
    assert re.search(r"jupyter-mlflow-k8s v\S+ enabled\s+\S*OK", text), text
