"""Tab completion: IPython's completer API on the magics' lines, and argcomplete on ``jmk``.

Real jobs, a real SQLite registry and the real ``jmk`` entry point under argcomplete's protocol.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.completer import CompletionContext, provisionalcompleter
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.magics.common import service_for
from jupyter_mlflow_k8s.magics.train import TrainMagics
from jupyter_mlflow_k8s.tracking.model_registry import ModelNames

REPO = Path(__file__).resolve().parents[1]


def complete(shell: Any, text: str) -> list[str]:
    """What IPython offers at the end of ``text``, each applied: the line as the user would see it."""
    with provisionalcompleter():
        found = list(shell.Completer.completions(text, len(text)))
    return [text[: c.start] + c.text + text[c.end :] for c in found]


def offered(shell: Any, text: str) -> list[str]:
    """The last word of each completed line."""
    return [line.split()[-1] for line in complete(shell, text)]


# --- %%train ---------------------------------------------------------------------------------------


def test_train_flags_come_from_the_magic_itself(shell: Any) -> None:
    flags = {o for a in TrainMagics.train.parser._actions for o in a.option_strings if o.startswith("--")}
    flags.discard("--help")
    assert set(offered(shell, "%%train --")) == flags
    assert complete(shell, "%%train --gpus 1 --ba") == ["%%train --gpus 1 --backend"]
    assert complete(shell, "%%train --sw") == ["%%train --sweep"]


def test_train_values_of_backend_preset_and_search(shell: Any) -> None:
    assert offered(shell, "%%train --backend ") == ["kubernetes", "local"]  # never the internal pipeline backend
    assert complete(shell, "%%train --backend k") == ["%%train --backend kubernetes"]
    assert offered(shell, "%%train --sweep 'lr=[1,2]' --search ") == ["grid", "random", "tpe"]
    shell.config.KubernetesBackend.presets = {"a100": {"gpus": 1}, "cpu-large": {"cpu": 16}}
    try:
        assert offered(shell, "%%train --backend kubernetes --preset ") == ["a100", "cpu-large"]
        assert complete(shell, "%%train --preset a") == ["%%train --preset a100"]
    finally:
        del shell.config.KubernetesBackend["presets"]
    assert "a100" not in offered(shell, "%%train --preset ")


def test_train_completes_only_on_the_cells_first_line(shell: Any) -> None:
    text = "x = 1\n%%train --"
    context = CompletionContext(token="--", full_text=text, cursor_position=10, cursor_line=1, limit=None)
    assert shell._jmk_completer.matcher(context)["completions"] == []  # not a cell magic there
    shell.user_ns["learning_rate"] = 0.1
    body = complete(shell, "%%train --gpus 1\nlearning_r")  # the cell's body is Python
    assert "%%train --gpus 1\nlearning_rate" in body


# --- %job ----------------------------------------------------------------------------------------


def test_job_completes_actions_then_ids_running_first(shell: Any) -> None:
    assert offered(shell, "%job ") == ["attach", "cancel", "logs", "status"]
    assert complete(shell, "%job at") == ["%job attach"]
    shell.run_cell_magic("train", "", "done = 1")
    running = shell.run_cell_magic("train", "--async", "import time\ntime.sleep(60)")
    finished = next(r.job_id for r in service_for(shell).list() if r.job_id != running.job_id)
    for action in ("attach", "logs", "cancel", "status"):
        assert offered(shell, f"%job {action} ") == [running.job_id, finished]
    assert complete(shell, f"%job logs {finished[:3]}") == [f"%job logs {finished}"]
    assert offered(shell, f"%job logs {finished} --f") == ["--follow"]
    running.cancel()


# --- models:/ in %serve and %model ---------------------------------------------------------------


@pytest.fixture
def registry(mlflow_uri: str) -> Iterator[str]:
    """A registered model with versions 1 and 2 and the alias ``champion`` on version 2."""
    name = f"clf-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(mlflow_uri)
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source=(REPO / "README.md").parent.as_uri())
    client.set_registered_model_alias(name, "champion", "2")
    yield name
    client.delete_registered_model(name)


def test_serve_and_model_complete_registry_names_aliases_and_versions(shell: Any, registry: str) -> None:
    shell._jmk_completer.models = ModelNames()  # a fresh cache: the model was registered just now
    assert f"models:/{registry}" in offered(shell, "%serve models:/")
    assert {"list", "stop"} <= set(offered(shell, "%serve "))
    assert complete(shell, f"%serve models:/{registry[:5]}") == [f"%serve models:/{registry}"]
    assert offered(shell, f"%serve models:/{registry}@") == [f"models:/{registry}@champion"]
    assert offered(shell, f"%serve models:/{registry}/") == [f"models:/{registry}/2", f"models:/{registry}/latest"]
    assert f"ep = %serve models:/{registry}" in complete(shell, f"ep = %serve models:/{registry[:4]}")
    assert f"models:/{registry}" in offered(shell, "%model load models:/")
    assert offered(shell, "%model ") == ["alias", "load"]
    assert registry in offered(shell, "%model alias ")
    assert offered(shell, f"%model alias {registry} ") == ["2"]


def test_an_unanswering_tracking_server_gives_no_names_rather_than_a_frozen_tab() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert ModelNames(wait=0.5).get(uri) == {}


# --- jmk under argcomplete -----------------------------------------------------------------------


def argcomplete(line: str, state_dir: Path, tmp_path: Path) -> list[str]:
    """What ``jmk`` answers to a shell's completion request for ``line`` (argcomplete's protocol)."""
    out = tmp_path / f"complete-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "PYTHONPATH": str(REPO), "JMK_STATE_DIR": str(state_dir)}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "jupyter_mlflow_k8s.cli"], env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return [word.strip() for word in out.read_text().split("\013")]


def test_jmk_completes_commands_job_ids_and_models(shell: Any, state_dir: Path, registry: str,
                                                   tmp_path: Path) -> None:  # fmt: skip
    assert argcomplete("jmk lo", state_dir, tmp_path) == ["logs"]
    shell.run_cell_magic("train", "", "done = 1")
    job_id = service_for(shell).list()[0].job_id
    assert job_id in argcomplete("jmk logs ", state_dir, tmp_path)
    assert argcomplete(f"jmk cancel {job_id[:4]}", state_dir, tmp_path) == [job_id]
    assert f"models:/{registry}" in argcomplete("jmk serve models:/", state_dir, tmp_path)
    assert {"list", "stop", "predict"} <= set(argcomplete("jmk serve ", state_dir, tmp_path))
