"""The server extension's REST API against a real Jupyter server (pytest-jupyter), with the session's real
MLflow store, real jobs (local backend processes) and authentication enforced."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from labapp_client import EventStream, raw_request
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def jp_server_config(state_dir: Path) -> Config:
    """The extension enabled, on the test's state directory (JMK_STATE_DIR, MLFLOW_TRACKING_URI set first)."""
    return Config({"ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}}})


async def call(jp_fetch: Any, *parts: str, method: str = "GET", body: Any = None,
               params: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, JSON body) of one authenticated request; errors are returned, not raised."""
    kwargs: dict[str, Any] = {"method": method, "params": params or {}}
    if body is not None:
        kwargs["body"] = body if isinstance(body, (str, bytes)) else json.dumps(body)
    elif method in ("POST", "PUT"):
        kwargs["body"] = b""
    try:
        response = await jp_fetch("jmk", "api", *parts, **kwargs)
    except HTTPClientError as exc:
        assert exc.response is not None
        assert exc.response.headers["Content-Type"].startswith("application/json")
        return exc.code, json.loads(exc.response.body)
    return response.code, json.loads(response.body) if response.body else None


def api_path(jp_base_url: str, path: str) -> str:
    return f"{jp_base_url}jmk/api/{path}"


# --- server, auth, status -------------------------------------------------------------------------


async def test_requests_without_a_token_are_refused(jp_fetch: Any, jp_http_port: int, jp_base_url: str,
                                                    jp_serverapp: Any) -> None:
    token = jp_serverapp.identity_provider.token
    for method, path in (("GET", "status"), ("GET", "openapi.yaml"), ("GET", "jobs"), ("GET", "jobs/abc"),
                         ("GET", "jobs/abc/log"), ("GET", "jobs/abc/log/stream"), ("POST", "jobs/abc/cancel"),
                         ("GET", "runs"), ("GET", "runs/abc"), ("GET", "runs/abc/metrics/loss"),
                         ("GET", "runs/abc/artifacts"), ("GET", "models"), ("GET", "models/m/versions"),
                         ("PUT", "models/m/aliases/a"), ("DELETE", "models/m/aliases/a"), ("GET", "endpoints"),
                         ("GET", "endpoints/e/metrics"), ("GET", "endpoints/e/metrics/stream"), ("GET", "nope"),
                         ("GET", "jobs/abc/resources")):
        status = await raw_request(jp_http_port, method, api_path(jp_base_url, path), body=b'{"version": "1"}')
        assert status in (401, 403), (method, path, status)
    assert await raw_request(jp_http_port, "GET", api_path(jp_base_url, "status"), token="wrong") == 403
    assert await raw_request(jp_http_port, "GET", api_path(jp_base_url, "status"), token=token) == 200


async def test_status_openapi_and_unknown_paths(jp_fetch: Any, state_dir: Path, mlflow_uri: str) -> None:
    import jupyter_mlflow_k8s

    status, body = await call(jp_fetch, "status")
    assert status == 200
    assert body == {"version": jupyter_mlflow_k8s.__version__, "tracking_uri": mlflow_uri, "mlflow_ui_url": None,
                    "state_dir": str(state_dir)}
    response = await jp_fetch("jmk", "api", "openapi.yaml")
    assert response.headers["Content-Type"].startswith("application/yaml")
    spec = yaml.safe_load(response.body)
    assert spec["openapi"].startswith("3.1")
    assert {"/status", "/jobs", "/jobs/{id}", "/jobs/{id}/log", "/jobs/{id}/log/stream", "/jobs/{id}/cancel",
            "/runs", "/runs/{run_id}", "/runs/{run_id}/metrics/{key}", "/runs/{run_id}/artifacts", "/models",
            "/models/{name}/versions", "/models/{name}/aliases/{alias}", "/endpoints", "/endpoints/{name}/metrics",
            "/endpoints/{name}/metrics/stream"} <= set(spec["paths"])
    status, body = await call(jp_fetch, "no", "such", "thing")
    assert status == 404 and "openapi.yaml" in body["message"] and body["reason"] == "Not Found"


# --- jobs -----------------------------------------------------------------------------------------

CHATTY = """
import time
print("first line", flush=True)
for i in range(600):
    print(f"line {i} é", flush=True)
    time.sleep(0.05)
"""


def _submit(code: str, run_name: str) -> Any:
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.jobs import JobService
    from jupyter_mlflow_k8s.models import JobSpec

    return JobService(load_settings()).submit(JobSpec(code=code, run_name=run_name, experiment="sidebar-jobs"), {})


async def _wait(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.mark.slow
async def test_jobs_list_detail_log_stream_and_cancel(jp_fetch: Any, jp_http_port: int, jp_base_url: str,
                                                      jp_serverapp: Any, state_dir: Path) -> None:
    from jupyter_mlflow_k8s.labapp.handlers import JobLogStreamHandler

    record = await asyncio.to_thread(_submit, CHATTY, "chatty")
    job_id = record.job_id

    async def running() -> bool:
        status, body = await call(jp_fetch, "jobs", job_id, "log")
        return status == 200 and "line 3 " in body["text"]

    await _wait(running)
    status, body = await call(jp_fetch, "jobs")
    assert status == 200
    (listed,) = [j for j in body["jobs"] if j["id"] == job_id]
    assert listed["state"] == "running" and listed["name"] == "chatty" and listed["experiment"] == "sidebar-jobs"
    assert listed["backend"] == "local" and listed["run_id"] and listed["started"] and listed["finished"] is None
    assert set(listed) == {"id", "state", "backend", "name", "experiment", "created", "started", "finished", "run_id",
                           "experiment_id", "gpus", "message", "notes", "exit_code", "gpu_percent"}

    status, detail = await call(jp_fetch, "jobs", job_id[:6])  # a unique prefix is enough
    assert status == 200 and detail["id"] == job_id and detail["code"] == CHATTY and detail["log_size"] > 0
    assert detail["resources"] == {"cpu": None, "memory": None, "gpus": 0}

    status, tail = await call(jp_fetch, "jobs", job_id, "log", params={"tail": 40})
    assert status == 200 and tail["truncated"] and tail["offset"] >= detail["log_size"]
    assert tail["text"].startswith("line ") and "first line" not in tail["text"] and len(tail["text"]) <= 40

    for parts, params, code in ((("jobs", "nope0000"), {}, 404), (("jobs", "..%2F..%2Fetc"), {}, 404),
                                (("jobs", "nope0000", "log"), {}, 404), (("jobs", job_id, "log"), {"tail": "x"}, 400),
                                (("jobs", job_id, "log"), {"tail": "-1"}, 400), (("jobs",), {"limit": "0"}, 400)):
        status, error = await call(jp_fetch, *parts, params=params)
        assert status == code, (parts, params, error)
        assert error["message"] and error["reason"]

    # The live stream: the state first, then lines as the job prints them; it stops when the client leaves.
    token = jp_serverapp.identity_provider.token
    stream = await EventStream.open(jp_http_port, api_path(jp_base_url, f"jobs/{job_id}/log/stream"), token)
    assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
    first = await stream.next()
    assert first is not None and first.event == "state" and first.data["state"] == "running"
    seen, last_offset = "", 0
    while "line 30 é" not in seen:
        event = await stream.next()
        assert event is not None and event.event == "log"
        assert event.data["offset"] > last_offset and event.id == str(event.data["offset"])
        seen, last_offset = seen + event.data["text"], event.data["offset"]
    assert "first line\nline 0 é\nline 1 é\n" in seen
    status, now = await call(jp_fetch, "jobs", job_id)
    assert now["state"] == "running", "the lines arrived while the job was running"
    assert JobLogStreamHandler.followers
    stream.close()

    async def followers_gone() -> bool:
        return not JobLogStreamHandler.followers

    await _wait(followers_gone, timeout=5)

    status, cancelled = await call(jp_fetch, "jobs", job_id, "cancel", method="POST")
    assert status == 202 and cancelled["id"] == job_id

    async def ended() -> Any:
        _status, body = await call(jp_fetch, "jobs", job_id)
        return body if body["state"] == "cancelled" else None

    final = await _wait(ended, timeout=30)
    assert final["finished"] is not None
    status, error = await call(jp_fetch, "jobs", job_id, "cancel", method="POST")
    assert status == 409 and "already ended (cancelled)" in error["message"]
    status, error = await call(jp_fetch, "jobs", "nope0000", "cancel", method="POST")
    assert status == 404

    # A stream of an ended job, from an offset: the rest of its log, then `end` with the final state.
    stream = await EventStream.open(jp_http_port, api_path(jp_base_url, f"jobs/{job_id}/log/stream?offset={last_offset}"),
                                    token)
    events = []
    while (event := await stream.next()) is not None:
        events.append(event)
    stream.close()
    assert events[0].event == "state" and events[-1].event == "end" and events[-1].data["state"] == "cancelled"
    rest = "".join(e.data["text"] for e in events if e.event == "log")
    assert "first line" not in rest
    numbers = [int(m) for m in re.findall(r"^line (\d+) é$", seen + rest, flags=re.MULTILINE)]
    assert len(numbers) > 31 and numbers == list(range(len(numbers))), "resumed at the offset: nothing lost or repeated"


# --- runs -----------------------------------------------------------------------------------------


@pytest.fixture
def seeded_runs(state_dir: Path, mlflow_uri: str) -> dict[str, Any]:
    """Two experiments with runs tagged by a fresh id: losses 0.1 .. 0.6, one run named like an XSS attempt."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    mark = uuid.uuid4().hex[:8]
    ids = [client.create_experiment(f"sidebar-{mark}-{n}") for n in ("a", "b")]
    runs = {}
    for i, loss in enumerate((0.4, 0.1, 0.6, 0.3, 0.5, 0.2)):
        name = XSS if i == 0 else f"run-{i}"
        run = client.create_run(ids[i % 2], run_name=name, tags={"mark": mark, "jmk.job_id": f"job{i}", "other": "x"})
        client.log_metric(run.info.run_id, "loss", loss)
        client.log_metric(run.info.run_id, "train/loss", loss, step=0)
        client.log_metric(run.info.run_id, "train/loss", loss / 2, step=1)
        for p in range(12):
            client.log_param(run.info.run_id, f"p{p:02d}", str(p * i))
        client.set_terminated(run.info.run_id)
        runs[name] = run.info.run_id
    client.log_text(runs["run-1"], "hello", "notes/readme.txt")
    return {"mark": mark, "experiment_ids": ids, "runs": runs}


@pytest.mark.slow
async def test_runs_search_filter_sort_pages_and_errors(jp_fetch: Any, seeded_runs: dict[str, Any]) -> None:
    mark, ids = seeded_runs["mark"], seeded_runs["experiment_ids"]
    params = {"filter": f"tags.mark = '{mark}'", "order_by": "metrics.loss ASC", "experiment_ids": ",".join(ids)}
    status, body = await call(jp_fetch, "runs", params=params)
    assert status == 200
    assert [r["metrics"]["loss"] for r in body["runs"]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert body["total"] == 6 and body["next_page_token"] is None
    assert {r["experiment_name"] for r in body["runs"]} == {f"sidebar-{mark}-a", f"sidebar-{mark}-b"}
    row = body["runs"][3]
    assert row["run_name"] == XSS, "the name comes back as the very same text"
    assert len(row["params"]) == 10 and set(row["tags"]) == {"mlflow.runName", "jmk.job_id"}
    assert row["status"] == "FINISHED" and row["end_time"] >= row["start_time"] > 1e9

    # Every experiment when none is given; a filter on metrics; pages that do not overlap.
    status, body = await call(jp_fetch, "runs", params={"filter": f"tags.mark = '{mark}' and metrics.loss < 0.35"})
    assert sorted(r["metrics"]["loss"] for r in body["runs"]) == [0.1, 0.2, 0.3]
    pages, token = [], None
    while True:
        page_params = {**params, "max_results": 4, **({"page_token": token} if token else {})}
        status, body = await call(jp_fetch, "runs", params=page_params)
        assert status == 200 and body["total"] is None
        pages.append([r["metrics"]["loss"] for r in body["runs"]])
        token = body["next_page_token"]
        if not token:
            break
    assert pages == [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6]]

    for bad, code, words in (({"filter": "metrics.loss <<< 1"}, 400, "comparator"),
                             ({"filter": "nonsense"}, 400, "nonsense"),
                             ({"order_by": "metrics.loss SIDEWAYS"}, 400, "SIDEWAYS"),
                             ({"page_token": "not-a-token"}, 400, "token"),
                             ({"max_results": "0"}, 400, "max_results"),
                             ({"max_results": "many"}, 400, "max_results"),
                             ({"experiment_ids": "987654321"}, 404, "987654321")):
        status, error = await call(jp_fetch, "runs", params=bad)
        assert status == code, (bad, error)
        assert words.lower() in error["message"].lower(), (bad, error)


@pytest.mark.slow
async def test_run_detail_history_artifacts_and_plain_text_names(jp_fetch: Any, seeded_runs: dict[str, Any]) -> None:
    run_id = seeded_runs["runs"][XSS]
    response = await jp_fetch("jmk", "api", "runs", run_id)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    detail = json.loads(response.body)
    assert detail["run_name"] == XSS and detail["tags"]["mlflow.runName"] == XSS and detail["tags"]["other"] == "x"
    assert len(detail["params"]) == 12 and detail["metric_keys"] == ["loss", "train/loss"]

    status, history = await call(jp_fetch, "runs", run_id, "metrics", "train/loss")
    assert status == 200 and history["key"] == "train/loss"
    assert [(p["step"], p["value"]) for p in history["history"]] == [(0, 0.4), (1, 0.2)]
    status, error = await call(jp_fetch, "runs", run_id, "metrics", "accuracy")
    assert status == 404 and "loss, train/loss" in error["message"]

    status, listing = await call(jp_fetch, "runs", seeded_runs["runs"]["run-1"], "artifacts")
    assert status == 200 and listing["files"] == [{"path": "notes", "is_dir": True, "file_size": None}]
    status, listing = await call(jp_fetch, "runs", seeded_runs["runs"]["run-1"], "artifacts", params={"path": "notes"})
    assert listing["files"] == [{"path": "notes/readme.txt", "is_dir": False, "file_size": 5}]
    status, error = await call(jp_fetch, "runs", run_id, "artifacts", params={"path": "../../etc"})
    assert status == 400 and ".." in error["message"]

    missing = "0" * 32
    for parts in (("runs", missing), ("runs", missing, "metrics", "loss"), ("runs", missing, "artifacts")):
        status, error = await call(jp_fetch, *parts)
        assert status == 404, (parts, error)


# --- models ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_models_versions_and_aliases(jp_fetch: Any, served_model: Any, state_dir: Path) -> None:
    name = served_model.name
    status, body = await call(jp_fetch, "models")
    assert status == 200
    (model,) = [m for m in body["models"] if m["name"] == name]
    assert model["aliases"]["prod"] == served_model.versions[0]
    status, body = await call(jp_fetch, "models", name, "versions")
    assert [v["version"] for v in body["versions"]] == list(reversed(served_model.versions))
    assert "prod" in body["versions"][-1]["aliases"] and body["versions"][0]["run_id"]

    alias = f"sidebar{uuid.uuid4().hex[:6]}"
    status, body = await call(jp_fetch, "models", name, "aliases", alias, method="PUT",
                              body={"version": served_model.versions[1]})
    assert status == 200 and body == {"name": name, "alias": alias, "version": served_model.versions[1]}
    status, body = await call(jp_fetch, "models", name, "versions")
    assert alias in body["versions"][0]["aliases"]

    for payload, code, words in (("not json", 400, "not JSON"), ({}, 400, '{"version": "3"}'),
                                 ({"version": "two"}, 400, '{"version": "3"}'), ({"version": True}, 400, "version"),
                                 ({"version": "999"}, 404, "999")):
        status, error = await call(jp_fetch, "models", name, "aliases", alias, method="PUT", body=payload)
        assert status == code and words in error["message"], (payload, error)
    status, error = await call(jp_fetch, "models", name, "aliases", alias, method="PUT", body=b"")
    assert status == 400
    status, error = await call(jp_fetch, "models", "no-such-model", "aliases", alias, method="PUT",
                               body={"version": "1"})
    assert status == 404 and "no-such-model" in error["message"]
    status, error = await call(jp_fetch, "models", name, "aliases", "latest", method="PUT", body={"version": "1"})
    assert status == 400  # MLflow reserves it
    status, error = await call(jp_fetch, "models", "no-such-model", "versions")
    assert status == 404

    status, body = await call(jp_fetch, "models", name, "aliases", alias, method="DELETE")
    assert status == 204 and body is None
    status, error = await call(jp_fetch, "models", name, "aliases", alias, method="DELETE")
    assert status == 404 and "prod" in error["message"]
    status, body = await call(jp_fetch, "models")
    (model,) = [m for m in body["models"] if m["name"] == name]
    assert alias not in model["aliases"]


# --- configuration --------------------------------------------------------------------------------


def test_the_config_file_enables_the_extension_and_the_wheel_ships_it(tmp_path: Path) -> None:
    import tomllib
    from jupyter_server.extension.manager import ExtensionManager

    root = Path(__file__).resolve().parents[2]
    config = json.loads((root / "jupyter-config/jupyter_server_config.d/jupyter_mlflow_k8s.json").read_text())
    assert config == {"ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}}}
    shared = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "shared-data"]
    assert shared["jupyter-config/jupyter_server_config.d/jupyter_mlflow_k8s.json"] == \
        "etc/jupyter/jupyter_server_config.d/jupyter_mlflow_k8s.json"
    manager = ExtensionManager()
    manager.add_extension("jupyter_mlflow_k8s.labapp", enabled=True)
    package = manager.extensions["jupyter_mlflow_k8s.labapp"]
    assert package.validate()
    (point,) = package.extension_points.values()
    assert point.app is not None and point.app.name == "jupyter_mlflow_k8s"


def test_a_server_reading_the_config_dir_enables_and_validates_it() -> None:
    """What ``jupyter server extension list`` would say once the wheel put the file in etc/jupyter: the
    server finds the extension enabled in the config path and validates it (a fresh process, config
    only from JUPYTER_CONFIG_PATH; ``extension list`` itself only reads the user/env/system dirs)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    script = (
        "from jupyter_server.serverapp import ServerApp\n"
        "app = ServerApp()\n"
        "app.find_server_extensions()\n"
        "app.init_server_extensions()\n"
        "package = app.extension_manager.extensions['jupyter_mlflow_k8s.labapp']\n"
        "print('RESULT', package.enabled, package.validate())\n"
    )
    env = {**os.environ, "JUPYTER_CONFIG_PATH": str(root / "jupyter-config"), "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          check=False, cwd=root)
    assert "RESULT True True" in done.stdout, done.stdout + done.stderr
