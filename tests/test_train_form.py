"""``%%train_form``: the ipywidgets launch form, driven as a user would, and its Run button running a real local job."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from helpers import kernel_client

import jupyter_mlflow_k8s
from jupyter_mlflow_k8s.magics.common import service_for
from jupyter_mlflow_k8s.magics.launcher import LauncherMagics, make_line, show_train_form
from jupyter_mlflow_k8s.models import JobState

CELL = "%%train --backend kubernetes --gpus 1 --memory 16Gi --param lr=0.1\nmodel = X_train.sum() * lr\n"


@pytest.fixture
def data(shell: Any) -> Any:
    shell.run_cell("import numpy as np, threading\nX_train = np.zeros((1000, 950))\nlock = threading.Lock()")
    return shell


def form_for(shell: Any, cell: str) -> Any:
    shown: list[Any] = []
    form = show_train_form(shell, cell, display=shown.append)
    assert shown == [form.widget]
    return form


def test_the_form_is_filled_in_from_the_cells_line(data: Any) -> None:
    form = form_for(data, CELL)
    assert "jmk-TrainForm" in form.widget._dom_classes
    assert form.backend.value == "kubernetes" and form.preset.value is None
    assert form.texts["gpus"].value == "1" and form.texts["memory"].value == "16Gi" and form.texts["cpu"].value == ""
    assert form.extra.value == "--param lr=0.1" and form.run_async.value is False
    assert form.preview.value == "<code>%%train --backend kubernetes --gpus 1 --memory 16Gi --param lr=0.1</code>"
    assert form.run_button.disabled is False
    assert [label for label, _ in form.backend.options] == ["default (local)", "local", "kubernetes"]


def test_the_preview_is_the_line_ops_line(data: Any) -> None:
    form = form_for(data, "model = X_train.sum()")
    form.backend.value = "kubernetes"
    form.texts["cpu"].value = "4"
    form.texts["experiment"].value = "my exp"
    form.run_async.value = True
    form.extra.value = "--timeout 2h"
    expected = make_line(data, "model = X_train.sum()", form.values(), "--timeout 2h")["line"]
    assert expected == '%%train --backend kubernetes --cpu 4 --experiment "my exp" --async --timeout 2h'
    assert form.preview.value == f"<code>{expected.replace('&', '&amp;').replace(chr(34), '&quot;')}</code>"


def test_a_bad_value_is_an_inline_error_and_disables_run(data: Any) -> None:
    form = form_for(data, CELL)
    form.texts["memory"].value = "lots"
    assert "--memory &#x27;lots&#x27; is not a memory size" in form.errors["memory"].value
    assert form.errors["gpus"].value == "" and form.run_button.disabled is True
    assert "--memory lots" in form.preview.value  # the line is still shown, with what is wrong beside its field
    assert form.run() is None and service_for(data).list() == []  # nothing runs
    form.texts["memory"].value = "16Gi"
    assert form.errors["memory"].value == "" and form.run_button.disabled is False
    form.extra.value = "--memory 8Gi"
    assert "form&#x27;s own fields" in form.errors["extra"].value and form.run_button.disabled is True


def test_the_ship_table_lists_inputs_and_warns_of_unpicklable_ones(data: Any) -> None:
    form = form_for(data, "model = X_train.sum()\nheld = lock")
    table = form.ship.value
    assert "<td>X_train</td><td>ndarray</td><td>7.6 MB</td>" in table
    assert "<td>lock</td><td>lock</td><td>-</td>" in table and "jmk-TrainForm-warning" in table
    assert "Cannot send &#x27;lock&#x27;" in table and "Comes back: model, held" in table


def test_a_syntax_error_in_the_cell_is_shown_and_nothing_can_run(data: Any) -> None:
    form = form_for(data, "x = (1,\n")
    assert "syntax error" in form.errors["cell"].value and form.run_button.disabled is True


def test_run_writes_the_line_into_the_cell_and_runs_a_local_job(data: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data.run_cell("base = 21")
    form = form_for(data, "result = base * factor\nprint('computed', result)")
    form.backend.value = "local"
    form.extra.value = "--param factor=2"
    assert form.run_button.disabled is False
    form.run_button.click()
    assert form.error is None, form.error
    assert data.user_ns["result"] == 42
    (record,) = service_for(data).list()
    assert record.state is JobState.SUCCEEDED and record.spec.backend == "local"
    assert record.spec.inputs == ("base",) and dict(record.spec.params) == {"factor": 2}
    assert (
        data.rl_next_input
        == "%%train --backend local --param factor=2\nresult = base * factor\nprint('computed', result)"
    )
    assert "computed 42" in capsys.readouterr().out
    assert form.run_button.disabled is False  # ready to run again


def test_a_job_that_fails_shows_its_error_in_the_form(data: Any, capsys: pytest.CaptureFixture[str]) -> None:
    form = form_for(data, "raise ValueError('no good')")
    form.run_button.click()
    assert type(form.error).__name__ == "JobFailed" and "no good" in str(form.error)
    assert "JobFailed" in capsys.readouterr().out


def test_without_widgets_the_magic_prints_the_line_to_use(data: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data.run_cell_magic("train_form", "--gpus 1 --memory lots", "model = X_train.sum()")
    out = capsys.readouterr().out
    assert "%%train --gpus 1 --memory lots" in out and "problem (memory): --memory 'lots'" in out
    assert "ships X_train  ndarray  7.6 MB" in out and "comes back: model" in out
    form = jupyter_mlflow_k8s.train_form("%%train --cpu 2\nmodel = X_train.sum()")
    assert "    %%train --cpu 2" in capsys.readouterr().out and form.texts["cpu"].value == "2"
    assert service_for(data).list() == []


def test_the_magic_has_examples_in_its_help(shell: Any) -> None:
    doc = LauncherMagics.train_form.__doc__ or ""
    assert "Examples\n        --------" in doc and "%%train_form --backend kubernetes" in doc
    assert "train_form" in shell.magics_manager.magics["cell"]


# -- a real kernel: the button's click arrives as a widget comm message ---------------------------------


def _until_idle(kc: Any, msg_id: str) -> list[dict[str, Any]]:
    seen = []
    deadline = time.time() + 120
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.time()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        seen.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return seen


def _execute(kc: Any, code: str, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    msg_id = kc.execute(code, **options)
    messages = _until_idle(kc, msg_id)
    while True:
        reply = kc.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], messages


@pytest.mark.slow
def test_a_click_in_a_real_kernel_runs_the_job_and_leaks_no_cell_edit(state_dir: Any) -> None:
    with kernel_client() as kc:
        assert _execute(kc, "%load_ext jupyter_mlflow_k8s\nbase = 21")[0]["status"] == "ok"
        reply, messages = _execute(kc, "%%train_form --backend local\nresult = base * 2\n")
        assert reply["status"] == "ok", reply
        states: dict[str, dict[str, Any]] = {}  # each widget's state: opened, then updated
        for message in messages:
            if message["msg_type"] in ("comm_open", "comm_msg") and "state" in message["content"]["data"]:
                states.setdefault(message["content"]["comm_id"], {}).update(message["content"]["data"]["state"])
        (button,) = [cid for cid, state in states.items() if state.get("description") == "Run as job"]
        assert states[button]["disabled"] is False
        lines = [s["value"] for s in states.values() if "jmk-TrainForm-line" in s.get("_dom_classes", ())]
        assert lines == ["<code>%%train --backend local</code>"]
        click = kc.session.msg("comm_msg", {"comm_id": button, "data": {"method": "custom",
                                                                         "content": {"event": "click"}}})  # fmt: skip
        kc.shell_channel.send(click)
        shown = json.dumps([m["content"] for m in _until_idle(kc, click["header"]["msg_id"])])
        assert "submitted (local)" in shown and "returned result" in shown  # the job's output, in the form
        assert "put this line on top of the cell" in shown
        reply, _ = _execute(kc, "", user_expressions={"result": "result"})
        assert reply["user_expressions"]["result"]["data"]["text/plain"] == "42"
        assert reply["payload"] == []  # no set_next_input waiting to rewrite whichever cell runs next
