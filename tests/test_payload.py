"""Free-variable analysis and content-addressed staging (no jobs, no kernels)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.payload import UnpicklableValue, analyze_cell, load_value, stage_inputs, stage_value
from jupyter_mlflow_k8s.storage import get_storage


@pytest.mark.parametrize(
    ("code", "reads", "assigns"),
    [
        ("y = x + 1", {"x"}, ("y",)),
        ("x = 1\ny = x + 1", set(), ("x", "y")),
        ("x = x + 1", {"x"}, ("x",)),
        ("x += 1", {"x"}, ("x",)),
        ("for i in range(n):\n    total = i", {"n"}, ("i", "total")),
        ("squares = [v * v for v in data if v > lo]", {"data", "lo"}, ("squares",)),
        (
            "def f(a, b=default):\n    return a + helper(b) + scale\nout = f(1)",
            {"default", "helper", "scale"},
            ("f", "out"),
        ),
        ("def f():\n    tmp = 1\n    return tmp\n", set(), ("f",)),
        ("import numpy as np\narr = np.zeros(3)", set(), ("arr",)),
        ("class M(Base):\n    size = width\nm = M()", {"Base", "width"}, ("M", "m")),
        ("with open(path) as fh:\n    text = fh.read()", {"path"}, ("fh", "text")),
        ("try:\n    r = risky()\nexcept ValueError as err:\n    r = str(err)", {"risky"}, ("r", "err")),
        ("if (n := size) > 3:\n    big = n", {"size"}, ("n", "big")),
        ("f = lambda q: q * factor", {"factor"}, ("f",)),
        ("print(len(items))", {"items"}, ()),
    ],
)
def test_analyze_cell_reads_and_assigns(code: str, reads: set[str], assigns: tuple[str, ...]) -> None:
    analysis = analyze_cell(code)
    assert set(analysis.reads) == reads
    assert analysis.assigns == assigns


def test_inputs_are_reads_present_in_namespace() -> None:
    analysis = analyze_cell("z = x + y + missing")
    namespace = {"x": 1, "y": 2, "In": [], "get_ipython": print}
    assert analysis.inputs(namespace) == ("x", "y")
    assert analysis.inputs(namespace, exclude=["y"]) == ("x",)


def test_final_expression_detected() -> None:
    assert analyze_cell("x = 1\nx * 2").final_expression
    assert not analyze_cell("x = 1").final_expression


def test_syntax_error_is_a_usage_error() -> None:
    with pytest.raises(JMKUsageError, match="syntax error on line 2"):
        analyze_cell("x = 1\ny = (\n")


def test_stage_roundtrip_and_dedup(tmp_path: Path) -> None:
    storage = get_storage(tmp_path.as_uri())

    def scale(v: float) -> float:
        return v * 3

    entries = stage_inputs(storage, {"a": [1, 2, 3], "f": scale})
    assert [e.name for e in entries] == ["a", "f"]
    assert entries[0].type == "list" and entries[0].size > 0 and len(entries[0].sha256) == 64
    assert load_value(storage, entries[0].__dict__) == [1, 2, 3]
    assert load_value(storage, entries[1].__dict__)(2) == 6
    again = stage_value(storage, "b", [1, 2, 3])
    assert again.key == entries[0].key
    assert len([p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]) == 2


def test_large_value_is_written_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jupyter_mlflow_k8s.payload as payload

    monkeypatch.setattr(payload, "INLINE_LIMIT", 1024)  # take the two-pass path with a small array
    storage = get_storage(tmp_path.as_uri())
    array = np.arange(200_000, dtype=np.float64)
    first = stage_value(storage, "arr", array)
    blob = tmp_path / first.key
    mtime = blob.stat().st_mtime_ns
    writes: list[str] = []
    original_open = storage.open
    monkeypatch.setattr(storage, "open", lambda key, mode="rb": writes.append(mode) or original_open(key, mode))
    second = stage_value(storage, "arr", array.copy())
    assert second.key == first.key and blob.stat().st_mtime_ns == mtime
    assert "wb" not in writes
    np.testing.assert_array_equal(load_value(storage, second.__dict__), array)


def test_unpicklable_value_names_variable_and_type(tmp_path: Path) -> None:
    storage = get_storage(tmp_path.as_uri())
    with pytest.raises(UnpicklableValue, match=r"'lock' \(type _thread.lock\)"):
        stage_inputs(storage, {"ok": 1, "lock": threading.Lock()})
    with pytest.raises(UnpicklableValue, match="'gen' \\(type generator\\)"):
        stage_value(storage, "gen", (i for i in range(3)))
