"""The binder/ environment installs the way repo2docker installs it, into a fresh virtual environment.

repo2docker, given a ``binder/`` folder, ignores the repository root's environment files, installs
``binder/requirements.txt`` with pip, then runs ``binder/postBuild`` from the repository root with the
environment's python first on ``PATH``. This test does the same on a copy of the working tree as a
fresh clone has it (no built labextension, no ``node_modules``), so the sidebar is built from source
by the wheel build, then asks Jupyter what is installed.

It costs minutes (a new environment with torch, MLflow and JupyterLab, and the labextension built
with jlpm): pip's cache is reused through ``PIP_CACHE_DIR``, which ``postBuild`` honours.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run a step; fail with its output when it fails."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # Jupyter's listings are coloured
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{output[-6000:]}"
    return output


def fresh_clone(dest: Path) -> Path:
    """The working tree's files that git would check out (tracked and new, not ignored), copied to ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet staged is still listed
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def pip_cache_dir() -> str:
    done = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    return done.stdout.strip() or str(Path("~/.cache/pip").expanduser())


@pytest.fixture(scope="module")
def binder_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A fresh venv with binder/requirements.txt installed and binder/postBuild run, as repo2docker does.

    Removed afterwards: it takes about 2.5 GB (torch, MLflow, JupyterLab, node_modules)."""
    base = tmp_path_factory.mktemp("binder")
    repo = fresh_clone(base / "repo")
    assert not (repo / "jupyter_mlflow_k8s" / "labextension").exists()
    venv = base / "venv"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("VIRTUAL_ENV", "PYTHON", "JUPYTER", "JMK_", "CONDA"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PIP_CACHE_DIR=pip_cache_dir(), HOME=str(base / "home"), JMK_STATE_DIR=str(base / "state"))
    # HOME is new (repo2docker's user has an empty one), but jlpm's package cache and pip's are reused.
    (base / "home").mkdir()
    yarn_cache = Path("~/.yarn/berry").expanduser()
    if yarn_cache.is_dir():
        (base / "home" / ".yarn").mkdir()
        (base / "home" / ".yarn" / "berry").symlink_to(yarn_cache)
    durations: dict[str, float] = {}
    python = str(venv / "bin" / "python")

    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # --without-pip and ensurepip: the venv's own pip, independent of the one running the tests.
    run([python, "-m", "ensurepip", "--upgrade"], cwd=repo, env=env, timeout=300)
    durations["venv"] = time.monotonic() - started

    started = time.monotonic()
    run([python, "-m", "pip", "install", "-r", "binder/requirements.txt", "-c", "constraints.txt"],
        cwd=repo, env=env, timeout=900)
    durations["requirements.txt"] = time.monotonic() - started

    started = time.monotonic()
    postbuild = run(["bash", "binder/postBuild"], cwd=repo, env=env, timeout=1200)
    durations["postBuild"] = time.monotonic() - started
    print(f"binder steps took {', '.join(f'{k} {v:.0f} s' for k, v in durations.items())}")
    yield {"repo": repo, "venv": venv, "env": env, "postbuild": postbuild, "durations": durations}
    shutil.rmtree(base, ignore_errors=True)


def jupyter(binder_env: dict[str, object], *args: str) -> str:
    venv, env, repo = binder_env["venv"], binder_env["env"], binder_env["repo"]
    assert isinstance(venv, Path) and isinstance(env, dict) and isinstance(repo, Path)
    return run([str(venv / "bin" / "jupyter"), *args], cwd=repo, env=env, timeout=180)


def test_the_labextension_is_installed_and_enabled(binder_env: dict[str, object]) -> None:
    venv = binder_env["venv"]
    assert isinstance(venv, Path)
    share = next((venv / "lib").glob("python3*/site-packages")).parent.parent.parent / "share"
    assert (share / "jupyter" / "labextensions" / "jupyter-mlflow-k8s" / "package.json").is_file()
    text = jupyter(binder_env, "labextension", "list")
    assert re.search(r"jupyter-mlflow-k8s v\S+ enabled\s+\S*OK", text), text


def test_the_server_extension_is_enabled_and_loads(binder_env: dict[str, object]) -> None:
    text = jupyter(binder_env, "server", "extension", "list")
    assert re.search(r"jupyter_mlflow_k8s\.labapp\s+enabled", text), text
    assert re.search(r"jupyter_mlflow_k8s\.labapp\s+(\S+\s+)?OK", text), text


def test_jupyter_lab_runs(binder_env: dict[str, object]) -> None:
    text = jupyter(binder_env, "lab", "--help")
    assert "JupyterLab" in text, text


def test_the_quickstart_has_what_it_imports(binder_env: dict[str, object]) -> None:
    """The quickstart runs on the embedded defaults: the package, torch (CPU) and papermill are there."""
    venv, env, repo = binder_env["venv"], binder_env["env"], binder_env["repo"]
    assert isinstance(venv, Path) and isinstance(env, dict) and isinstance(repo, Path)
    assert (repo / "notebooks" / "quickstart.ipynb").is_file()
    code = ("import jupyter_mlflow_k8s, torch, papermill, mlflow; from jupyter_mlflow_k8s.config import load_settings; "
            "s = load_settings(); print(jupyter_mlflow_k8s.__file__, torch.__version__, s.default_backend, s.tracking_uri)")
    text = run([str(venv / "bin" / "python"), "-c", code], cwd=repo / "notebooks", env=env, timeout=180)
    assert str(venv) in text, f"the package is not the venv's own: {text}"  # installed, not the source tree
    assert " local sqlite:///" in text, text
