"""``GET /jmk/api/triggers`` against a real Jupyter server: the triggers the sidebar lists."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nbformat
import pytest
from labapp_client import raw_request
from nbformat.v4 import new_code_cell, new_notebook
from traitlets.config import Config

from jupyter_mlflow_k8s.pipelines.triggers import TriggerEvaluator, add_trigger, build_trigger

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def jp_server_config(state_dir: Path) -> Config:
    """The extension enabled."""
    return Config({"ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}}})


def _pipeline(folder: Path) -> Path:
    cells = [new_code_cell("new_objects = []", metadata={"tags": ["parameters"]}), new_code_cell("print(new_objects)")]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=cells, metadata=meta), folder / "step.ipynb")
    path = folder / "pipeline.yaml"
    path.write_text("name: retrain\nparameters: {new_objects: []}\nsteps:\n  step: {notebook: step.ipynb}\n")
    return path


async def test_triggers_lists_last_check_last_fire_next_eligible_and_recent(
        jp_fetch: Any, state_dir: Path, tmp_path: Path) -> None:
    response = await jp_fetch("jmk", "api", "triggers")
    assert json.loads(response.body) == {"triggers": []}
    pipeline = _pipeline(tmp_path / "p")
    add_trigger(build_trigger(pipeline, name="ask", on_new_objects="s3://bucket/in/", mode="suggest", cooldown="1h"))
    add_trigger(build_trigger(pipeline, name="drifted", on_drift="iris@prod", psi_above=0.2, hold="15m"))
    listed = {"s3://bucket/in/a.csv": "1", "s3://bucket/in/b.csv": "2"}
    TriggerEvaluator(objects=lambda url, pattern: dict(listed)).tick(T0)

    body = json.loads((await jp_fetch("jmk", "api", "triggers")).body)
    ask, drifted = body["triggers"]
    assert (ask["name"], ask["kind"], ask["mode"], ask["pipeline"]) == ("ask", "new-objects", "suggest",
                                                                        str(pipeline.resolve()))
    assert ask["last_check"] == ask["last_fire"] == T0.timestamp()
    assert ask["next_eligible"] == (T0 + timedelta(hours=1)).timestamp()
    assert ask["recent"] == [{"time": "2026-12-06T12:00:00Z", "event": "suggested", "run_id": None, "exit": None,
                              "objects": 2, "psi": None}]
    assert drifted["last_fire"] is None and drifted["next_eligible"] is None and drifted["recent"] == []
    assert drifted["last_error"].startswith("no drift reading of iris@prod")  # this evaluator reads no drift
    assert drifted["condition"] == "drift of iris@prod: PSI > 0.2 for 15m"


async def test_triggers_needs_a_token(jp_fetch: Any, jp_http_port: int, jp_base_url: str) -> None:
    assert await raw_request(jp_http_port, "GET", f"{jp_base_url}jmk/api/triggers") in (401, 403)
