"""The Jupyter server is killed while the sidebar follows a live log, and started again (issue 16).

A real ``jupyter server`` process with the extension, on the test's state directory; a real local job
that prints numbered lines and stops in the middle of a UTF-8 character (the bytes of ``✓`` split
between two writes) until the server is gone. Clients follow the log's event stream over HTTP the
way the browser does:

- ``sidebar``: what ``LogViewer.tsx`` and ``followEventStream`` (``api.ts``) do: the tail from
  ``/log?tail=65536``, then the stream from its ``offset``; each ``log`` event's ``offset`` is kept,
  and after an error or a closed stream it reconnects with ``?offset=`` after a delay that starts
  at 0.5 s and doubles up to 10 s (back to 0.5 s after an event);
- ``eventsource``: what a browser ``EventSource`` does: no offset in the URL, and on reconnection
  the last event id it saw in a ``Last-Event-ID`` header;
- a late ``sidebar`` client opened while the job is stopped inside the character.

The server is SIGKILLed mid-stream and started again on the same port and state directory; each
client must end up with the job's whole log, every byte once and in order, through the job's end.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from servers import ServerProcess, free_port

from jupyter_mlflow_k8s.config import load_settings
from jupyter_mlflow_k8s.jobs import JobService
from jupyter_mlflow_k8s.models import JobSpec, JobState

pytestmark = pytest.mark.slow
TOKEN = "log-resume-token"
LINES, SPLIT = 60, 20
CELL = """\
import pathlib, sys, time
out = sys.stdout.buffer
for i in range({lines}):
    if i == {split}:  # the first two bytes of a character; the third once the server is gone
        out.write(b"line {split} \\xe2\\x9c")
        out.flush()
        while not pathlib.Path({go!r}).exists():
            time.sleep(0.02)
        out.write(b"\\x93\\n")
    else:
        out.write(f"line {{i}}\\n".encode())
    out.flush()
    time.sleep(0.02)
