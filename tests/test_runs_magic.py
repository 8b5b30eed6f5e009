"""``%runs`` on a real MLflow SQLite store, its table and widget, and the SVG line plot."""

from __future__ import annotations

import math
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.widgets.plot import svg_line_plot
from jupyter_mlflow_k8s.widgets.runs import RunsTable, RunSummary, RunsView, format_duration, runs_display

EVIL = "<img src=x onerror=alert(1)>"
SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_000_000  # ms


# --- svg_line_plot ----------------------------------------------------------------------------


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # also proves the markup is well-formed


def _texts(svg: str) -> list[str]:
    return [t.text or "" for t in _parse(svg).iter(f"{SVG}text")]


def test_plot_one_polyline_per_series_with_distinct_colors_and_y_labels() -> None:
    svg = svg_line_plot({"train": [(0, 1.0), (1, 0.5), (2, 0.25)], "valid": [(0, 2.0), (2, 0.75)]}, title="loss")
    root = _parse(svg)
    lines = list(root.iter(f"{SVG}polyline"))
    assert len(lines) == 2
    assert len({line.get("stroke") for line in lines}) == 2
    assert len(lines[0].get("points", "").split()) == 3
    texts = _texts(svg)
    assert {"loss", "2", "0.25", "train", "valid"} <= set(texts)
    assert root.get("width") == "320"


def test_plot_escapes_every_user_text() -> None:
    svg = svg_line_plot({EVIL: [(0, 1.0), (1, 2.0)], 'a"b': [(0, 1.5)]}, title=EVIL)
    assert "<img" not in svg and "&lt;img src=x onerror=alert(1)&gt;" in svg
    root = _parse(svg)
    assert not list(root.iter("img")) and not list(root.iter(f"{SVG}img"))
    assert EVIL in [t.text for t in root.iter(f"{SVG}title")]


def test_plot_skips_nan_and_inf() -> None:
    svg = svg_line_plot({"m": [(0, 1.0), (1, math.nan), (2, math.inf), (math.nan, 4.0), (3, 3.0), (4, -math.inf)]})
    (line,) = _parse(svg).iter(f"{SVG}polyline")
    assert len(line.get("points", "").split()) == 2
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    assert {"3", "1"} <= set(_texts(svg))


def test_plot_empty_and_all_nan_say_no_data() -> None:
    for series in ({}, {"m": []}, {"m": [(0, math.nan)]}):
        svg = svg_line_plot(series)
        root = _parse(svg)
        assert "no data" in _texts(svg)
        assert not list(root.iter(f"{SVG}polyline")) and not list(root.iter(f"{SVG}circle"))


def test_plot_single_point_is_a_dot_and_constant_is_flat() -> None:
    svg = svg_line_plot({"one": [(5, 0.3)]})
    (dot,) = _parse(svg).iter(f"{SVG}circle")
    assert all(math.isfinite(float(dot.get(a, "nan"))) for a in ("cx", "cy"))
    assert "0.3" in _texts(svg)

    svg = svg_line_plot({"flat": [(0, 7.0), (1, 7.0), (2, 7.0)]})
    (line,) = _parse(svg).iter(f"{SVG}polyline")
    ys = {p.split(",")[1] for p in line.get("points", "").split()}
    assert len(ys) == 1
    assert _texts(svg).count("7") == 1


def test_plot_sorts_points_by_step_and_colors_many_series() -> None:
    svg = svg_line_plot({"m": [(2, 1.0), (0, 3.0), (1, 2.0)]})
    (line,) = _parse(svg).iter(f"{SVG}polyline")
    xs = [float(p.split(",")[0]) for p in line.get("points", "").split()]
    assert xs == sorted(xs)
    many = svg_line_plot({f"run-{i}": [(0, i), (1, i + 1)] for i in range(14)})
    strokes = [line.get("stroke") for line in _parse(many).iter(f"{SVG}polyline")]
    assert len(set(strokes)) == 14


# --- RunsTable and RunsView, no MLflow --------------------------------------------------------


def _summary(name: str, start: int, **kw: Any) -> RunSummary:
    return RunSummary(
        run_id=uuid.uuid4().hex,
        name=name,
        experiment=kw.pop("experiment", "e"),
        status=kw.pop("status", "FINISHED"),
        start_ms=T0 + start * 1000,
        end_ms=T0 + start * 1000 + kw.pop("seconds", 1) * 1000,
        **kw,
    )


def _order(table: RunsTable) -> list[str]:
    return [run.name for run in table.sorted_runs()]


