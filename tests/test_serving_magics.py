"""``%serve`` and ``%predict`` in a real IPython shell, against real server processes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import process_gone
from IPython.core.error import UsageError
from serving_fixtures import Served

from jupyter_mlflow_k8s.serving.manager import Endpoint, ServingManager
from jupyter_mlflow_k8s.widgets.endpoints import EndpointTable


@pytest.fixture
def serving_shell(shell: Any, state_dir: Path) -> Iterator[Any]:
    """The test shell; any server a test left running is stopped afterwards."""
    shell.__dict__.pop("_jmk_serving", None)
    yield shell
    shell.__dict__.pop("_jmk_serving", None)
    manager = ServingManager()
    for endpoint in manager.list():
        if endpoint.running:
            manager.stop(endpoint.name)


def test_serve_predict_list_stop(serving_shell: Any, served_model: Served, capsys: pytest.CaptureFixture[str]) -> None:
    frame = served_model.frame.iloc[:10]
    serving_shell.user_ns["X"] = frame
    endpoint = serving_shell.run_line_magic("serve", f"models:/{served_model.name}@prod --name magic-prod")
    assert isinstance(endpoint, Endpoint) and endpoint.running and endpoint.name == "magic-prod"
    out = capsys.readouterr().out
    assert f"at {endpoint.url}" in out and "%predict magic-prod DATA" in out

    expected = served_model.models[0].predict(frame).tolist()
    assert serving_shell.run_line_magic("predict", "magic-prod X") == expected  # a variable
    assert serving_shell.run_line_magic("predict", "magic-prod X.iloc[:3]") == expected[:3]  # an expression
    assert serving_shell.run_line_magic("predict", "magic-prod X.to_dict(orient='records')") == expected

    table = serving_shell.run_line_magic("serve", "list")
    assert isinstance(table, EndpointTable)
    assert [row[:3] for row in table.rows] == [("magic-prod", "running", endpoint.url)]

    with pytest.raises(UsageError, match=r"already running.*%serve stop magic-prod"):
        serving_shell.run_line_magic("serve", f"{served_model.uri('1')} --name magic-prod")
    with pytest.raises(UsageError, match="refused the input"):
        serving_shell.run_line_magic("predict", "magic-prod X[['petal_length']]")

    assert serving_shell.run_line_magic("serve", "stop magic-prod") is None
    assert "stopped magic-prod" in capsys.readouterr().out
    assert process_gone(endpoint.pid)
    assert not any(p.pid == endpoint.pid for p in psutil.process_iter())
    assert serving_shell.run_line_magic("serve", "list").rows[0][:2] == ("magic-prod", "stopped")


def test_usage_errors_say_what_to_type(serving_shell: Any, state_dir: Path) -> None:
    for magic, line, message in (
        ("serve", "", "the following arguments are required"),
        ("serve", "stop", "%serve stop takes one NAME"),
        ("serve", "list --port 5", "%serve list takes no --port"),
        ("serve", "models:/a/1 extra", "Unexpected extra"),
        ("serve", "models:/a/1 --workers 0", "--workers must be a whole number"),
        ("serve", "models:/a/1 --port nope", "invalid int value"),
        ("serve", "models:/a/1 --name Bad_Name", "Try --name bad-name"),
        ("serve", "stop nothing", "No endpoint 'nothing'"),
        ("predict", "", "Usage: %predict NAME DATA"),
        ("predict", "nothing", "Usage: %predict NAME DATA"),
        ("predict", "nothing undefined_name", "could not be evaluated (NameError"),
        ("predict", "nothing [[1, 2]]", "No endpoint 'nothing'"),
    ):
        with pytest.raises(UsageError, match=re.escape(message)):
            serving_shell.run_line_magic(magic, line)
    assert ServingManager().list() == []
