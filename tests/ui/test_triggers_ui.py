"""The sidebar's Triggers section in headless Chromium against a real ``jupyter lab``.

Triggers stored in the lab's own state directory show with their kind, mode, state and last check;
after an evaluation, the suggestion, the fired pipeline run and that run's end show in their recent runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from ui_helpers import Lab, Page, Store, checkout_on_path, expand, open_sidebar, tid, wait_until

from jupyter_mlflow_k8s.pipelines.triggers import (
    TriggerEvaluator,
    add_trigger,
    build_trigger,
    list_triggers,
    load_cursor,
    remove_trigger,
)

pytestmark = [pytest.mark.ui, pytest.mark.slow]

LISTED = {"s3://ui-bucket/in/a.csv": "etag-a", "s3://ui-bucket/in/b.csv": "etag-b"}


def _pipeline(folder: Path) -> Path:
    """A one-step pipeline that prints the new objects it was given."""
    cells = [new_code_cell("new_objects = []", metadata={"tags": ["parameters"]}), new_code_cell("print(new_objects)")]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=cells, metadata=meta), folder / "step.ipynb")
    path = folder / "pipeline.yaml"
    path.write_text("name: retrain\nparameters: {new_objects: []}\nsteps:\n  step: {notebook: step.ipynb}\n")
    return path


@pytest.fixture
def triggers(ui_store: Store, tmp_path: Path) -> Iterator[Any]:
    """Two triggers on new objects in the lab's state directory (one suggests, one runs); removed afterwards."""
    settings = ui_store.settings()
    pipeline = _pipeline(tmp_path / "pipeline")
    add_trigger(
        build_trigger(pipeline, name="ui-ask", on_new_objects="s3://ui-bucket/in/", mode="suggest", cooldown="1h"),
        settings=settings,
    )
    add_trigger(
        build_trigger(pipeline, name="ui-retrain", on_new_objects="s3://ui-bucket/in/", mode="run"), settings=settings
    )
    yield settings
    for found in list_triggers(settings):
        remove_trigger(found.name, settings)


def row(page: Any, name: str) -> Any:
    return page.locator(tid("jmk-trigger-row", trigger=name))


def event(page: Any, name: str, kind: str) -> Any:
    return page.locator(tid("jmk-trigger-detail", trigger=name)).locator(tid("jmk-trigger-event", event=kind))


