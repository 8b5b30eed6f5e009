"""Job notifications and live resource use in headless Chromium against a real ``jupyter lab``.

A real local job ends -> the server extension's event reaches the page's event websocket -> a JupyterLab
Notification; its "Show in sidebar" action opens the job in the sidebar. The sidebar shows CPU, memory
and GPU use of a running job from real ``system/*`` metrics in a real run of the UI store.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from helpers import run_with_system_metrics
from ui_helpers import Lab, Page, Store, open_sidebar, submit_job, tid, wait_until

pytestmark = [pytest.mark.ui, pytest.mark.slow]

SETTINGS = "jupyter-mlflow-k8s:plugin"
SHORT_JOB = "import time\ntime.sleep(2)\nprint('finished', flush=True)\n"


def put_settings(lab: Lab, values: dict[str, Any]) -> None:
    """Write the sidebar plugin's user settings through JupyterLab's settings API (read at the next page load)."""
    request = urllib.request.Request(
        f"{lab.url}/lab/api/settings/{SETTINGS}",
        method="PUT",
        data=json.dumps({"raw": json.dumps(values)}).encode(),
        headers={"Authorization": f"token {lab.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 204


@pytest.fixture
def settings(lab: Lab) -> Iterator[Any]:
    """Set the plugin's settings for one test; the defaults come back afterwards."""
    yield lambda **values: put_settings(lab, values)
    put_settings(lab, {})


class EventFrames:
    """What the page's jupyter_server event websocket receives (the frames the Notification comes from)."""

    def __init__(self, page: Any) -> None:
        self.frames: list[str] = []
        self.connected = False
        page.on("websocket", self._on_socket)

    def _on_socket(self, socket: Any) -> None:
        if "api/events/subscribe" not in socket.url:
            return
        self.connected = True

        def frame(payload: Any) -> None:
            data = payload.get("payload") if isinstance(payload, dict) else payload
            self.frames.append(data.decode() if isinstance(data, bytes) else str(data))

        socket.on("framereceived", frame)

    def ended(self, job_id: str) -> bool:
        return any(f'"job_id": "{job_id}"' in f or f'"job_id":"{job_id}"' in f for f in self.frames)


def pump_until(page: Any, predicate: Any, timeout: float, what: str) -> None:
    """Wait for ``predicate`` while Playwright delivers the page's events (a plain sleep would hold them back)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        page.wait_for_timeout(100)


def load_lab(tab: Page, lab: Lab) -> EventFrames:
    """Load JupyterLab (sidebar closed) and wait until its event websocket is open."""
    frames = EventFrames(tab.page)
    tab.page.goto(lab.lab_url())
    tab.page.locator('li[data-id="jmk-sidebar"]').wait_for(timeout=60_000)
    pump_until(tab.page, lambda: frames.connected, 30, "the page's event websocket open")
    return frames


def toast(page: Any, job_id: str) -> Any:
    return page.locator(".Toastify__toast").filter(has_text=job_id)


def test_a_job_that_ends_shows_a_notification_that_opens_it_in_the_sidebar(
    page: Page, lab: Lab, ui_store: Store, settings: Any
) -> None:
    settings(mlflowUiUrl="http://mlflow.example.org:5000")
    p = page.page
    frames = load_lab(page, lab)
    assert not p.locator(tid("jmk-panel")).is_visible()

    record = submit_job(ui_store, SHORT_JOB, f"notify-ui-{int(time.time()) % 10000}")
    note = toast(p, record.job_id)
    note.wait_for(timeout=90_000)
    text = note.inner_text()
    assert record.spec.run_name in text and "succeeded after" in text
    assert frames.ended(record.job_id)
    assert note.locator(".jp-toast-button", has_text="Open in MLflow").count() == 1
    p.wait_for_timeout(800)  # the toast's slide-in, for the screenshot only
    page.screenshot("notify-job-ended")

    note.locator(".jp-toast-button", has_text="Show in sidebar").click()
    p.locator(tid("jmk-panel")).wait_for(state="visible")
    row = p.locator(tid("jmk-job-row", job_id=record.job_id))
    row.wait_for()
    wait_until(lambda: "jmk-mod-selected" in (row.get_attribute("class") or ""), what="the job's row selected")
    p.locator(tid("jmk-log-viewer")).filter(has_text="finished").wait_for()
    p.locator(tid("jmk-resources", job_id=record.job_id)).wait_for()
    assert page.errors == []


def test_with_the_setting_off_no_notification_appears(page: Page, lab: Lab, ui_store: Store, settings: Any) -> None:
    settings(notifications=False)
    p = page.page
    frames = load_lab(page, lab)
    record = submit_job(ui_store, SHORT_JOB, f"notify-off-{int(time.time()) % 10000}")
    pump_until(p, lambda: frames.ended(record.job_id), 90, "the job-ended event reaching the page")
    p.wait_for_timeout(3000)  # what a Notification would need to render; none may
    assert toast(p, record.job_id).count() == 0
    assert p.locator(".Toastify__toast").filter(has_text='Job "notify-').count() == 0


@pytest.fixture
def gpu_job(ui_store: Store) -> Iterator[str]:
    """A running job's record (its runner elsewhere, as a Kubernetes pod's is) on a run with system metrics."""
    from jupyter_mlflow_k8s.models import JobSpec, JobState
    from jupyter_mlflow_k8s.records import JobStore

    run_id = run_with_system_metrics(ui_store.uri, "notify-ui", 2, run_name="gpu-job")
    store = JobStore(ui_store.settings().state_path)
    record = store.create(JobSpec(code="train()", run_name="gpu-job", experiment="notify-ui"))
    me = psutil.Process()
    store.update(
        record.job_id,
        state=JobState.RUNNING,
        started=time.time() - 15,
        run_id=run_id,
        tracking_uri=ui_store.uri,
        pid=me.pid,
        pid_start=me.create_time(),
    )
    yield record.job_id
    store.update(record.job_id, state=JobState.CANCELLED, finished=time.time())


def test_the_sidebar_shows_a_running_jobs_cpu_memory_and_gpu_use(page: Page, lab: Lab, gpu_job: str) -> None:
    p = page.page
    open_sidebar(page, lab)
    row = p.locator(tid("jmk-job-row", job_id=gpu_job))
    row.wait_for()
    badge = row.locator(tid("jmk-job-gpu"))
    badge.wait_for(timeout=30_000)  # the listing reads the GPU use behind itself: a later poll shows it
    assert badge.inner_text() == "GPU 52%" and float(badge.get_attribute("data-value") or 0) == 52.0

    row.click()
    view = p.locator(tid("jmk-resources", job_id=gpu_job))
    view.wait_for()
    assert view.locator(tid("jmk-resources-cpu")).get_attribute("data-value") == "30"
    assert view.locator(tid("jmk-resources-cpu")).inner_text() == "CPU 30%"
    assert view.locator(tid("jmk-resources-memory")).get_attribute("data-value") == "1200"
    gpus = view.locator(tid("jmk-resources-gpu"))
    assert gpus.count() == 2
    assert [gpus.nth(i).get_attribute("data-value") for i in range(2)] == ["42", "62"]
    assert gpus.nth(1).inner_text().startswith("GPU 1 62%")
    for chart in ("cpu", "memory", "gpu"):
        svg = view.locator(f"{tid(f'jmk-resources-chart-{chart}')} svg")
        assert svg.get_attribute("data-points") == "3", chart
    page.element_screenshot(view, "notify-resources")
    assert page.errors == []
