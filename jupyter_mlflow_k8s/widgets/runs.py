"""``%runs`` output: a sortable table of MLflow runs and a plot of one metric across them.

``RunsTable`` is the data and its text and HTML renderings (used in terminals, in logs and
wherever no widget frontend listens). ``RunsView`` wraps it in ipywidgets: a sort Dropdown with
an ascending/descending toggle and a metric Dropdown that plots the metric's history. Nothing
here talks to MLflow: runs come in as ``RunSummary`` values, histories through a callable.
Everything user-given is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import JMKUsageError
from ..util.durations import clock_duration as format_duration
from .plot import svg_line_plot

History = Callable[[str, str], Sequence[tuple[float, float]]]
FIXED_COLUMNS = ("run", "experiment", "status", "start", "duration")
_ALIASES = {"name": "run", "run_name": "run", "start_time": "start", "state": "status", "time": "duration"}
_NUMERIC_FIXED = {"start", "duration"}


@dataclass(frozen=True)
class RunSummary:
    """What the table shows of one MLflow run."""

    run_id: str
    name: str
    experiment: str
    status: str
    start_ms: int | None
    end_ms: int | None
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Any, experiment: str) -> RunSummary:
        """From an ``mlflow.entities.Run`` (``metrics`` are the latest values)."""
        info = run.info
        return cls(
            run_id=info.run_id,
            name=info.run_name or info.run_id[:8],
            experiment=experiment,
            status=info.status,
            start_ms=info.start_time,
            end_ms=info.end_time,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
        )

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; so far, for a run still running."""
        if self.start_ms is None:
            return None
        end = self.end_ms if self.end_ms else (time.time() * 1000 if self.status == "RUNNING" else None)
        return None if end is None else max(0.0, (end - self.start_ms) / 1000)


def format_start(start_ms: int | None) -> str:
    """Local time, to the second."""
    if start_ms is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start_ms / 1000))


def _param_order(key: str) -> tuple[bool, str]:
    return key.startswith("jmk."), key  # the user's params first, the resources asked for after


def _as_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


