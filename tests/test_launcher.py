"""The kernel side of the launch forms (contract C1): ``describe`` and ``line`` through a real shell and a real kernel."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from helpers import kernel_client
from IPython.core.error import UsageError
from IPython.core.formatters import JSONFormatter

from jupyter_mlflow_k8s.magics.common import service_for
from jupyter_mlflow_k8s.magics.launcher import (
    describe,
    human_size,
    kernel_request,
    make_line,
    measure_pickle,
    quote_value,
    ship_list,
    split_cell,
)

CELL = "%%train --backend kubernetes --gpus 1 --memory 16Gi --param lr=0.1\nmodel = X_train.sum() * lr\n"
NO_VALUES = {"backend": None, "preset": None, "gpus": None, "cpu": None, "memory": None, "image": None,
             "experiment": None, "register": None, "async": False}  # fmt: skip


def ask(shell: Any, **request: Any) -> dict[str, Any]:
    """One request as the browser sends it: base64 of JSON; the reply as IPython's JSON formatter gives it."""
    encoded = base64.b64encode(json.dumps(request).encode()).decode()
    reply = kernel_request(shell, encoded)
    return JSONFormatter()(reply)  # type: ignore[no-any-return]  # a kernel's formatter, as a terminal has none


@pytest.fixture
def data(shell: Any) -> Any:
    shell.run_cell("import numpy as np, threading\nX_train = np.zeros((1000, 950))\nlock = threading.Lock()\nlr = 5")
    return shell


def test_describe_prefills_the_values_of_the_line_and_keeps_the_other_flags(data: Any) -> None:
    reply = ask(data, op="describe", cell=CELL)
    assert reply["ok"] is True and reply["had_line"] is True and reply["errors"] == {}
    assert reply["values"] == {**NO_VALUES, "backend": "kubernetes", "gpus": "1", "memory": "16Gi"}
    assert reply["extra"] == "--param lr=0.1"
    assert reply["body"] == "model = X_train.sum() * lr\n"
    assert reply["returns"] == ["model"]
    assert [item["name"] for item in reply["ship"]] == ["X_train"]  # lr is a --param: not shipped
    assert reply["backends"][:2] == ["local", "kubernetes"] and "pipeline" not in reply["backends"]
    assert reply["default_backend"] == "local" and reply["presets"] == []


def test_a_cell_without_a_line_has_the_defaults(data: Any) -> None:
    reply = describe(data, "model = X_train.sum() * lr\n")
    assert reply["had_line"] is False and reply["values"] == NO_VALUES and reply["extra"] == ""
    assert [item["name"] for item in reply["ship"]] == ["X_train", "lr"]
    assert split_cell("\n%%train --gpus 1\nx = 1") == ("--gpus 1", "x = 1")
    assert split_cell("%%train_form --gpus 1\nx = 1") == (None, "%%train_form --gpus 1\nx = 1")


def test_the_ship_list_says_type_and_pickled_size(data: Any) -> None:
    reply = describe(data, "model = X_train.mean()")
    (item,) = reply["ship"]
    assert (item["name"], item["type"], item["size_text"]) == ("X_train", "ndarray", "7.6 MB")
    assert item["type_full"] == "numpy.ndarray" and item["picklable"] is True and item["warning"] is None
    assert 7_600_000 < item["size"] < 7_601_000 and reply["ship_total_text"] == "7.6 MB"


def test_an_unpicklable_input_is_warned_about_as_the_payload_would_refuse_it(data: Any) -> None:
    reply = describe(data, "held = lock.locked()")
    (item,) = reply["ship"]
    assert item["picklable"] is False and item["size"] is None and item["type"] == "lock"
    assert "Cannot send 'lock' (type _thread.lock)" in item["warning"]
    assert "Create it inside the %%train cell instead" in item["warning"] and "del lock" in item["warning"]


def test_sizes_are_counted_up_to_a_bound() -> None:
    exact = measure_pickle(b"x" * 5000)
    assert exact.exact and 5000 < exact.size < 5100  # type: ignore[operator]
    bounded = measure_pickle(b"x" * 5000, bound=1000)
    assert not bounded.exact and bounded.size is not None and bounded.size > 1000
    assert [human_size(n) for n in (0, 999, 1000, 7_600_163, 2_500_000_000)] == ["0 B", "999 B", "1.0 kB", "7.6 MB",
                                                                                 "2.5 GB"]  # fmt: skip


def test_a_value_past_the_bound_shows_as_at_least(data: Any) -> None:
    (item,) = ship_list(data, ["X_train"], bound=10**6)
    assert item["size_text"].startswith(">= ") and item["size"] > 10**6


