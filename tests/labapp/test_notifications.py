"""Job-ended events and job resource use, against a real Jupyter server (pytest-jupyter) with the extension.

Events are read where the browser reads them: jupyter_server's ``/api/events/subscribe`` websocket.
Jobs are real local-backend jobs; resource use is read from real ``system/*`` metrics written into a
real run of the session's SQLite MLflow store.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import run_with_system_metrics
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_mlflow_k8s.labapp.notifications import SCHEMA_ID

pytestmark = pytest.mark.slow


@pytest.fixture
def jp_server_config(state_dir: Path) -> Config:
    """The extension enabled on the test's state directory, looking at the jobs every 0.2 s."""
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}},
            "JMKExtensionApp": {"notify_interval": 0.2, "resources_cache_seconds": 0.5},
        }
    )


def _submit(code: str, run_name: str) -> Any:
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.jobs import JobService
    from jupyter_mlflow_k8s.models import JobSpec

    return JobService(load_settings()).submit(JobSpec(code=code, run_name=run_name, experiment="notify"), {})


async def call(jp_fetch: Any, *parts: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
    try:
        response = await jp_fetch("jmk", "api", *parts, params=params or {})
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, json.loads(exc.response.body)
    return response.code, json.loads(response.body)


class Events:
    """The job-ended events the server sends on its event websocket, as the browser gets them."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.seen: list[dict[str, Any]] = []

    async def until(self, job_id: str, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.seen if e["job_id"] == job_id]
            if found:
                return found[0]
            message = await asyncio.wait_for(self.socket.read_message(), max(0.1, deadline - time.monotonic()))
            assert message is not None, "the event websocket closed"
            event = json.loads(message)
            if event["schema_id"] == SCHEMA_ID:
                self.seen.append(event)


@pytest.fixture
def ended_before_start(state_dir: Path) -> str:
    """A job that ended before the server started (made before ``jp_serverapp`` by argument order)."""
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.models import JobState
    from jupyter_mlflow_k8s.records import JobStore

    store = JobStore(load_settings().state_path)
    record = store.create(_spec("print('old')", "old-one"))
    store.update(record.job_id, state=JobState.SUCCEEDED, started=time.time() - 5, finished=time.time() - 1)
    return record.job_id


def _spec(code: str, name: str, **tags: str) -> Any:
    from jupyter_mlflow_k8s.models import JobSpec

    return JobSpec(code=code, run_name=name, experiment="notify", tags=dict(tags))


async def test_a_job_that_ends_is_announced_once_with_its_state_and_duration(
    ended_before_start: str, jp_serverapp: Any, jp_ws_fetch: Any, jp_fetch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What ServerApp.start_ioloop does once its loop runs (pytest-jupyter starts the app without it).
    await jp_serverapp.extension_manager.start_all_extensions()
    events = Events(await jp_ws_fetch("api", "events", "subscribe"))
    await asyncio.sleep(0.5)  # the watcher's first look (it only remembers what is there)

    ok = await asyncio.to_thread(_submit, "import time\ntime.sleep(1)\nprint('done')\n", "notify-ok")
    bad = await asyncio.to_thread(_submit, "raise ValueError('boom')\n", "notify-bad")
    monkeypatch.setenv("JUPYTERHUB_USER", "someone-else")  # this job's record names another owner
    theirs = await asyncio.to_thread(_submit, "print('theirs')\n", "notify-theirs")
    monkeypatch.delenv("JUPYTERHUB_USER")
    assert theirs.owner == "someone-else" and ok.owner != "someone-else"

    first = await events.until(ok.job_id)
    assert first["state"] == "succeeded" and first["name"] == "notify-ok" and first["backend"] == "local"
    assert first["run_id"] == ok.run_id and first["experiment_id"] == ok.experiment_id
    assert first["duration"] is not None and first["duration"] >= 1.0  # it slept a second
    assert first["finished"] >= first["started"]
    second = await events.until(bad.job_id)
    assert second["state"] == "failed" and second["exit_code"] == 1 and second["message"]

    # The other owner's job has ended as well (the listing says so), and nothing was said about it.
    _status, listing = await call(jp_fetch, "jobs")
    states = {j["id"]: j["state"] for j in listing["jobs"]}
    for _ in range(300):
        if states[theirs.job_id] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.1)
        states = {j["id"]: j["state"] for j in (await call(jp_fetch, "jobs"))[1]["jobs"]}
    assert states[theirs.job_id] == "succeeded" and states[ended_before_start] == "succeeded"
    await asyncio.sleep(1.0)  # several more looks of the watcher
    while True:
        try:
            await events.until("no-such-job", timeout=0.5)
        except asyncio.TimeoutError:
            break
    announced = [e["job_id"] for e in events.seen]
    assert theirs.job_id not in announced and ended_before_start not in announced
    assert announced.count(ok.job_id) == 1 and announced.count(bad.job_id) == 1


def test_the_watcher_skips_sweep_trials_and_other_owners_and_remembers_what_it_saw(state_dir: Path) -> None:
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.jobs import JobService
    from jupyter_mlflow_k8s.labapp.notifications import JobEndWatcher
    from jupyter_mlflow_k8s.models import JobState

    jobs = JobService(load_settings())
    me = psutil.Process()
    running = {"state": JobState.RUNNING, "started": time.time(), "pid": me.pid, "pid_start": me.create_time()}
    mine = jobs.store.create(_spec("x = 1", "mine"))
    trial = jobs.store.create(_spec("x = 1", "trial", **{"jmk.sweep": "s-1234abcd"}))
    other = jobs.store.create(_spec("x = 1", "other"))
    for record in (mine, trial, other):
        jobs.store.update(record.job_id, **running)
    jobs.store.update(other.job_id, owner="someone-else")
    watcher = JobEndWatcher(jobs.list, mine.owner)
    assert watcher.check() == []  # the first look only remembers
    assert watcher.check() == []  # nothing ended
    for record in (mine, trial, other):
        jobs.store.update(record.job_id, state=JobState.CANCELLED, finished=time.time())
    (event,) = watcher.check()
    assert event["job_id"] == mine.job_id and event["state"] == "cancelled" and event["name"] == "mine"
    assert watcher.check() == []  # said once


def _run_with_system_metrics(uri: str, gpus: int) -> str:
    return run_with_system_metrics(uri, "notify-resources", gpus)


def _running_record(state_dir: Path, run_id: str | None, tracking_uri: str, name: str) -> str:
    """The record of a running job whose runner is elsewhere (as a Kubernetes pod's is), on run ``run_id``."""
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.models import JobState
    from jupyter_mlflow_k8s.records import JobStore

    store = JobStore(load_settings().state_path)
    record = store.create(_spec("train()", name))
    me = psutil.Process()
    store.update(
        record.job_id,
        state=JobState.RUNNING,
        started=time.time() - 15,
        run_id=run_id,
        tracking_uri=tracking_uri,
        pid=me.pid,
        pid_start=me.create_time(),
    )
    return record.job_id


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_resources_of_a_running_job_and_its_gpu_percent_in_the_listing(
    jp_fetch: Any, state_dir: Path, mlflow_uri: str
) -> None:
    run_id = await asyncio.to_thread(_run_with_system_metrics, mlflow_uri, 2)
    job_id = _running_record(state_dir, run_id, mlflow_uri, "with-gpus")
    cpu_only = _running_record(
        state_dir, await asyncio.to_thread(_run_with_system_metrics, mlflow_uri, 0), mlflow_uri, "cpu-only"
    )

    status, body = await call(jp_fetch, "jobs", job_id, "resources")
    assert status == 200, body
    assert body["job_id"] == job_id and body["run_id"] == run_id and body["state"] == "running"
    assert body["message"] is None
    assert body["cpu_percent"] == 30.0 and body["memory_mb"] == 1200.0 and body["memory_percent"] == 12.5
    assert body["gpus"] == [
        {"index": 0, "utilization_percent": 42.0, "memory_mb": 2048.0, "memory_percent": 25.0},
        {"index": 1, "utilization_percent": 62.0, "memory_mb": 4096.0, "memory_percent": 25.0},
    ]
    history = body["history"]
    assert [v for _, v in history["cpu_percent"]] == [10.0, 20.0, 30.0]
    assert [v for _, v in history["memory_mb"]] == [1000.0, 1100.0, 1200.0]
    assert [v for _, v in history["gpu_percent"]] == [50.0, 51.0, 52.0]  # the mean of the two GPUs
    times = [t for t, _ in history["cpu_percent"]]
    assert times == sorted(times) and times[2] - times[0] == pytest.approx(10.0) and body["sampled_at"] == times[2]

    status, body = await call(jp_fetch, "jobs", cpu_only, "resources")
    assert status == 200 and body["cpu_percent"] == 30.0 and body["gpus"] == []
    assert body["history"]["gpu_percent"] == []

    async def listed() -> dict[str, Any]:
        _status, listing = await call(jp_fetch, "jobs")
        return {j["id"]: j for j in listing["jobs"]}

    jobs = await listed()
    for _ in range(100):  # the listing answers from the cache; a fresh value is read behind it
        if jobs[job_id]["gpu_percent"] is not None:
            break
        await asyncio.sleep(0.1)
        jobs = await listed()
    assert jobs[job_id]["gpu_percent"] == 52.0
    assert jobs[cpu_only]["gpu_percent"] is None


async def test_resources_say_why_when_there_is_nothing_to_show(jp_fetch: Any, state_dir: Path, mlflow_uri: str) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"
    unreachable = _running_record(state_dir, "0123456789abcdef", down, "server-down")
    no_run = _running_record(state_dir, None, mlflow_uri, "no-run")
    plain_run = _running_record(state_dir, await asyncio.to_thread(_plain_run, mlflow_uri), mlflow_uri, "no-metrics")

    status, body = await call(jp_fetch, "jobs", unreachable, "resources")
    assert status == 200, body
    assert "does not answer" in body["message"] and body["cpu_percent"] is None and body["gpus"] == []
    status, body = await call(jp_fetch, "jobs", no_run, "resources")
    assert status == 200 and "no MLflow run yet" in body["message"]
    status, body = await call(jp_fetch, "jobs", plain_run, "resources")
    assert status == 200 and "No system metrics yet" in body["message"] and body["cpu_percent"] is None

    status, listing = await call(jp_fetch, "jobs")  # a tracking server that is down never fails the listing
    assert status == 200
    assert {j["id"]: j["gpu_percent"] for j in listing["jobs"]}[unreachable] is None
    status, error = await call(jp_fetch, "jobs", "nope0000", "resources")
    assert status == 404 and "nope0000" in error["message"]


def _plain_run(uri: str) -> str:
    """A real run with a training metric and no system metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("notify-plain")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("notify-plain")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss", 0.5)
    return run_id


async def test_openapi_describes_resources_and_the_listed_gpu_percent(jp_fetch: Any) -> None:
    import yaml

    spec = yaml.safe_load((await jp_fetch("jmk", "api", "openapi.yaml")).body)
    schemas = spec["components"]["schemas"]
    assert "/jobs/{id}/resources" in spec["paths"]
    assert set(schemas["Resources"]["required"]) == {
        "job_id",
        "run_id",
        "state",
        "cpu_percent",
        "memory_mb",
        "memory_percent",
        "gpus",
        "sampled_at",
        "history",
        "message",
    }
    assert "gpu_percent" in schemas["JobListed"]["allOf"][1]["required"]


def test_the_event_schema_is_valid_for_jupyter_events() -> None:
    from jupyter_events import EventLogger

    from jupyter_mlflow_k8s.labapp.notifications import SCHEMA

    logger = EventLogger()
    logger.register_event_schema(SCHEMA)
    assert SCHEMA_ID in logger.schemas


CONCURRENT_FIRST_READS = """
import json, sys, threading
from jupyter_mlflow_k8s.config import load_settings
from jupyter_mlflow_k8s.labapp.service import SidebarService

assert "mlflow" not in sys.modules
service = SidebarService(load_settings())
calls = [lambda: service.search_runs("", [], [], None, 10), lambda: service.job_resources(sys.argv[1]),
         lambda: service.models(), lambda: service.run(sys.argv[2])]
start, errors = threading.Barrier(len(calls)), []

def go(call):
    start.wait()
    try:
        call()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")

threads = [threading.Thread(target=go, args=(call,)) for call in calls]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(errors))
"""


def test_the_first_mlflow_reads_of_several_threads_at_once_all_work(state_dir: Path, mlflow_uri: str) -> None:
    """The runs table, a job's resource use and the registry asked at once, before MLflow was ever imported."""
    import subprocess
    import sys

    run_id = _run_with_system_metrics(mlflow_uri, 1)
    job_id = _running_record(state_dir, run_id, mlflow_uri, "first-reads")
    checkout = str(Path(__file__).resolve().parents[2])
    result = subprocess.run(
        [sys.executable, "-c", CONCURRENT_FIRST_READS, job_id, run_id],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": checkout},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
