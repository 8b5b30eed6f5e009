"""The "Run cell as job…" command and its form in headless Chromium against a real ``jupyter lab``, a real
ipykernel that imports this checkout, and real local-backend jobs. Screenshots land in build/screenshots/."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import Lab, Page, Store, start_lab, stop_lab, tid, wait_until

pytestmark = [pytest.mark.ui, pytest.mark.slow]

COMMAND = "jupyter-mlflow-k8s:run-cell-as-job"
PRESETS = {
    "a100": {"gpus": 1, "memory": "80Gi"},
    "cpu-small": {"cpu": "2", "memory": "4Gi"},
    "typo": {"gpus": 1, "memroy": "8Gi"},
}
SETUP = "import threading\nimport numpy as np\nX_train = np.zeros((1000, 950))\nlock = threading.Lock()"
USES_LOCK = "with lock:\n    total = X_train.sum()"
NO_LOCK = "result = float(X_train.sum()) + 1"


@pytest.fixture(scope="module")
def launch_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """An empty MLflow store and state directory of this module's own (its job count is this module's)."""
    base = tmp_path_factory.mktemp("launch-store")
    return Store(f"sqlite:///{base / 'mlflow.db'}", base / "state", {})


@pytest.fixture(scope="module")
def launch_lab(launch_store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab with the server extension and three presets in the SERVER's config (one misconfigured)."""
    config = f"c.KubernetesBackend.presets = {PRESETS!r}\n"
    running = start_lab(tmp_path_factory.mktemp("launch-lab"), launch_store, server_config=config)
    yield running
    stop_lab(running)


# A kernel whose Python cannot import the package: the import system answers as for an absent one.
WITHOUT_PACKAGE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'jupyter_mlflow_k8s':
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


def add_kernel_without_the_package(lab: Lab) -> str:
    """A kernelspec ``nojmk`` on the lab's JUPYTER_PATH (kernelspecs are read when a kernel starts)."""
    folder = Path(lab.log).parent / "data" / "kernels" / "nojmk"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-c", WITHOUT_PACKAGE, "-f", "{connection_file}"],
        "display_name": "Python without jupyter_mlflow_k8s",
        "language": "python",
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    return "nojmk"


def write_notebook(lab: Lab, name: str, kernel: str = "python3") -> None:
    """A notebook with a markdown cell, the setup cell and the two cells the tests send."""

    def cell(kind: str, source: str) -> dict[str, Any]:
        extra = {"outputs": [], "execution_count": None} if kind == "code" else {}
        return {"cell_type": kind, "metadata": {}, "source": source, **extra}

    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": kernel, "display_name": kernel, "language": "python"}},
        "cells": [cell("markdown", "# Launch"), cell("code", SETUP), cell("code", USES_LOCK), cell("code", NO_LOCK)],
    }
    root = Path(lab.log).parent / "root"
    (root / name).write_text(json.dumps(notebook))


def open_notebook(tab: Page, lab: Lab, name: str, kernel: str = "python3") -> Any:
    """Open ``name``, run its setup cell in the real kernel; returns the cells' locator."""
    write_notebook(lab, name, kernel)
    p = tab.page
    p.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
    cells = p.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
    cells.nth(3).wait_for(timeout=60_000)
    # the status bar says Idle once the kernel is connected (the toolbar's indicator says idle before it starts)
    p.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).first.wait_for(timeout=90_000)
    cells.nth(1).locator(".cm-content").click()
    p.keyboard.press("Shift+Enter")
    prompt = cells.nth(1).locator(".jp-InputPrompt")
    wait_until(lambda: re.fullmatch(r"\[1\]:", prompt.inner_text().strip()), timeout=90, what="the setup cell run")
    return cells


def cell_text(cell: Any) -> str:
    return "\n".join(cell.locator(".cm-line").all_inner_texts())


def row_text(locator: Any) -> str:
    return " ".join(locator.inner_text().split())


def job_records(store: Store) -> list[Any]:
    from jupyter_mlflow_k8s.jobs import JobService

    return list(JobService(store.settings()).list())