def test_memory_lots_is_refused_by_the_form_and_by_the_magic_before_anything_is_submitted(data: Any) -> None:
    values = {**NO_VALUES, "memory": "lots", "cpu": "lots"}
    reply = ask(data, op="line", cell="x = 1", values=values, extra="")
    assert reply["ok"] is False
    assert "--memory 'lots' is not a memory size" in reply["errors"]["memory"]
    assert "use e.g. 16Gi, 512Mi or 4" in reply["errors"]["memory"]
    assert "--cpu 'lots' is not a CPU amount" in reply["errors"]["cpu"]
    assert reply["line"] == "%%train --cpu lots --memory lots"
    flags, body = split_cell(reply["cell"])
    with pytest.raises(UsageError, match="is not a"):
        data.run_cell_magic("train", flags, body)
    assert service_for(data).list() == []  # no job record: nothing was submitted


@pytest.mark.parametrize(
    ("values", "extra", "key", "said"),
    [
        ({"gpus": "two"}, "", "gpus", "--gpus 'two' is not a number of GPUs"),
        ({"memory": "-2Gi"}, "", "memory", "--memory '-2Gi' is negative"),
        ({"register": "my model"}, "", "register", "is not a usable model name"),
        ({"backend": "nowhere"}, "", "backend", "Unknown backend 'nowhere'"),
        ({}, "--timeout soon", "extra", "--timeout 'soon' is not a duration"),
        ({}, "--nope", "extra", "unrecognized arguments: --nope"),
        ({"register": "clf"}, "--sweep 'lr=[0.1, 0.2]' --objective loss:min", "register", "--register with --sweep"),
        ({}, "--objective loss:min", "extra", "only make sense with --sweep"),
    ],
)
def test_every_refusal_is_the_magics_own_by_the_field_at_fault(data: Any, values: dict[str, Any], extra: str,
                                                               key: str, said: str) -> None:  # fmt: skip
    reply = make_line(data, "loss = 1.0", {**NO_VALUES, **values}, extra)
    assert reply["ok"] is False and said in reply["errors"][key], reply
    flags, body = split_cell(reply["cell"])
    with pytest.raises(UsageError, match=None) as info:
        data.run_cell_magic("train", flags, body)
    assert said in str(info.value)
    assert service_for(data).list() == []


def test_a_cell_problem_is_the_cells(data: Any) -> None:
    reply = make_line(data, "x = (1,\n", {**NO_VALUES, "gpus": "1"}, "")
    assert reply["ok"] is False and list(reply["errors"]) == ["cell"] and "syntax error" in reply["errors"]["cell"]
    assert describe(data, "x = (1,\n")["errors"]["cell"] == reply["errors"]["cell"]


def test_a_bad_line_in_the_cell_is_reported_and_kept(data: Any) -> None:
    reply = describe(data, "%%train --gpus 'oops\nx = X_train")
    assert "Close the quote" in reply["errors"]["line"] and reply["extra"] == "--gpus 'oops"
    assert [item["name"] for item in reply["ship"]] == ["X_train"]  # what ships is known all the same
    reply = describe(data, "%%train --memory lots\nx = X_train")
    assert "--memory 'lots'" in reply["errors"]["line"] and reply["values"]["memory"] == "lots"


def test_the_line_round_trips(data: Any) -> None:
    values = {
        "backend": "kubernetes",
        "preset": "a100",
        "gpus": "2",
        "cpu": "500m",
        "memory": "16Gi",
        "image": "ghcr.io/me/train:1",
        "experiment": "my 'best' exp",
        "register": "mnist-clf",
        "async": True,
    }
    extra = '--param lr=0.1 --timeout 2h --run-name "first try"'
    config = data.config
    config.KubernetesBackend.presets = {"a100": {"gpus": 1, "memory": "80Gi"}}
    try:
        reply = make_line(data, CELL, values, extra)
        assert reply["ok"] is True, reply
        assert reply["line"] == ("%%train --backend kubernetes --preset a100 --gpus 2 --cpu 500m --memory 16Gi "
                                 "--image ghcr.io/me/train:1 --experiment \"my 'best' exp\" --register mnist-clf "
                                 "--async --param lr=0.1 --timeout 2h --run-name \"first try\"")  # fmt: skip
        assert reply["cell"] == reply["line"] + "\nmodel = X_train.sum() * lr\n"
        again = describe(data, reply["cell"])
        assert again["values"] == values and again["extra"] == extra and again["errors"] == {}
        assert again["presets"] == [{"name": "a100", "summary": "gpus=1, memory=80Gi", "gpus": 1, "problem": None}]
        assert make_line(data, again["cell"] if "cell" in again else reply["cell"], again["values"],
                         again["extra"])["line"] == reply["line"]  # fmt: skip
    finally:
        del config.KubernetesBackend["presets"]


@pytest.mark.parametrize("value", ['say "hi"', "it's", "-dash", "a b", "'quoted'", "#hash", "x\\y", ""])
def test_quoted_values_read_back_as_typed(data: Any, value: str) -> None:
    reply = make_line(data, "x = 1", {**NO_VALUES, "experiment": value}, "")
    assert reply["ok"] is True, reply
    assert describe(data, reply["cell"])["values"]["experiment"] == (value or None)