def test_triggers_show_their_fields_and_recent_runs(page: Page, lab: Lab, triggers: Any) -> None:
    settings = triggers
    p = page.page
    open_sidebar(page, lab)
    expand(p, "triggers")
    ask, retrain = row(p, "ui-ask"), row(p, "ui-retrain")
    ask.wait_for()
    assert (ask.get_attribute("data-kind"), ask.get_attribute("data-mode")) == ("new-objects", "suggest")
    assert retrain.get_attribute("data-mode") == "run"
    assert "new objects" in ask.locator(tid("jmk-trigger-kind")).inner_text()
    assert "not yet" in ask.locator(tid("jmk-trigger-kind")).inner_text()
    assert ask.locator(tid("jmk-trigger-last-fire")).inner_text() == "never fired"

    ask.click()
    detail = p.locator(tid("jmk-trigger-detail", trigger="ui-ask"))
    detail.locator(tid("jmk-trigger-recent-empty")).wait_for()
    assert detail.locator(tid("jmk-trigger-field", key="Next eligible")).locator("td").inner_text() == "now"
    assert "s3://ui-bucket/in/" in detail.locator(tid("jmk-trigger-field", key="Condition")).inner_text()

    evaluator = TriggerEvaluator(settings, objects=lambda url, pattern: dict(LISTED))
    with checkout_on_path():  # the fired run imports this checkout
        assert sorted(evaluator.tick()) == ["ui-ask", "ui-retrain"]

    # The suggestion: recorded with its two objects, the cooldown pushing the next eligible time out.
    suggested = event(p, "ui-ask", "suggested")
    suggested.wait_for()
    assert "2 objects" in suggested.inner_text()
    wait_until(lambda: "fired " in ask.locator(tid("jmk-trigger-last-fire")).inner_text(), what="the last fire shown")
    assert "last check not yet" not in ask.locator(tid("jmk-trigger-kind")).inner_text()
    assert "(in " in detail.locator(tid("jmk-trigger-field", key="Next eligible")).inner_text()

    # The run: fired with its run id, then its end with the exit status once the evaluator reaps it.
    retrain.click()
    run_id = load_cursor("ui-retrain", settings).last_run_id
    assert run_id
    fired = event(p, "ui-retrain", "fired")
    fired.wait_for()
    assert fired.get_attribute("data-run-id") == run_id and "2 objects" in fired.inner_text()
    page.screenshot("triggers-fired")
    trigger = next(t for t in list_triggers(settings) if t.name == "ui-retrain")
    wait_until(
        lambda: not evaluator.running(trigger, load_cursor("ui-retrain", settings)),
        timeout=180,
        what="the triggered pipeline run ended",
    )
    evaluator.reap()
    ended = event(p, "ui-retrain", "run-ended")
    ended.wait_for()
    assert ended.get_attribute("data-run-id") == run_id
    log = load_cursor("ui-retrain", settings).log
    assert "succeeded" in ended.inner_text(), Path(log).read_text(errors="replace")[-3000:] if log else "no log"
    state = retrain.locator(tid("jmk-trigger-state"))
    wait_until(lambda: state.inner_text().endswith("succeeded"), what="the run's outcome as the trigger's state")
    assert "jmk-mod-succeeded" in (state.get_attribute("class") or "")
    page.element_screenshot(p.locator(tid("jmk-section-triggers")), "triggers-section")
    assert page.errors == []


def test_a_suggestion_shows_a_notification_that_opens_the_trigger(page: Page, lab: Lab, triggers: Any) -> None:
    settings = triggers
    p = page.page
    sockets: list[str] = []
    p.on("websocket", lambda socket: sockets.append(socket.url))
    p.goto(lab.lab_url())
    p.locator('li[data-id="jmk-sidebar"]').wait_for(timeout=60_000)
    for _ in range(300):  # the events go out on this websocket: wait until the page has it open
        if any("api/events/subscribe" in url for url in sockets):
            break
        p.wait_for_timeout(100)  # (a plain sleep would hold Playwright's events back)
    else:
        raise AssertionError("the page's event websocket did not open within 30 s")
    remove_trigger("ui-retrain", settings)  # one notification: the suggestion's
    TriggerEvaluator(settings, objects=lambda url, pattern: dict(LISTED)).tick()

    note = p.locator(".Toastify__toast").filter(has_text='Trigger "ui-ask" suggests a run of')
    note.wait_for(timeout=30_000)
    assert "2 new objects" in note.inner_text() and "pipeline/pipeline.yaml" in note.inner_text()
    assert note.locator(".jp-toast-button", has_text="Copy command").count() == 1
    p.wait_for_timeout(800)  # the toast's slide-in, for the screenshot only
    page.screenshot("triggers-notification")

    note.locator(".jp-toast-button", has_text="Show in sidebar").click()
    p.locator(tid("jmk-panel")).wait_for(state="visible")
    assert p.locator(tid("jmk-section-triggers")).get_attribute("data-open") == "true"
    event(p, "ui-ask", "suggested").wait_for()
    assert row(p, "ui-ask").get_attribute("data-expanded") == "true"
    assert page.errors == []


def test_no_triggers_says_how_to_add_one(page: Page, lab: Lab) -> None:
    p = page.page
    open_sidebar(page, lab)
    expand(p, "triggers")
    empty = p.locator(tid("jmk-triggers-empty"))
    empty.wait_for()
    assert "jmk trigger add" in empty.inner_text()
