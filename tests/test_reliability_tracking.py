"""Faults of the tracking server, injected for real: an ``mlflow server`` killed mid-job, one that hangs.

In each, a local job logs metrics while its tracking server goes away. The job's end (state,
exit code, results) must be recorded at once, the listing must say what could not be reached,
and once the server answers again the run's closing (status, log, every metric point) is sent
exactly once by whoever lists the jobs next.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import process_gone, stop_jobs, wait_for
from servers import ServerProcess, _mlflow_env, free_port, start_mlflow

from jupyter_mlflow_k8s.config import load_settings
from jupyter_mlflow_k8s.jobs import JobService
from jupyter_mlflow_k8s.models import JobSpec, JobState
from jupyter_mlflow_k8s.tracking import CLOSE_STEPS

STEPS = 30
# The cell logs ten points, waits at a gate (the fault is injected then), logs twenty more.
CELL = f"""
import os, time
import mlflow
for i in range({STEPS}):
    mlflow.log_metric("loss", 1.0 / (i + 1), step=i)
    print("step", i, flush=True)
    if i == 9:
        time.sleep(0.6)  # the buffered points of steps 0-9 are sent (JMK_METRICS_FLUSH_SECONDS)
        print("waiting at the gate", flush=True)
        while not os.path.exists(os.environ["GATE"]):
            time.sleep(0.05)
answer = 42
"""


class Mlflow:
    """An ``mlflow server`` on a SQLite store that can be killed and started again on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server: ServerProcess | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["--default-artifact-root", str(self.root / "artifacts")]
        self.server, _ = start_mlflow(self.root, args, _mlflow_env(), port=self.port)

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def kill(self) -> None:
        assert self.server is not None
        os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.stop()


class HangingProxy:
    """A TCP proxy in front of a server that, while ``hang`` is set, takes requests and answers none."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.hang = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.held = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, source: socket.socket, target: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(65536):
                if requests and self.hang.is_set():
                    self.held += 1
                    while self.hang.is_set():  # the request waits here; its client times out
                        time.sleep(0.1)
                    return  # the client has given up on this connection: drop it
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def mlflow_server_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mlflow]:
    server = Mlflow(tmp_path_factory.mktemp("mlflow-faults"))
    server.start()
    try:
        yield server
    finally:
        if server.running:
            assert server.server is not None
            server.server.stop()


@pytest.fixture
def mlflow_server_here(mlflow_server_once: Mlflow) -> Mlflow:
    """The module's server, running (a test before may have killed it)."""
    if not mlflow_server_once.running:
        mlflow_server_once.start()
    return mlflow_server_once


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "gate"
    monkeypatch.setenv("GATE", str(path))
    monkeypatch.setenv("JMK_METRICS_FLUSH_SECONDS", "0.2")
    return path


