"""``GET /jmk/api/triggers`` against a real Jupyter server: the triggers the sidebar lists."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nbformat
import pytest
from labapp_client import raw_request
from nbformat.v4 import new_code_cell, new_notebook
from traitlets.config import Config

from jupyter_mlflow_k8s.labapp.trigger_notifications import SCHEMA_ID
from jupyter_mlflow_k8s.pipelines.triggers import (
    TriggerEvaluator,
    add_trigger,
    build_trigger,
    get_trigger,
    load_cursor,
)

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def jp_server_config(state_dir: Path) -> Config:
    """The extension enabled, looking at the triggers' histories every 0.2 s."""
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}},
            "JMKExtensionApp": {"notify_interval": 0.2},
        }
    )


def _pipeline(folder: Path) -> Path:
    cells = [new_code_cell("new_objects = []", metadata={"tags": ["parameters"]}), new_code_cell("print(new_objects)")]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=cells, metadata=meta), folder / "step.ipynb")
    path = folder / "pipeline.yaml"
    path.write_text("name: retrain\nparameters: {new_objects: []}\nsteps:\n  step: {notebook: step.ipynb}\n")
    return path


async def test_triggers_lists_last_check_last_fire_next_eligible_and_recent(
    jp_fetch: Any, state_dir: Path, tmp_path: Path
) -> None:
    response = await jp_fetch("jmk", "api", "triggers")
    assert json.loads(response.body) == {"triggers": []}
    pipeline = _pipeline(tmp_path / "p")
    add_trigger(build_trigger(pipeline, name="ask", on_new_objects="s3://bucket/in/", mode="suggest", cooldown="1h"))
    add_trigger(build_trigger(pipeline, name="drifted", on_drift="iris@prod", psi_above=0.2, hold="15m"))
    listed = {"s3://bucket/in/a.csv": "1", "s3://bucket/in/b.csv": "2"}
    TriggerEvaluator(objects=lambda url, pattern: dict(listed)).tick(T0)

    body = json.loads((await jp_fetch("jmk", "api", "triggers")).body)
    ask, drifted = body["triggers"]
    assert (ask["name"], ask["kind"], ask["mode"], ask["pipeline"]) == (
        "ask",
        "new-objects",
        "suggest",
        str(pipeline.resolve()),
    )
    assert ask["last_check"] == ask["last_fire"] == T0.timestamp()
    assert ask["next_eligible"] == (T0 + timedelta(hours=1)).timestamp()
    assert ask["recent"] == [
        {"time": "2026-12-06T12:00:00Z", "event": "suggested", "run_id": None, "exit": None, "objects": 2, "psi": None}
    ]
    assert drifted["last_fire"] is None and drifted["next_eligible"] is None and drifted["recent"] == []
    assert drifted["last_error"].startswith("no drift reading of iris@prod")  # this evaluator reads no drift
    assert drifted["condition"] == "drift of iris@prod: PSI > 0.2 for 15m"


async def test_triggers_needs_a_token(jp_fetch: Any, jp_http_port: int, jp_base_url: str) -> None:
    assert await raw_request(jp_http_port, "GET", f"{jp_base_url}jmk/api/triggers") in (401, 403)


async def _trigger_events(socket: Any, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The first ``count`` trigger events on the event websocket, as the browser gets them."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        message = await asyncio.wait_for(socket.read_message(), max(0.1, deadline - time.monotonic()))
        assert message is not None, "the event websocket closed"
        event = json.loads(message)
        if event["schema_id"] == SCHEMA_ID:
            found.append(event)
    return found


async def test_a_fire_and_a_suggestion_are_announced_once_on_the_event_bus(
    jp_serverapp: Any, jp_ws_fetch: Any, state_dir: Path, tmp_path: Path
) -> None:
    # What ServerApp.start_ioloop does once its loop runs (pytest-jupyter starts the app without it).
    await jp_serverapp.extension_manager.start_all_extensions()
    socket = await jp_ws_fetch("api", "events", "subscribe")
    pipeline = _pipeline(tmp_path / "p")
    listed = {"s3://bucket/in/a.csv": "1", "s3://bucket/in/b.csv": "2", "s3://bucket/in/c.csv": "3"}
    # A suggestion written before the server started (its time is in the past): never announced.
    add_trigger(build_trigger(pipeline, name="earlier", on_new_objects="s3://bucket/in/", mode="suggest"))
    TriggerEvaluator(objects=lambda url, pattern: dict(listed)).tick(T0)

    add_trigger(build_trigger(pipeline, name="ask", on_new_objects="s3://bucket/in/", mode="suggest"))
    add_trigger(build_trigger(pipeline, name="go", on_new_objects="s3://bucket/in/", mode="run"))
    evaluator = TriggerEvaluator(objects=lambda url, pattern: dict(listed))
    assert sorted(await asyncio.to_thread(evaluator.tick)) == ["ask", "go"]
    events = {e["trigger"]: e for e in await _trigger_events(socket, 2)}

    ask, go = events["ask"], events["go"]
    assert (ask["event"], ask["mode"], ask["objects"], ask["run_id"]) == ("suggested", "suggest", 3, None)
    assert shlex.split(ask["command"])[:6] == [
        "jmk",
        "pipeline",
        "run",
        str(pipeline.resolve()),
        "-p",
        "new_objects=" + json.dumps(sorted(listed)),
    ]
    assert ask["condition"] == "new objects in s3://bucket/in/ matching *"
    assert (go["event"], go["mode"], go["objects"]) == ("fired", "run", 3)
    assert go["run_id"] == load_cursor("go").last_run_id and go["command"] is None
    assert abs(go["time"] - time.time()) < 600

    # The run's end, a check that fires nothing and the earlier trigger's old entry: no more events.
    while await asyncio.to_thread(evaluator.running, get_trigger("go"), load_cursor("go")):
        await asyncio.sleep(0.2)
    await asyncio.to_thread(evaluator.tick)
    with pytest.raises(asyncio.TimeoutError):
        await _trigger_events(socket, 1, timeout=1.5)
