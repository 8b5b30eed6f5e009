"""Fixtures for the sidebar's UI tests: a real ``jupyter lab`` with this checkout's server extension and
built labextension, a seeded SQLite MLflow store, slow local jobs, a serving process, and Debian's
Chromium driven headless by Playwright (never Playwright's own downloaded browsers).

Chromium comes from ``tests/ui/ensure_chromium.sh``; where it cannot be installed (exit 3) every UI
test skips with the script's reason, as the Kubernetes tests do with ``tests/cluster/build.sh``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import (
    CHROMIUM_FLAGS,
    ENSURE_CHROMIUM,
    SLOW_JOB,
    VIEWPORT,
    Lab,
    Page,
    Store,
    checkout_on_path,
    child_env,
    start_lab,
    stop_lab,
    submit_job,
)

# --- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's chromium: found, or installed by ensure_chromium.sh; a skip with its reason when impossible."""
    found = os.environ.get("JMK_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    result = subprocess.run(["bash", str(ENSURE_CHROMIUM)], capture_output=True, text=True, timeout=900)
    if result.returncode == 3:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no reason given"
        pytest.skip(f"Chromium for the UI tests cannot be installed here: {reason}")
    if result.returncode != 0:
        pytest.fail(f"tests/ui/ensure_chromium.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def browser(chromium_executable: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_executable, headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    """A fresh browser context and page; any JavaScript dialog fails the test."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = Page(context.new_page())

    def on_dialog(dialog: Any) -> None:
        tab.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    tab.page.on("dialog", on_dialog)
    tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.page.set_default_timeout(30_000)
    yield tab
    context.close()
    assert tab.dialogs == [], f"a JavaScript dialog opened: {tab.dialogs}"


# --- the store, a serving process, jobs ------------------------------------------------------------


@pytest.fixture(scope="session")
def ui_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """25 runs with metric histories (one named ``<img src=x onerror=alert(1)>``) and model ``iris-demo`` v1, v2."""
    base = tmp_path_factory.mktemp("ui-store")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    env = child_env(MLFLOW_TRACKING_URI=uri, JMK_STATE_DIR=str(base / "state"))
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("seed_store.py")), uri], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return Store(uri, base / "state", json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def endpoint(ui_store: Store) -> Iterator[Any]:
    """A real serving process for ``models:/iris-demo/1`` (no batching: one request, one observation)."""
    from jupyter_mlflow_k8s.serving.manager import ServingManager

    manager = ServingManager(ui_store.settings())
    with checkout_on_path():
        started = manager.start("models:/iris-demo/1", name="iris-demo", no_batching=True)
    yield started
    for found in manager.list():
        if found.running:
            manager.stop(found.name)


@pytest.fixture
def slow_job(ui_store: Store) -> Iterator[Any]:
    """A job printing ``tick N`` ten times a second for 30 s; cancelled afterwards if still running."""
    from jupyter_mlflow_k8s.jobs import JobService

    record = submit_job(ui_store, SLOW_JOB, f"slow-ticks-{int(time.time()) % 10000}")
    yield record
    service = JobService(ui_store.settings())
    if not service.get(record.job_id).state.terminal:
        service.cancel_and_wait(record.job_id, timeout=20)


# --- jupyter lab -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lab(ui_store: Store, endpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab with the server extension enabled, on the seeded store, with the endpoint running."""
    running = start_lab(tmp_path_factory.mktemp("lab"), ui_store)
    yield running
    stop_lab(running)


@pytest.fixture
def lab_without_server_extension(ui_store: Store, tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab with the labextension but the server extension disabled."""
    running = start_lab(tmp_path, ui_store, server_extension=False)
    yield running
    stop_lab(running)