def _service(state_dir: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> JobService:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    return JobService(load_settings(state_dir=str(state_dir)))


def _run_until_the_gate(service: JobService, gate: Path) -> str:
    record = service.submit(JobSpec(code=CELL, outputs=("answer",), experiment="faults"), {})
    wait_for(lambda: "waiting at the gate" in service.read_log(record.job_id), timeout=60, interval=0.1)
    return record.job_id


def _check_closed_once(tracking_uri: str, run_id: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(STEPS))  # every point, none twice
    assert {a.path for a in client.list_artifacts(run_id, "jmk")} >= {"jmk/output.log", "jmk/cell.py"}


def test_tracking_server_killed_mid_job_then_back(state_dir: Path, mlflow_server_here: Mlflow, gate: Path,
                                                   monkeypatch: pytest.MonkeyPatch, shell: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    service = _service(state_dir, mlflow_server_here.url, monkeypatch)
    try:
        job_id = _run_until_the_gate(service, gate)
        mlflow_server_here.kill()
        gate.touch()

        # The job's end is recorded whatever MLflow does; its results are in storage.
        ended = wait_for(lambda: (r := service.get(job_id)).state.terminal and r, timeout=30, interval=0.1)
        assert ended.state is JobState.SUCCEEDED and ended.exit_code == 0
        assert service.result(ended).values == {"answer": 42}
        listed = wait_for(lambda: (r := _listed(service, job_id)).notes and r, timeout=30, interval=0.2)
        assert "tracking server unreachable: " + mlflow_server_here.url in listed.notes[0]
        assert not listed.tracking_final and "status" not in listed.tracking_sent
        log = service.read_log(job_id)
        assert "metric points are kept with the job" in log and "step 29" in log
        capsys.readouterr()
        shell.run_line_magic("job", f"attach {job_id}")  # a notebook finds the job again: results come back
        assert shell.user_ns["answer"] == 42
        assert f"[jmk] job {job_id}: tracking server unreachable" in capsys.readouterr().out

        # Back: the next listing sends what was pending, once.
        mlflow_server_here.start()
        closed = wait_for(lambda: (r := _listed(service, job_id)).tracking_final and r, timeout=40, interval=0.5)
        assert closed.tracking_sent == list(CLOSE_STEPS) and not closed.notes
        _check_closed_once(mlflow_server_here.url, str(closed.run_id))
        again = _listed(service, job_id)
        assert again.tracking_final and again.tracking_sent == list(CLOSE_STEPS)
        _check_closed_once(mlflow_server_here.url, str(closed.run_id))
    finally:
        gate.touch()
        stop_jobs(state_dir)


def test_tracking_server_that_hangs_holds_nothing(state_dir: Path, mlflow_server_here: Mlflow, gate: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = HangingProxy(mlflow_server_here.port)
    service = _service(state_dir, proxy.url, monkeypatch)
    try:
        job_id = _run_until_the_gate(service, gate)
        proxy.hang.set()
        gate.touch()

        ended = wait_for(lambda: (r := service.get(job_id)).state.terminal and r, timeout=30, interval=0.1)
        assert ended.state is JobState.SUCCEEDED
        assert service.result(ended).values == {"answer": 42}
        listed = wait_for(lambda: (r := _listed(service, job_id)).notes and r, timeout=30, interval=0.2)
        assert "tracking server unreachable: " + proxy.url in listed.notes[0]
        assert proxy.held > 0  # requests really were held

        proxy.hang.clear()
        closed = wait_for(lambda: (r := _listed(service, job_id)).tracking_final and r, timeout=40, interval=0.5)
        assert not closed.notes
        _check_closed_once(proxy.url, str(closed.run_id))
    finally:
        proxy.hang.clear()
        gate.touch()
        stop_jobs(state_dir)
        proxy.close()


def _listed(service: JobService, job_id: str):  # type: ignore[no-untyped-def]
    return next(r for r in service.list() if r.job_id == job_id)


def test_a_job_ended_by_a_listing_while_its_tracking_server_is_gone(
        state_dir: Path, mlflow_server_here: Mlflow, gate: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing that finds a job's supervisor dead ends the job; its run cannot be closed: it lists on."""
    service = _service(state_dir, mlflow_server_here.url, monkeypatch)
    try:
        job_id = _run_until_the_gate(service, gate)
        record = service.store.load(job_id)
        os.kill(int(record.pid or 0), signal.SIGKILL)  # the supervisor: nobody records the end
        mlflow_server_here.kill()
        wait_for(lambda: process_gone(record.pid), timeout=10)
        listed = _listed(service, job_id)  # ends the job, cannot close its run, does not raise
        assert listed.state is JobState.FAILED and "supervisor" in listed.message
        assert listed.notes and "tracking server unreachable" in listed.notes[0]
        from jupyter_mlflow_k8s.widgets.jobs import JobTable

        assert "tracking server unreachable" in repr(JobTable(service.list()))
    finally:
        gate.touch()
        stop_jobs(state_dir)


def test_mlflow_requests_are_bounded_in_every_process(monkeypatch: pytest.MonkeyPatch, mlflow_uri: str) -> None:
    from jupyter_mlflow_k8s import tracking
    from jupyter_mlflow_k8s.tracking import bounds

    for name in bounds.HTTP_BOUNDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # the user's own choice wins
    tracking.client(mlflow_uri)  # the kernel, the CLI, the server extension, the supervisor
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == bounds.HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    job_env = bounds.bounded_environment()  # what a job's runner (a pod too) is given with its payload
    assert job_env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30" and set(job_env) == set(bounds.HTTP_BOUNDS)