"""


class JupyterServer:
    """``python -m jupyter_server`` with the extension on a fixed port; killed and started again by the test."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env, self.port, self.starts = folder, env, free_port(), 0
        self.process: ServerProcess | None = None
        for name in ("root", "config", "runtime"):
            (folder / name).mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.starts += 1
        extensions = repr({"jupyter_mlflow_k8s.labapp": True})
        argv = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={self.port}",
                "--ServerApp.port_retries=0", "--ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
                f"--ServerApp.root_dir={self.folder / 'root'}", f"--ServerApp.jpserver_extensions={extensions}"]
        self.process = ServerProcess("jupyter server", argv, self.folder / f"server-{self.starts}.log", env=self.env)
        self.process.wait_ready(self._answers, 60)

    def _answers(self) -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/jmk/api/jobs",
                                         headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no closing of streams, as when the machine or the process dies."""
        assert self.process is not None
        os.killpg(self.process.process.pid, signal.SIGKILL)
        self.process.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class LogFollower(threading.Thread):
    """Follows ``/jmk/api/jobs/{id}/log/stream`` as the sidebar (``sidebar``) or an ``EventSource`` would."""

    def __init__(self, port: int, job_id: str, mode: str) -> None:
        super().__init__(daemon=True, name=f"follow-{mode}")
        self.port, self.job_id, self.mode = port, job_id, mode
        self.text = ""
        self.offset = 0  # the sidebar's offsetRef
        self.last_event_id: str | None = None  # an EventSource's last event ID
        self.connections = 0
        self.failures: list[str] = []
        self.ended: dict[str, Any] | None = None
        self.gave_up: str | None = None

    def run(self) -> None:
        if self.mode == "sidebar":
            tail = self._get_json(f"/jmk/api/jobs/{self.job_id}/log?tail=65536")
            self.text, self.offset = tail["text"], tail["offset"]
        delay = 0.5
        deadline = time.monotonic() + 120  # a follower never outlives a broken test for long
        while self.ended is None and self.gave_up is None and time.monotonic() < deadline:
            got_events = self._connect()
            if self.ended is not None or self.gave_up is not None:
                return
            if got_events:
                delay = 0.5
            time.sleep(delay)
            delay = min(delay * 2, 10.0) if self.mode == "sidebar" else 1.0

    def _get_json(self, path: str) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def _connect(self) -> bool:
        """One connection, read until it ends; whether any event came."""
        headers = {"Authorization": f"token {TOKEN}", "Accept": "text/event-stream"}
        path = f"/jmk/api/jobs/{self.job_id}/log/stream"
        if self.mode == "sidebar":
            path += f"?offset={self.offset}"
        elif self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        got = False
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            self.connections += 1
            if 400 <= response.status < 500:  # the sidebar stops: reconnecting would not help
                self.gave_up = f"{response.status}: {response.read()[:300]!r}"
                return False
            fields: dict[str, list[str]] = {}
            while True:
                raw = response.readline()
                if not raw:
                    return got
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(":")
                    fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
                    continue
                if "data" in fields:
                    got = True
                    self._dispatch(fields.get("event", ["message"])[-1], "\n".join(fields["data"]), fields.get("id"))
                    if self.ended is not None or self.gave_up is not None:
                        return got
                fields = {}
        except (OSError, http.client.HTTPException) as exc:  # refused while down; cut when killed
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return got
        finally:
            connection.close()

    def _dispatch(self, event: str, data: str, event_id: list[str] | None) -> None:
        if event_id:
            self.last_event_id = event_id[-1]
        payload = json.loads(data)
        if event == "log":
            self.text += payload["text"]
            self.offset = payload["offset"]
        elif event == "end":
            self.ended = payload
        elif event == "error":
            self.gave_up = payload.get("message", data)


@pytest.fixture
def server(state_dir: Path, tmp_path: Path) -> Iterator[JupyterServer]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "server" / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "server" / "runtime")}
    running = JupyterServer(tmp_path / "server", env)
    running.start()
    yield running
    running.stop()


def test_the_log_stream_resumes_at_its_offset_after_the_server_is_killed(
    server: JupyterServer, state_dir: Path, tmp_path: Path
) -> None:
    service = JobService(load_settings())
    go = tmp_path / "go"
    record = service.submit(JobSpec(code=CELL.format(lines=LINES, split=SPLIT, go=str(go)), run_name="ticks"), {})
    try:
        early = [LogFollower(server.port, record.job_id, mode) for mode in ("sidebar", "eventsource")]
        for follower in early:
            follower.start()
        at_split = f"line {SPLIT - 1}\nline {SPLIT} "
        wait_for(lambda: all(f.text.endswith(at_split) for f in early), timeout=40)
        late = LogFollower(server.port, record.job_id, "sidebar")  # opens the sidebar inside the character
        late.start()
        wait_for(lambda: late.text.endswith(at_split), timeout=20)
        followers = [*early, late]

        server.kill()
        go.touch()  # the job goes on printing while the server is down
        server.start()
        for follower in followers:
            follower.join(timeout=60)

        log = service.read_log(record.job_id)
        lines = [f"line {i}" if i != SPLIT else f"line {i} ✓" for i in range(LINES)]
        assert [line for line in log.splitlines() if line.startswith("line ")] == lines
        for follower in followers:
            assert follower.gave_up is None, (follower.mode, follower.gave_up)
            assert follower.ended is not None and follower.ended["state"] == "succeeded", follower.mode
            assert follower.text == log, (follower.mode, follower.text[-300:])  # every byte once, in order
            assert follower.connections >= 2 and follower.failures, follower.mode  # it was cut, and came back
        assert service.get(record.job_id).state is JobState.SUCCEEDED
    finally:
        go.touch()
        current = service.get(record.job_id)
        if not current.state.terminal:
            service.cancel_and_wait(record.job_id, timeout=20)