def test_form_lists_presets_ships_and_refuses_a_bad_memory(page: Page, launch_lab: Lab, launch_store: Store) -> None:
    p = page.page
    cells = open_notebook(page, launch_lab, "launch-form.ipynb")

    cells.nth(0).click()  # a markdown cell: the button is hidden there
    button = cells.nth(0).locator(f'[data-command="{COMMAND}"]')
    assert button.count() == 0 or "lm-mod-hidden" in (button.get_attribute("class") or "")

    cells.nth(2).locator(".cm-content").click()
    button = cells.nth(2).locator(f'.jp-cell-toolbar [data-command="{COMMAND}"]')
    button.wait_for(state="visible")
    assert "lm-mod-hidden" not in (button.get_attribute("class") or "")
    page.element_screenshot(cells.nth(2), "launch-cell-toolbar")

    cells.nth(2).click(button="right")  # the cell's context menu has the command too
    p.locator(f'.lm-Menu-item[data-command="{COMMAND}"]').wait_for(state="visible")
    p.keyboard.press("Escape")

    before = len(job_records(launch_store))
    text = cell_text(cells.nth(2))
    assert text == USES_LOCK

    cells.nth(2).locator(".cm-content").click()
    cells.nth(2).locator(f'.jp-cell-toolbar [data-command="{COMMAND}"]').click()
    form = p.locator(tid("jmk-launch-form"))
    form.wait_for(state="visible")

    options = p.locator(f"{tid('jmk-launch-preset')} option")
    wait_until(lambda: options.count() == 4, what="the server's presets in the form")
    labels = [row_text(options.nth(i)) for i in range(options.count())]
    assert labels[0] == "none"
    assert labels[1] == "a100 — gpus=1, memory=80Gi"
    assert labels[2] == "cpu-small — cpu=2, memory=4Gi"
    assert labels[3] == "typo (misconfigured)"

    x_train = p.locator(tid("jmk-launch-ship-row", variable="X_train"))
    x_train.wait_for()
    assert row_text(x_train) == "X_train ndarray 7.6 MB"
    lock = p.locator(tid("jmk-launch-ship-row", variable="lock"))
    assert lock.get_attribute("data-picklable") == "false"
    warning = p.locator(tid("jmk-launch-ship-warning", variable="lock"))
    assert warning.is_visible() and "lock" in warning.inner_text()
    alert = p.locator(tid("jmk-launch-ship-alert"))
    assert alert.is_visible() and "lock cannot be pickled" in alert.inner_text()

    p.locator(tid("jmk-launch-preset")).select_option("typo")
    problem = p.locator(tid("jmk-launch-preset-problem"))
    assert "memroy" in problem.inner_text()
    p.locator(tid("jmk-launch-preset")).select_option("")
    page.screenshot("launch-form")

    p.locator(tid("jmk-launch-memory")).fill("lots")
    p.locator(tid("jmk-launch-submit")).click()
    error = p.locator(tid("jmk-launch-error", field="memory"))
    error.wait_for(state="visible")
    assert "lots" in error.inner_text()
    assert form.is_visible()  # nothing ran: the form stays open with the error under its field
    page.screenshot("launch-form-bad-memory")
    p.locator(tid("jmk-launch-cancel")).click()
    form.wait_for(state="detached")
    assert cell_text(cells.nth(2)) == text
    assert len(job_records(launch_store)) == before

    p.keyboard.press("Escape")  # the command palette finds the command too
    p.keyboard.press("Control+Shift+C")
    p.keyboard.type("Run cell as job")
    p.locator(f'.lm-CommandPalette-item[data-command="{COMMAND}"]').wait_for(state="visible")
    p.keyboard.press("Escape")
    assert page.errors == []


def test_shortcut_opens_the_form_and_submit_writes_the_line_and_runs_it(
    page: Page, launch_lab: Lab, launch_store: Store
) -> None:
    p = page.page
    cells = open_notebook(page, launch_lab, "launch-submit.ipynb")
    before = {record.job_id for record in job_records(launch_store)}

    cells.nth(3).locator(".cm-content").click()  # edit mode: Accel Shift Enter opens the form
    p.keyboard.press("Control+Shift+Enter")
    form = p.locator(tid("jmk-launch-form"))
    form.wait_for(state="visible")
    p.locator(tid("jmk-launch-ship-row", variable="X_train")).wait_for()
    assert p.locator(tid("jmk-launch-ship-row")).count() == 1
    assert "result" in p.locator(tid("jmk-launch-returns")).inner_text()
    p.locator(tid("jmk-launch-cancel")).click()
    form.wait_for(state="detached")

    p.keyboard.press("Escape")  # command mode: the same shortcut
    p.keyboard.press("Control+Shift+Enter")
    form.wait_for(state="visible")
    p.locator(tid("jmk-launch-ship-row", variable="X_train")).wait_for()
    p.locator(tid("jmk-launch-backend")).select_option("local")
    p.locator(tid("jmk-launch-experiment")).fill("launch-ui")
    page.screenshot("launch-form-filled")
    p.locator(tid("jmk-launch-submit")).click()
    form.wait_for(state="detached")

    line = "%%train --backend local --experiment launch-ui"
    assert cell_text(cells.nth(3)) == f"{line}\n{NO_LOCK}"
    new = wait_until(
        lambda: [r for r in job_records(launch_store) if r.job_id not in before],
        timeout=60,
        what="the job submitted by the cell",
    )
    assert len(new) == 1 and new[0].spec.experiment == "launch-ui"
    output = cells.nth(3).locator(".jp-OutputArea")
    wait_until(lambda: f"job {new[0].job_id}" in output.inner_text(), timeout=60, what="the cell's job output")

    p.locator('li[data-id="jmk-sidebar"]').click()
    row = p.locator(tid("jmk-job-row", job_id=new[0].job_id))
    row.wait_for(timeout=30_000)
    page.screenshot("launch-submitted")
    wait_until(lambda: row.get_attribute("data-state") == "succeeded", timeout=120, what="the job shown succeeded")
    wait_until(
        lambda: "result" in output.inner_text() and "succeeded" in output.inner_text(),
        timeout=60,
        what="the cell's end of job",
    )
    assert page.errors == []


def test_a_kernel_without_the_package_says_what_to_install(page: Page, launch_lab: Lab) -> None:
    p = page.page
    cells = open_notebook(page, launch_lab, "launch-nojmk.ipynb", kernel=add_kernel_without_the_package(launch_lab))
    cells.nth(2).locator(".cm-content").click()
    cells.nth(2).locator(f'.jp-cell-toolbar [data-command="{COMMAND}"]').click()
    problem = p.locator(tid("jmk-launch-kernel-error"))
    problem.wait_for(state="visible")
    assert "cannot import jupyter_mlflow_k8s" in problem.inner_text()
    assert "%pip install jupyter_mlflow_k8s" in problem.inner_text()
    assert p.locator(tid("jmk-launch-memory")).is_disabled()
    page.screenshot("launch-form-kernel-without-package")
    p.locator(tid("jmk-launch-cancel")).click()
    assert cell_text(cells.nth(2)) == USES_LOCK
    assert page.errors == []
