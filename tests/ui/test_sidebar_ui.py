"""The sidebar in headless Chromium against a real ``jupyter lab``: a seeded MLflow store, real local jobs,
a registered model and a real serving process under traffic. Screenshots land in build/screenshots/."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from ui_helpers import Lab, Page, Store, Traffic, expand, number, open_sidebar, tid, wait_until

pytestmark = [pytest.mark.ui, pytest.mark.slow]

XSS = "<img src=x onerror=alert(1)>"


def run_names(page: Any) -> list[str]:
    return [text.strip() for text in page.locator(tid("jmk-run-name")).all_inner_texts()]


def test_panel_shows_jobs_runs_models_and_endpoints(page: Page, lab: Lab, ui_store: Store, slow_job: Any,
                                                    endpoint: Any) -> None:
    p = page.page
    panel = open_sidebar(page, lab)
    status = p.locator(tid("jmk-status"))
    assert ui_store.uri in status.inner_text()

    job = p.locator(tid("jmk-job-row", job_id=slow_job.job_id))
    job.wait_for()
    assert job.locator(tid("jmk-job-name")).inner_text() == slow_job.spec.run_name
    wait_until(lambda: job.get_attribute("data-state") == "running", what="the job shown running")

    count = p.locator(tid("jmk-runs-count"))
    wait_until(lambda: count.get_attribute("data-total") not in (None, ""), what="the runs total")
    total = int(count.get_attribute("data-total") or 0)
    assert total >= len(ui_store.seeded["final_loss"])
    assert "mnist-23" in run_names(p)  # newest seeded run first

    expand(p, "registry")
    model = p.locator(tid("jmk-model-row", model="iris-demo"))
    model.wait_for()
    assert "@prod→v1" in model.inner_text()

    expand(p, "serving")
    row = p.locator(tid("jmk-endpoint-row", endpoint="iris-demo"))
    row.wait_for()
    assert row.get_attribute("data-status") == "running"
    assert "models:/iris-demo/1" in row.inner_text()
    charts = p.locator(tid("jmk-endpoint-charts", endpoint="iris-demo"))
    charts.wait_for()

    p.locator(tid("jmk-job-row", job_id=slow_job.job_id)).click()  # its log under the jobs
    p.locator(tid("jmk-log-viewer")).filter(has_text="tick").wait_for()
    page.screenshot("sidebar-panel")
    page.element_screenshot(panel, "sidebar-panel-only")


def test_job_log_streams_live_and_cancel_works(page: Page, lab: Lab, ui_store: Store, slow_job: Any) -> None:
    from jupyter_mlflow_k8s.jobs import JobService

    p = page.page
    open_sidebar(page, lab)
    row = p.locator(tid("jmk-job-row", job_id=slow_job.job_id))
    row.click()
    log = p.locator(tid("jmk-log-viewer"))
    log.filter(has_text="tick").wait_for()
    wait_until(lambda: p.locator(tid("jmk-log-status")).get_attribute("data-status") == "live",
               what="the log stream live")

    def last_tick() -> int:
        ticks = re.findall(r"tick (\d+)", log.inner_text())
        return int(ticks[-1]) if ticks else -1

    first = last_tick()
    wait_until(lambda: last_tick() >= first + 10, timeout=15, what="new log lines arriving")
    assert row.get_attribute("data-state") == "running"
    page.screenshot("sidebar-job-log")

    row.locator(tid("jmk-job-cancel")).click()
    wait_until(lambda: row.get_attribute("data-state") == "cancelled", timeout=30, what="the job shown cancelled")
    assert row.locator(tid("jmk-job-state")).inner_text() == "cancelled"
    assert row.locator(tid("jmk-job-cancel")).count() == 0
    wait_until(lambda: p.locator(tid("jmk-log-status")).get_attribute("data-status") == "ended",
               what="the log stream ended")
    assert JobService(ui_store.settings()).get(slow_job.job_id).state.value == "cancelled"
    stopped_at = last_tick()
    time.sleep(1.5)
    assert last_tick() == stopped_at < 290  # cancelled well before the end: no lines after it
    page.screenshot("sidebar-job-cancelled")


def test_runs_filter_and_sort(page: Page, lab: Lab, ui_store: Store) -> None:
    p = page.page
    open_sidebar(page, lab)
    finals: dict[str, float] = ui_store.seeded["final_loss"]
    wanted = sorted(name for name, lr in ui_store.seeded["lr"].items() if lr == "0.1")

    p.locator(tid("jmk-runs-filter")).fill("params.lr = '0.1'")
    p.locator(tid("jmk-runs-filter-apply")).click()
    count = p.locator(tid("jmk-runs-count"))
    wait_until(lambda: count.get_attribute("data-total") == str(len(wanted)), what="the filtered total")
    wait_until(lambda: sorted(run_names(p)) == wanted, what="only the filtered runs shown")

    sort = p.locator(tid("jmk-runs-sort") + '[data-sort-key="metric:loss"]')
    sort.click()  # a metric column sorts descending first
    by_loss = sorted(wanted, key=lambda name: finals[name])
    wait_until(lambda: run_names(p) == by_loss[::-1], what="runs sorted by loss, descending")
    assert sort.get_attribute("data-sort-dir") == "desc"
    sort.click()
    wait_until(lambda: run_names(p) == by_loss, what="runs sorted by loss, ascending")
    assert sort.get_attribute("data-sort-dir") == "asc"
    page.screenshot("sidebar-runs-filtered-sorted")

    p.locator(tid("jmk-runs-filter")).fill("metrics.loss <")
    p.locator(tid("jmk-runs-filter-apply")).click()
    error = p.locator(tid("jmk-runs-filter-error"))
    error.wait_for()
    assert error.inner_text().strip()


def test_run_view_shows_metric_charts(page: Page, lab: Lab, ui_store: Store) -> None:
    p = page.page
    open_sidebar(page, lab)
    p.locator(tid("jmk-runs-filter")).fill("attributes.run_name = 'mnist-07'")
    p.locator(tid("jmk-runs-filter-apply")).click()
    wait_until(lambda: run_names(p) == ["mnist-07"], what="the run found by name")
    p.locator(tid("jmk-run-row")).first.click()
    view = p.locator(tid("jmk-run-view"))
    view.wait_for()
    assert view.locator(tid("jmk-run-view-name")).inner_text().strip() == "mnist-07"
    chart = view.locator(tid("jmk-run-metric-chart") + '[data-metric="loss"]')
    svg = chart.locator("svg")
    wait_until(lambda: svg.get_attribute("data-points") == "25", what="the loss history (25 steps) charted")
    assert (chart.locator("path").first.get_attribute("d") or "").count("L") == 24
    value = chart.locator(tid("jmk-run-chart-loss-value")).inner_text()
    assert float(value) == pytest.approx(ui_store.seeded["final_loss"]["mnist-07"], abs=1e-3)
    assert view.locator(tid("jmk-run-metric-chart") + '[data-metric="accuracy"]').count() == 1
    page.screenshot("sidebar-run-view")
    view.locator(tid("jmk-run-back")).click()
    p.locator(tid("jmk-runs-table")).wait_for()


def test_promote_sets_an_alias(page: Page, lab: Lab, ui_store: Store) -> None:
    from mlflow.tracking import MlflowClient

    p = page.page
    open_sidebar(page, lab)
    expand(p, "registry")
    p.locator(tid("jmk-model-name")).filter(has_text="iris-demo").click()
    versions = p.locator(tid("jmk-model-versions", model="iris-demo"))
    versions.locator(tid("jmk-version-row", version="2")).wait_for()
    versions.locator(tid("jmk-promote-alias")).fill("champion")
    versions.locator(tid("jmk-promote-version")).select_option("2")
    versions.locator(tid("jmk-promote-button")).click()
    result = versions.locator(tid("jmk-promote-result"))
    result.wait_for()
    assert result.get_attribute("data-ok") == "true", result.inner_text()
    assert "iris-demo@champion → version 2" in result.inner_text()
    versions.locator(tid("jmk-version-row", version="2")).locator(tid("jmk-alias", alias="champion")).wait_for()
    assert str(MlflowClient(ui_store.uri).get_model_version_by_alias("iris-demo", "champion").version) == "2"
    page.screenshot("sidebar-registry-promoted")


def test_serving_charts_update_live_under_traffic(page: Page, lab: Lab, ui_store: Store, endpoint: Any) -> None:
    p = page.page
    open_sidebar(page, lab)
    expand(p, "serving")
    charts = p.locator(tid("jmk-endpoint-charts", endpoint="iris-demo"))
    charts.wait_for()

    def points() -> int:
        return int(charts.get_attribute("data-points") or 0)

    rows = ui_store.seeded["rows"]
    with Traffic(endpoint.url, rows) as traffic:
        start = points()
        began = time.monotonic()
        wait_until(lambda: points() >= start + 3, timeout=8, what="three new chart points")
        assert time.monotonic() - began < 8
        rps = charts.locator(tid("jmk-chart-rps-value"))
        wait_until(lambda: number(rps.inner_text()) > 0, what="a positive requests/s value")
        wait_until(lambda: "ms" in charts.locator(tid("jmk-chart-latency-value")).first.inner_text(),
                   what="a latency value")
        errors = charts.locator(tid("jmk-chart-error-rate-value"))
        wait_until(lambda: number(errors.inner_text()) > 0, what="a positive error rate")
        time.sleep(3)  # a few more seconds of lines for the screenshot
        page.screenshot("sidebar-serving-live")
        p.set_viewport_size({"width": 1440, "height": 1700})  # the whole panel: jobs, runs and live charts
        time.sleep(2)
        page.screenshot("sidebar-overview")
    summary = charts.locator(tid("jmk-serving-summary")).inner_text()
    assert re.match(r"\d+ requests, \d+ errors", summary) and int(summary.split()[0]) > 0
    assert traffic.sent.get(200, 0) > 10


def test_xss_run_name_shows_as_text(page: Page, lab: Lab) -> None:
    p = page.page
    open_sidebar(page, lab)
    p.locator(tid("jmk-runs-filter")).fill("attributes.run_name = '<img src=x onerror=alert(1)>'")
    p.locator(tid("jmk-runs-filter-apply")).click()
    wait_until(lambda: run_names(p) == [XSS], what="the XSS-named run alone in the table")
    p.locator(tid("jmk-run-row")).first.click()
    name = p.locator(tid("jmk-run-view-name"))
    name.wait_for()
    assert name.inner_text() == XSS
    panel = p.locator(tid("jmk-panel"))
    assert panel.locator('img[src="x"]').count() == 0
    assert p.evaluate("document.querySelectorAll('img[src=\"x\"], img[onerror]').length") == 0
    time.sleep(1)  # an injected <img> would have failed to load and fired its handler by now
    assert page.dialogs == []
    page.screenshot("sidebar-xss-as-text")


def test_missing_server_extension_message(page: Page, lab_without_server_extension: Lab) -> None:
    p = page.page
    open_sidebar(page, lab_without_server_extension)
    missing = p.locator(tid("jmk-missing-server"))
    missing.wait_for()
    text = missing.inner_text()
    assert "server extension is not running" in text
    assert "jupyter server extension enable jupyter_mlflow_k8s.labapp" in text
    assert p.locator(tid("jmk-section-jobs")).count() == 0
    page.screenshot("sidebar-missing-server-extension")
