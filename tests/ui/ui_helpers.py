"""Helpers for the sidebar's UI tests (fixtures in conftest.py): a real ``jupyter lab`` with this checkout's server extension and
built labextension, a seeded SQLite MLflow store, slow local jobs, a serving process, and Debian's
Chromium driven headless by Playwright (never Playwright's own downloaded browsers).

Chromium comes from ``tests/ui/ensure_chromium.sh``; where it cannot be installed (exit 3) every UI
test skips with the script's reason, as the Kubernetes tests do with ``tests/cluster/build.sh``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build" / "screenshots"
LABEXTENSION = REPO / "jupyter_mlflow_k8s" / "labextension"
ENSURE_CHROMIUM = Path(__file__).with_name("ensure_chromium.sh")
# Headless flags that keep Chromium off the (closed) network: see ENV-NOTES "Servers as root, and browsers".
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]
VIEWPORT: Any = {"width": 1440, "height": 1000}  # playwright ViewportSize
SLOW_JOB = """
import time
for i in range(300):
    print(f"tick {i}", flush=True)
    time.sleep(0.1)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Page:
    """A Playwright page plus what it saw: dialogs (none may open) and uncaught page errors."""

    page: Any
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str, **kwargs: Any) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), **kwargs)
        return path

    def element_screenshot(self, locator: Any, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        locator.screenshot(path=str(path))
        return path



@dataclass(frozen=True)
class Store:
    """The UI tests' own MLflow store and state directory, and what ``seed_store.py`` put there."""

    uri: str
    state_dir: Path
    seeded: dict[str, Any]

    def settings(self) -> Any:
        from jupyter_mlflow_k8s.config import load_settings

        return load_settings(state_dir=str(self.state_dir), tracking_uri=self.uri)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of the processes the tests start: this checkout first on the import path."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


@contextlib.contextmanager
def checkout_on_path() -> Iterator[None]:
    """Processes started inside (serving, job supervisors) import this checkout, whatever is installed."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous



class Traffic:
    """Scoring requests sent to an endpoint from a thread until stopped; every 10th one is malformed."""

    def __init__(self, url: str, rows: list[dict[str, float]], pause: float = 0.05) -> None:
        self.url, self.rows, self.pause = url, rows, pause
        self.sent: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        count = 0
        while not self._stop.is_set():
            rows = [{"petal_wdth": 1.0}] if count % 10 == 9 else self.rows
            request = urllib.request.Request(f"{self.url}/invocations", headers={"Content-Type": "application/json"},
                                             data=json.dumps({"dataframe_records": rows}).encode())
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status = int(response.status)
            except urllib.error.HTTPError as exc:
                status = exc.code
            self.sent[status] = self.sent.get(status, 0) + 1
            count += 1
            self._stop.wait(self.pause)


def submit_job(store: Store, code: str, run_name: str) -> Any:
    """A real local-backend job on the UI store (its processes import this checkout)."""
    from jupyter_mlflow_k8s.jobs import JobService
    from jupyter_mlflow_k8s.models import JobSpec

    spec = JobSpec(code=code, run_name=run_name, experiment="sidebar-jobs")
    with checkout_on_path():
        return JobService(store.settings()).submit(spec, {})



@dataclass
class Lab:
    """A running ``jupyter lab`` process."""

    port: int
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self) -> str:
        return f"{self.url}/lab?reset&token={self.token}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_lab(base: Path, store: Store, server_extension: bool = True, timeout: float = 90.0,
              server_config: str = "") -> Lab:
    """``python -m jupyterlab`` on a free port, with the built labextension of this checkout on JUPYTER_PATH.

    ``server_config`` is Python written to the server's ``jupyter_server_config.py`` (e.g. presets).
    """
    if not (LABEXTENSION / "package.json").exists() or not (LABEXTENSION / "static" / "style.js").exists():
        pytest.fail(f"the labextension is not built in {LABEXTENSION}: run `cd labextension && jlpm install && "
                    "jlpm build:prod` (or `pip install -e .`, whose build hook does it)")
    data = base / "data"
    (data / "labextensions").mkdir(parents=True)
    (data / "labextensions" / "jupyter-mlflow-k8s").symlink_to(LABEXTENSION, target_is_directory=True)
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No news or update prompts in the screenshots (they would ask the closed network anyway).
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    for name in ("root", "config", "runtime", "workspaces"):
        (base / name).mkdir()
    if server_config:
        (base / "config" / "jupyter_server_config.py").write_text(server_config)
    port, token = free_port(), "ui-test-token"
    env = child_env(MLFLOW_TRACKING_URI=store.uri, JMK_STATE_DIR=str(store.state_dir), JUPYTER_PATH=str(data),
                    JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"))
    extensions = repr({"jupyter_mlflow_k8s.labapp": server_extension})  # a Python literal for traitlets
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
               "--ServerApp.port_retries=0", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={base / 'root'}", f"--ServerApp.jpserver_extensions={extensions}",
               "--LabApp.news_url=None", f"--LabApp.user_settings_dir={base / 'settings'}",
               f"--LabApp.workspaces_dir={base / 'workspaces'}"]
    log = base / "lab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=base)
    lab = Lab(port, token, process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"jupyter lab exited with {process.returncode}:\n{lab.log_tail()}")
        try:
            request = urllib.request.Request(f"{lab.url}/api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return lab
        except OSError:
            pass
        time.sleep(0.25)
    stop_lab(lab)
    pytest.fail(f"jupyter lab did not answer within {timeout} s:\n{lab.log_tail()}")


def stop_lab(lab: Lab) -> None:
    lab.process.terminate()
    try:
        lab.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        lab.process.kill()
        lab.process.wait(timeout=10)



# --- helpers for the tests -------------------------------------------------------------------------


def open_sidebar(tab: Page, lab: Lab, width: int = 560) -> Any:
    """Load JupyterLab, open the sidebar and widen it to ``width`` pixels; returns the panel locator."""
    page = tab.page
    page.goto(lab.lab_url())
    page.locator('li[data-id="jmk-sidebar"]').click(timeout=60_000)
    panel = page.locator('[data-testid="jmk-panel"]')
    panel.wait_for(state="visible")
    box = panel.bounding_box()
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    hb = handle.bounding_box()
    if box and hb and box["width"] < width:  # drag the sidebar's edge so that the columns read in screenshots
        page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + 200)
        page.mouse.down()
        page.mouse.move(box["x"] + width, hb["y"] + 200, steps=5)
        page.mouse.up()
    return panel


def expand(page: Any, section: str) -> None:
    """Open a collapsed section (Registry and Serving start collapsed)."""
    toggle = page.locator(f'[data-testid="jmk-section-{section}-toggle"]')
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()


def tid(name: str, **attrs: str) -> str:
    return f'[data-testid="{name}"]' + "".join(f'[data-{key.replace("_", "-")}="{value}"]'
                                               for key, value in attrs.items())


def wait_until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout} s")


def number(text: str) -> float:
    """The number at the start of a chart's value label ('12.5 ms', 'p99: 3 ms'); 0 when there is none."""
    found = re.search(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)
    return float(found.group()) if found else 0.0