class RunsTable:
    """Runs as rows; run name, status, start, duration, each param and each latest metric as columns.

    ``sort`` is a column (``"start"``, ``"params.lr"``, ``"metrics.loss"``, or a bare param or
    metric name); runs without a value sort last either way. ``metric`` names a metric to plot
    across the runs in the HTML rendering (its history comes from ``history``).
    """

    def __init__(
        self,
        runs: Iterable[RunSummary],
        sort: str | None = None,
        descending: bool | None = None,
        metric: str | None = None,
        history: History | None = None,
        caption: str = "",
        empty_message: str = "No runs.",
    ) -> None:
        self.runs = list(runs)
        self.caption = caption
        self.empty_message = empty_message
        self._history = history
        self._histories: dict[tuple[str, str], list[tuple[float, float]]] = {}
        params = {key for run in self.runs for key in run.params}
        self.param_names = sorted(params, key=_param_order)
        self.metric_names = sorted({key for run in self.runs for key in run.metrics})
        experiments = {run.experiment for run in self.runs}
        fixed = [c for c in FIXED_COLUMNS if c != "experiment" or len(experiments) > 1]
        self.columns: list[str] = [
            *fixed,
            *(f"params.{k}" for k in self.param_names),
            *(f"metrics.{k}" for k in self.metric_names),
        ]
        self.sort = "start"
        self.descending = True
        if sort is not None:
            self.sort_by(sort, descending=False if descending is None else descending)
        elif descending is not None:
            self.descending = descending
        self.metric = self.resolve_metric(metric) if metric else None

    def resolve(self, name: str) -> str:
        """The column ``name`` means: exact, an alias (``name``, ``start_time``), or a bare key."""
        name = name.strip()
        name = _ALIASES.get(name, name)
        if name in self.columns or (name in FIXED_COLUMNS and not self.runs):
            return name
        for prefix in ("metrics.", "params."):
            if f"{prefix}{name}" in self.columns:
                return f"{prefix}{name}"
        if name.startswith(("metrics.", "params.")) and not self.runs:
            return name
        shown = ", ".join(self.columns[:12]) + (", ..." if len(self.columns) > 12 else "")
        raise JMKUsageError(f"No column {name!r} to sort by. Columns: {shown}.")

    def resolve_metric(self, name: str) -> str:
        """A metric's key, with or without ``metrics.``; an error lists the metrics there are."""
        key = name.strip().removeprefix("metrics.")
        if key in self.metric_names or not self.runs:
            return key
        raise JMKUsageError(
            f"No metric {key!r} in these runs. Metrics: {', '.join(self.metric_names) or 'none logged yet'}."
        )

    def sort_by(self, column: str, descending: bool = False) -> None:
        """Sort by ``column`` from now on (runs without a value stay last)."""
        self.sort = self.resolve(column)
        self.descending = descending

    def value(self, run: RunSummary, column: str) -> Any:
        """The raw value of a cell: what sorting compares; ``None`` when the run has none."""
        if column.startswith("params."):
            return run.params.get(column.removeprefix("params."))
        if column.startswith("metrics."):
            return run.metrics.get(column.removeprefix("metrics."))
        return {
            "run": run.name,
            "experiment": run.experiment,
            "status": run.status,
            "start": run.start_ms,
            "duration": run.duration,
        }[column]

    def cell(self, run: RunSummary, column: str) -> str:
        """A cell as text."""
        value = self.value(run, column)
        if value is None:
            return ""
        if column == "start":
            return format_start(value)
        if column == "duration":
            return format_duration(value)
        if column.startswith("metrics."):
            return f"{value:.6g}"
        return str(value)

    def sorted_runs(self) -> list[RunSummary]:
        """The runs in the current order; numbers compare as numbers, the rest as text."""
        values = [(run, self.value(run, self.sort)) for run in self.runs]
        given = [value for _, value in values if value is not None]
        numeric = self.sort in _NUMERIC_FIXED or self.sort.startswith("metrics.")
        numeric = numeric or all(_as_number(value) is not None for value in given)
        keyed: list[tuple[Any, RunSummary]] = [
            (_as_number(value) if numeric else None if value is None else str(value), run) for run, value in values
        ]
        present = [(key, run) for key, run in keyed if key is not None]
        present.sort(key=lambda pair: pair[0], reverse=self.descending)  # stable: ties keep recency order
        return [run for _, run in present] + [run for key, run in keyed if key is None]

    def rows(self) -> list[list[str]]:
        """The cells, in the current order."""
        return [[self.cell(run, c) for c in self.columns] for run in self.sorted_runs()]

    def history(self, run: RunSummary, metric: str) -> list[tuple[float, float]]:
        """``(step, value)`` of ``metric`` in ``run`` (fetched once, then kept)."""
        key = (run.run_id, metric)
        if key not in self._histories:
            if self._history is None or metric not in run.metrics:
                self._histories[key] = []
            else:
                self._histories[key] = [(float(s), float(v)) for s, v in self._history(run.run_id, metric)]
        return self._histories[key]

    def plot(self, metric: str | None = None, width: int = 480, height: int = 160) -> str:
        """An SVG plot of ``metric`` (default: the table's) across the runs, one line per run."""
        metric = self.resolve_metric(metric) if metric else self.metric
        if not metric:
            return ""
        runs = [run for run in self.sorted_runs() if metric in run.metrics]
        names = [run.name for run in runs]
        series = {}
        for run in runs:
            label = run.name if names.count(run.name) == 1 else f"{run.name} ({run.run_id[:8]})"
            series[label] = self.history(run, metric)
        return svg_line_plot(series, width=width, height=height, title=metric)

    def _direction(self) -> str:
        return "descending" if self.descending else "ascending"

    def __repr__(self) -> str:
        if not self.runs:
            return self.empty_message
        table = [self.columns, *self.rows()]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.columns))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]
        head = f"{self.caption} (sorted by {self.sort}, {self._direction()})" if self.caption else ""
        return "\n".join([head, *lines] if head else lines)

    def table_html(self) -> str:
        """The table alone, as HTML."""
        if not self.runs:
            return f"<p>{html.escape(self.empty_message)}</p>"
        arrow = "▼" if self.descending else "▲"
        head = "".join(f"<th>{html.escape(c)}{' ' + arrow if c == self.sort else ''}</th>" for c in self.columns)
        body = []
        for run in self.sorted_runs():
            cells = []
            for column in self.columns:
                text = html.escape(self.cell(run, column))
                if column == "run":
                    cells.append(f'<td title="{html.escape(run.run_id)}">{text}</td>')
                elif column in _NUMERIC_FIXED or column.startswith("metrics."):
                    cells.append(f'<td style="text-align:right">{text}</td>')
                else:
                    cells.append(f"<td>{text}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table class='jmk-RunsTable'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def _repr_html_(self) -> str:
        caption = f"<p>{html.escape(self.caption)}</p>" if self.caption and self.runs else ""
        return f"<div class='jmk-Runs'>{caption}{self.table_html()}{self.plot()}</div>"


class RunsView:
    """The ipywidgets form of a ``RunsTable``: sort and plot controls over the table.

    Displays as the widget; ``repr`` stays the text table, so a log or a terminal still reads it.
    """

    def __init__(self, table: RunsTable) -> None:
        import ipywidgets as widgets

        self.table = table
        self.sort = widgets.Dropdown(
            options=table.columns, value=table.sort if table.sort in table.columns else None, description="Sort by"
        )
        self.direction = widgets.ToggleButton(value=table.descending, tooltip="toggle ascending / descending")
        self.metric = widgets.Dropdown(
            options=[("(none)", ""), *((m, m) for m in table.metric_names)],
            value=table.metric or "",
            description="Plot",
        )
        self.html = widgets.HTML()
        self.chart = widgets.HTML()
        self.sort.observe(self._sorted, names="value")
        self.direction.observe(self._sorted, names="value")
        self.metric.observe(self._plotted, names="value")
        caption = widgets.HTML(f"<b>{html.escape(table.caption)}</b>" if table.caption else "")
        controls = widgets.HBox([self.sort, self.direction, self.metric])
        self.widget = widgets.VBox([caption, controls, self.html, self.chart], _dom_classes=["jmk-RunsView"])
        self._draw_direction()
        self.html.value = table.table_html()
        self.chart.value = table.plot()

    def _draw_direction(self) -> None:
        self.direction.description = "descending" if self.direction.value else "ascending"
        self.direction.icon = "arrow-down" if self.direction.value else "arrow-up"

    def _sorted(self, _change: Any = None) -> None:
        if self.sort.value:
            self.table.sort_by(self.sort.value, descending=self.direction.value)
        self._draw_direction()
        self.html.value = self.table.table_html()
        self.chart.value = self.table.plot()  # legend order follows the table

    def _plotted(self, _change: Any = None) -> None:
        self.table.metric = self.metric.value or None
        self.chart.value = self.table.plot()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = repr(self.table)
        return bundle

    def __repr__(self) -> str:
        return repr(self.table)


def runs_display(table: RunsTable, shell: Any) -> RunsTable | RunsView:
    """The widget where a kernel frontend can show it, else the table (text and HTML)."""
    if shell is None or not getattr(shell, "kernel", None):
        return table
    try:
        return RunsView(table)
    except ImportError:
        return table


__all__ = ["RunSummary", "RunsTable", "RunsView", "format_duration", "format_start", "runs_display"]