def test_table_sorts_numbers_as_numbers_and_missing_last() -> None:
    runs = [
        _summary("a", 0, params={"lr": "2", "opt": "sgd"}, metrics={"loss": 0.2}),
        _summary("b", 10, params={"lr": "10", "opt": "adam"}, metrics={"loss": 0.4}),
        _summary("c", 20, params={"lr": "0.5"}),
    ]
    table = RunsTable(runs)
    assert _order(table) == ["c", "b", "a"]  # newest first
    table.sort_by("lr")
    assert _order(table) == ["c", "a", "b"]
    table.sort_by("params.opt", descending=True)
    assert _order(table) == ["a", "b", "c"]
    table.sort_by("loss")
    assert _order(table) == ["a", "b", "c"]
    table.sort_by("metrics.loss", descending=True)
    assert _order(table) == ["b", "a", "c"]
    with pytest.raises(ValueError, match="No column 'nope'"):
        table.sort_by("nope")


def test_format_duration() -> None:
    assert format_duration(4.25) == "4.2s"
    assert format_duration(185) == "3m 05s"
    assert format_duration(2 * 3600 + 180) == "2h 03m"
    assert format_duration(86400 + 7200) == "1d 02h"
    assert format_duration(None) == ""


def test_view_resorts_and_plots_on_widget_changes() -> None:
    histories = {("a", "loss"): [(0, 1.0), (1, 0.2)], ("b", "loss"): [(0, 0.9), (1, 0.4)]}
    runs = [
        RunSummary("a", "run-a", "e", "FINISHED", T0, T0 + 5000, {}, {"loss": 0.2}),
        RunSummary("b", "run-b", "e", "FINISHED", T0 + 1000, T0 + 3000, {}, {"loss": 0.4}),
    ]
    view = RunsView(RunsTable(runs, history=lambda run_id, key: histories[(run_id, key)], caption="2 runs"))
    assert view.html.value.index("run-b") < view.html.value.index("run-a")
    assert view.chart.value == ""
    view.sort.value = "duration"
    assert view.direction.value is True  # the toggle keeps its direction: longest first
    assert view.html.value.index("run-a") < view.html.value.index("run-b")
    view.direction.value = False
    assert view.direction.description == "ascending"
    assert view.html.value.index("run-b") < view.html.value.index("run-a")
    view.metric.value = "loss"
    root = _parse(view.chart.value)
    assert len(list(root.iter(f"{SVG}polyline"))) == 2
    assert "run-a" in repr(view) and "2 runs" in repr(view)
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "run-a" in bundle["text/plain"]


def test_runs_display_picks_the_widget_only_with_a_kernel() -> None:
    table = RunsTable([_summary("a", 0)])

    class Kernel:
        kernel = object()

    assert runs_display(table, object()) is table
    assert isinstance(runs_display(table, Kernel()), RunsView)


# --- %runs on a real store ---------------------------------------------------------------------


def _experiment(client: MlflowClient, tmp_path: Path, name: str | None = None) -> tuple[str, str]:
    name = name or f"runs-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "artifacts" / uuid.uuid4().hex[:8]
    return name, client.create_experiment(name, artifact_location=folder.as_uri())


def _run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    start: int,
    seconds: int = 5,
    params: dict[str, str] | None = None,
    losses: list[float] | None = None,
) -> str:
    run = client.create_run(experiment_id, start_time=T0 + start * 1000, run_name=name)
    run_id = run.info.run_id
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    for step, loss in enumerate(losses or []):
        client.log_metric(run_id, "loss", loss, step=step, timestamp=T0)
    client.set_terminated(run_id, "FINISHED", end_time=T0 + (start + seconds) * 1000)
    return run_id