def test_values_a_line_cannot_hold_are_refused_by_field(data: Any) -> None:
    reply = make_line(data, "x = 1", {**NO_VALUES, "experiment": "both ' and \""}, "")
    assert reply["ok"] is False and "both kinds of quotes" in reply["errors"]["experiment"]
    assert quote_value("16Gi") == "16Gi" and quote_value("-x") == '"-x"'
    with pytest.raises(ValueError, match="one line"):
        quote_value("a\nb")
    reply = make_line(data, "x = 1", {**NO_VALUES, "image": "a\nb"}, "")
    assert reply["ok"] is False and "one line" in reply["errors"]["image"]
    reply = make_line(data, "x = 1", NO_VALUES, "--memory 8Gi --param a=1")
    assert reply["ok"] is False and "--memory" in reply["errors"]["extra"] and "memory" in reply["errors"]["extra"]
    reply = make_line(data, "x = 1", NO_VALUES, "--mem 8Gi")  # argparse takes abbreviations: so do we
    assert reply["ok"] is False and "--mem" in reply["errors"]["extra"]
    reply = make_line(data, "x = 1", NO_VALUES, "--param 'a=1")
    assert reply["ok"] is False and "Close the quote" in reply["errors"]["extra"]


def test_a_sweep_in_the_other_flags_is_checked_as_the_magic_checks_it(data: Any) -> None:
    cell = "%%train --sweep 'lr=[0.1, 0.2]' --objective loss:min\nloss = X_train.sum() * lr"
    reply = describe(data, cell)
    assert reply["errors"] == {} and [item["name"] for item in reply["ship"]] == ["X_train"]  # lr is swept
    assert reply["extra"] == "--sweep 'lr=[0.1, 0.2]' --objective loss:min"
    bad = make_line(data, cell, NO_VALUES, "--sweep 'lr=[0.1, 0.2]' --objective loss")
    assert bad["ok"] is False and "--objective" in bad["errors"]["extra"]


def test_requests_it_cannot_answer_say_why(shell: Any) -> None:
    assert "base64" in kernel_request(shell, "%%%")._repr_json_()["errors"]["request"]
    assert "Unknown op" in ask(shell, op="submit", cell="x = 1")["errors"]["request"]
    assert "cell" in ask(shell, op="describe")["errors"]["request"]
    assert "Unknown values" in ask(shell, op="line", cell="x = 1", values={"gpu": "1"})["errors"]["request"]


# -- through a real kernel, as the JupyterLab form asks ----------------------------------------------

EXPRESSION = ("__import__('jupyter_mlflow_k8s.magics.launcher', fromlist=['kernel_request'])"
              ".kernel_request(get_ipython(), '{}')")  # fmt: skip


def _execute(kc: Any, code: str, user_expressions: dict[str, str] | None = None, silent: bool = False) -> Any:
    msg_id = kc.execute(code, silent=silent, store_history=not silent, user_expressions=user_expressions or {})
    deadline = time.time() + 60
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.time()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


@pytest.mark.slow
def test_user_expressions_of_a_real_kernel_carry_the_reply_as_json(state_dir: Any) -> None:
    with kernel_client() as kc:
        assert _execute(kc, "%load_ext jupyter_mlflow_k8s")["status"] == "ok"
        setup = "import numpy as np, threading\nX_train = np.zeros((1000, 950))\nlock = threading.Lock()"
        assert _execute(kc, setup)["status"] == "ok"
        request = base64.b64encode(json.dumps({"op": "describe", "cell": CELL + "held = lock\n"}).encode()).decode()
        content = _execute(kc, "", {"jmk": EXPRESSION.format(request)}, silent=True)
        result = content["user_expressions"]["jmk"]
        assert result["status"] == "ok", result
        reply = result["data"]["application/json"]
        assert reply["values"]["memory"] == "16Gi" and reply["extra"] == "--param lr=0.1"
        ship = {item["name"]: item for item in reply["ship"]}
        assert ship["X_train"]["size_text"] == "7.6 MB" and ship["lock"]["picklable"] is False
        request = base64.b64encode(json.dumps({"op": "line", "cell": CELL, "values": {**reply["values"],
                                   "memory": "lots"}, "extra": reply["extra"]}).encode()).decode()  # fmt: skip
        reply = _execute(kc, "", {"jmk": EXPRESSION.format(request)}, silent=True)["user_expressions"]["jmk"]
        assert reply["data"]["application/json"]["ok"] is False
        assert "memory" in reply["data"]["application/json"]["errors"]
        # the widget form writes into the cell only while an execute request is answered (where payloads go)
        probe = "from jupyter_mlflow_k8s.magics.launcher import _in_execute_request as probe"
        assert _execute(kc, probe)["status"] == "ok"
        found = _execute(kc, "", {"inside": "probe(get_ipython())"}, silent=True)["user_expressions"]["inside"]
        assert found["data"]["text/plain"] == "True"