@pytest.fixture
def seeded(shell: Any, mlflow_uri: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    client = MlflowClient(mlflow_uri)
    name, experiment_id = _experiment(client, tmp_path)
    ids = {
        "a": _run(client, experiment_id, "a", 0, seconds=30, params={"lr": "2"}, losses=[1.0, 0.5, 0.2]),
        "b": _run(client, experiment_id, "b", 10, seconds=5, params={"lr": "10"}, losses=[0.9, 0.4]),
        "c": _run(client, experiment_id, "c", 20, seconds=60, params={"lr": "0.5"}),
    }
    return name, ids


def _names(table: RunsTable) -> list[str]:
    return [run.name for run in table.sorted_runs()]


def test_runs_lists_newest_first_with_params_and_latest_metrics(shell: Any, seeded: tuple[str, dict[str, str]]) -> None:
    name, ids = seeded
    table = shell.run_line_magic("runs", name)
    assert isinstance(table, RunsTable)
    assert _names(table) == ["c", "b", "a"]
    assert table.columns == ["run", "status", "start", "duration", "params.lr", "metrics.loss"]
    text = repr(table)
    lines = text.splitlines()
    assert lines[0] == f"3 most recent runs of experiment {name!r} (sorted by start, descending)"
    assert lines[1].split() == ["run", "status", "start", "duration", "params.lr", "metrics.loss"]
    assert lines[2].split()[0] == "c" and lines[2].split()[-1] == "0.5"  # c logged no loss
    assert lines[3].split()[-2:] == ["10", "0.4"] and lines[4].split()[-2:] == ["2", "0.2"]
    assert "30.0s" in lines[4] and "1m 00s" in lines[2]
    assert len({line.index("params.lr") for line in lines[1:2]}) == 1
    header = lines[1]
    assert all(row[header.index("status") :].startswith("FINISHED") for row in lines[2:])  # aligned columns
    html_out = table._repr_html_()
    assert f'title="{ids["a"]}"' in html_out and "<th>metrics.loss</th>" in html_out


def test_runs_sorts_by_any_column(shell: Any, seeded: tuple[str, dict[str, str]]) -> None:
    name, _ = seeded
    assert _names(shell.run_line_magic("runs", f"{name} --sort lr")) == ["c", "a", "b"]
    assert _names(shell.run_line_magic("runs", f"{name} --sort params.lr --desc")) == ["b", "a", "c"]
    assert _names(shell.run_line_magic("runs", f"{name} --sort metrics.loss")) == ["a", "b", "c"]
    assert _names(shell.run_line_magic("runs", f"{name} --sort loss --desc")) == ["b", "a", "c"]
    assert _names(shell.run_line_magic("runs", f"{name} --sort duration")) == ["b", "a", "c"]
    assert _names(shell.run_line_magic("runs", f"{name} --sort start")) == ["a", "b", "c"]
    assert _names(shell.run_line_magic("runs", f"{name} --max 2")) == ["c", "b"]
    with pytest.raises(UsageError, match=r"No column 'accuracy' to sort by\. Columns: run, status"):
        shell.run_line_magic("runs", f"{name} --sort accuracy")
    with pytest.raises(UsageError, match="--max 0"):
        shell.run_line_magic("runs", f"{name} --max 0")


def test_runs_plots_a_metric_across_runs(shell: Any, seeded: tuple[str, dict[str, str]]) -> None:
    name, _ = seeded
    table = shell.run_line_magic("runs", f"{name} --metric loss")
    root = _parse(table.plot())
    lines = list(root.iter(f"{SVG}polyline"))
    assert len(lines) == 2  # c has no loss
    assert [len(line.get("points", "").split()) for line in lines] == [2, 3]  # b, then a: the table's order
    assert "<svg" in table._repr_html_()
    with pytest.raises(UsageError, match=r"No metric 'acc' in these runs\. Metrics: loss"):
        shell.run_line_magic("runs", f"{name} --metric acc")


def test_runs_html_escapes_user_text(shell: Any, mlflow_uri: str, tmp_path: Path) -> None:
    client = MlflowClient(mlflow_uri)
    name, experiment_id = _experiment(client, tmp_path, name=f"<b>exp-{uuid.uuid4().hex[:6]}</b>")
    # MLflow refuses markup in param and metric keys; run names, param values and experiment names pass.
    _run(client, experiment_id, EVIL, 0, params={"note": "<script>alert(1)</script>"}, losses=[1.0, 0.5])
    table = shell.run_line_magic("runs", f'"{name}" --metric loss')
    out = table._repr_html_()
    assert EVIL not in out and "<script>" not in out and "<b>exp" not in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;b&gt;exp" in out  # the caption
    assert EVIL in repr(table)  # the text form shows it as it is
    view = RunsView(table)
    assert (
        EVIL not in view.html.value and EVIL not in view.chart.value and "<b>exp" not in view.widget.children[0].value
    )
    assert "&lt;img src=x onerror=alert(1)&gt;" in view.chart.value  # the legend names the run


def test_runs_unknown_experiment_names_known_ones(shell: Any, seeded: tuple[str, dict[str, str]]) -> None:
    name, _ = seeded
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("runs", name + "x")
    message = str(info.value)
    assert message.startswith(f"No MLflow experiment {name + 'x'!r}. Did you mean {name!r}")
    assert "Experiments: " in message and "%runs NAME" in message


def test_runs_defaults_to_the_notebooks_experiment(shell: Any, seeded: tuple[str, dict[str, str]]) -> None:
    name, _ = seeded
    shell.user_ns["__session__"] = f"/home/jovyan/work/{name}.ipynb"
    table = shell.run_line_magic("runs", "")
    assert _names(table) == ["c", "b", "a"] and "experiment" not in table.columns

    shell.user_ns["__session__"] = f"/home/jovyan/work/{name}-never-trained.ipynb"
    table = shell.run_line_magic("runs", "--max 1000")  # the session's store holds the runs of every test
    assert "of all experiments" in table.caption and "experiment" in table.columns
    assert {"a", "b", "c"} <= set(_names(table))
    assert name in repr(table)


def test_runs_of_an_empty_experiment(shell: Any, mlflow_uri: str, tmp_path: Path) -> None:
    name, _ = _experiment(MlflowClient(mlflow_uri), tmp_path)
    table = shell.run_line_magic("runs", name)
    assert repr(table) == f"No runs in experiment {name!r} yet. A %%train cell records one per job."
    assert "<p>No runs in experiment" in table._repr_html_()
