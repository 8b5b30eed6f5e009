"""A sweep's leaderboard: its trials best first, as text, as HTML, and as a live view in the cell.

Everything here reads the sweep record (the plain JSON dict the sweep controller writes) and
nothing else: it never starts, stops or asks about a trial. ``SweepView`` is an ipywidgets HTML
widget in a kernel; in a terminal it prints one line per trial state change and the whole table
once, when the sweep ends, because a terminal cannot redraw a table in place. Everything
user-given (parameter values, errors, messages) is HTML-escaped.
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..exceptions import JMKUsageError
from ..util.durations import clock_duration
from .status import MIN_REDRAW_SECONDS, cancel_clicked, cancel_control, kernel_widgets
from .status import STATE_COLORS as JOB_COLORS
from .table import Table

Sweep = Mapping[str, Any]

# Trial states beyond a job's: a pruned trial was stopped because its intermediate metrics were poor.
STATE_COLORS: dict[str, str] = {state.value: color for state, color in JOB_COLORS.items()} | {"pruned": "#9334e6"}
_BEST_BACKGROUND = "#e6f4ea"
# Sort groups after the trials with an objective: running ones are the next to have one.
_GROUP = {"running": 1, "queued": 2}
_LAST_GROUP = 3
# A terminal line or a text cell keeps an error to its first line and this many characters.
_MESSAGE_CHARS = 80


def format_value(value: object) -> str:
    """A parameter or metric value, compact: floats to 4 significant digits, anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _minimize(sweep: Sweep) -> bool:
    return str((sweep.get("objective") or {}).get("direction", "min")).lower() != "max"


def _metric(sweep: Sweep) -> str:
    return str((sweep.get("objective") or {}).get("metric", "objective"))


def _names(sweep: Sweep, trials: list[Mapping[str, Any]]) -> list[str]:
    """The swept names in the user's order; from the trials' params when the record lacks them."""
    names = [str(n) for n in sweep.get("names") or []]
    for trial in trials:
        names.extend(str(n) for n in (trial.get("params") or {}) if str(n) not in names)
    return names


def _trials(sweep: Sweep) -> list[Mapping[str, Any]]:
    # A copy: the controller may append a trial while we read.
    return list(sweep.get("trials") or [])


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _objective_text(trial: Mapping[str, Any]) -> str:
    """The objective, or else the last intermediate value marked as one: ``0.31 @ step 4``."""
    if trial.get("objective") is not None:
        return format_value(trial["objective"])
    if trial.get("value") is None:
        return ""
    value, step = format_value(trial["value"]), trial.get("step")
    return f"{value} @ step {step}" if step is not None else f"{value} (so far)"


def _duration(trial: Mapping[str, Any]) -> str:
    """How long a trial ran; so far, while it runs; empty before it started or without its end."""
    started, finished = _number(trial.get("started")), _number(trial.get("finished"))
    if started is None or (finished is None and trial.get("state") != "running"):
        return ""
    return clock_duration(max(0.0, (finished if finished is not None else time.time()) - started))


def _first_line(text: object, limit: int = _MESSAGE_CHARS) -> str:
    """An error's first line, cut to ``limit`` characters: a traceback belongs in the trial's log."""
    lines = str(text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def leaderboard_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per trial, best first among those with an objective, then running, queued, the rest.

    Each row: ``trial`` (index), ``params`` (name → compact text, in the swept names' order),
    ``repeat``, ``state``, ``objective`` (text; a running or pruned trial's last intermediate value
    as ``0.31 @ step 4``), ``value`` (the objective as a number, or ``None``), ``duration``,
    ``job``, ``run``, ``error`` and ``best``. Ties keep the trials' order.
    """
    trials = _trials(sweep)
    names = _names(sweep, trials)
    sign = 1.0 if _minimize(sweep) else -1.0
    best = sweep.get("best")

    def key(trial: Mapping[str, Any]) -> tuple[int, int, float, int]:
        objective = _number(trial.get("objective"))
        index = trial.get("index")
        index = index if isinstance(index, int) else 0
        if objective is not None:
            # NaN never wins: it sorts after every number.
            return (0, 1, 0.0, index) if math.isnan(objective) else (0, 0, sign * objective, index)
        return (_GROUP.get(str(trial.get("state")), _LAST_GROUP), 0, 0.0, index)

    rows = []
    for trial in sorted(trials, key=key):
        params = trial.get("params") or {}
        rows.append(
            {
                "trial": trial.get("index"),
                "params": {n: format_value(params[n]) if n in params else "" for n in names},
                "repeat": trial.get("repeat") or 0,
                "state": str(trial.get("state", "")),
                "objective": _objective_text(trial),
                "value": _number(trial.get("objective")),
                "duration": _duration(trial),
                "job": str(trial.get("job_id") or ""),
                "run": str(trial.get("run_id") or ""),
                "error": str(trial.get("error") or ""),
                "best": best is not None and trial.get("index") == best,
            }
        )
    return rows


def describe_sweep(sweep: Sweep) -> str:
    """One line: ``sweep s-1a2b3c4d · grid · 4/6 done · 1 running · best val_loss=0.25 (trial 2) · min``.

    A sweep that ended says how (``succeeded``, or ``failed: <why>``) at the end.
    """
    trials = _trials(sweep)
    states = [str(t.get("state")) for t in trials]
    total = sweep.get("total") or len(trials)
    done = sum(s not in ("queued", "running") for s in states)
    parts = [f"sweep {sweep.get('sweep_id', '?')}", str(sweep.get("search", "")), f"{done}/{total} done"]
    parts += [f"{states.count(s)} {s}" for s in ("running", "failed", "pruned") if s in states]
    best = next((t for t in trials if sweep.get("best") is not None and t.get("index") == sweep["best"]), None)
    if best is not None and best.get("objective") is not None:
        parts.append(f"best {_metric(sweep)}={format_value(best['objective'])} (trial {best.get('index')})")
    else:
        parts.append("no result yet")
    parts.append("min" if _minimize(sweep) else "max")
    state = str(sweep.get("state", "running"))
    if state != "running":
        parts.append(f"{state}: {sweep['message']}" if sweep.get("message") else state)
    return " · ".join(p for p in parts if p)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise JMKUsageError(f"A leaderboard limit must be 0 or more, not {limit}: pass None to show every trial.")


def _columns(sweep: Sweep, rows: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """The swept names and whether a repeat column is needed (only when a trial is a repeat)."""
    names = _names(sweep, _trials(sweep))
    return names, any(row["repeat"] for row in rows)


def render_text(sweep: Sweep, limit: int | None = None) -> str:
    """The leaderboard as an aligned text table under its summary line; ``*`` marks the best trial.

    With ``limit``, only the first ``limit`` rows and a ``... N more`` line.
    """
    _check_limit(limit)
    rows = leaderboard_rows(sweep)
    names, repeats = _columns(sweep, rows)
    shown = rows if limit is None else rows[:limit]
    table = Table(
        (
            "*" if row["best"] else "",
            row["trial"],
            *row["params"].values(),
            *([row["repeat"]] if repeats else []),
            row["state"],
            row["objective"],
            row["duration"],
            row["job"],
            _first_line(row["error"]),
        )
        for row in shown
    )
    table.columns = ("", "trial", *names, *(["repeat"] if repeats else []), "state", _metric(sweep), "time", "job", "")
    table.empty_message = "No trials yet."
    lines = [describe_sweep(sweep)]
    if shown or not rows:
        lines.append(repr(table))
    if len(rows) > len(shown):
        lines.append(f"... {len(rows) - len(shown)} more")
    return "\n".join(lines)


def render_html(sweep: Sweep, limit: int | None = None) -> str:
    """The leaderboard as an HTML table: the best row highlighted, states colored, all escaped."""
    _check_limit(limit)
    rows = leaderboard_rows(sweep)
    names, repeats = _columns(sweep, rows)
    shown = rows if limit is None else rows[:limit]
    headers = ["", "trial", *names, *(["repeat"] if repeats else []), "state", _metric(sweep), "time", "job", ""]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(_html_row(row, repeats) for row in shown)
    summary = f"<div class='jmk-SweepSummary'>{html.escape(describe_sweep(sweep))}</div>"
    if not rows:
        return summary + "<p>No trials yet.</p>"
    more = f"<p>... {len(rows) - len(shown)} more</p>" if len(rows) > len(shown) else ""
    return f"{summary}<table class='jmk-SweepTable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _html_row(row: Mapping[str, Any], repeats: bool) -> str:
    color = STATE_COLORS.get(row["state"], "#888")
    cells = [
        "★" if row["best"] else "",
        html.escape(str(row["trial"])),
        *(html.escape(v) for v in row["params"].values()),
        *([html.escape(str(row["repeat"]))] if repeats else []),
        f'<span style="color:{color}">●</span> {html.escape(row["state"])}',
        f"<b>{html.escape(row['objective'])}</b>" if row["best"] else html.escape(row["objective"]),
        html.escape(row["duration"]),
        html.escape(row["job"]),
        f"<span title='{html.escape(row['error'], quote=True)}'>{html.escape(_first_line(row['error']))}</span>"
        if row["error"]
        else "",
    ]
    style = f" class='jmk-SweepBest' style='background:{_BEST_BACKGROUND};font-weight:bold'" if row["best"] else ""
    return f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


class SweepTable:
    """A finished (or running) sweep as ``%jobs`` shows it: text in terminals, an HTML table in notebooks."""

    def __init__(self, sweep: Sweep, limit: int | None = None) -> None:
        _check_limit(limit)
        self.sweep = sweep
        self.limit = limit

    def __repr__(self) -> str:
        return render_text(self.sweep, self.limit)

    def _repr_html_(self) -> str:
        return render_html(self.sweep, self.limit)


def trial_line(sweep: Sweep, trial: Mapping[str, Any]) -> str:
    """``[jmk] sweep s-1a2b3c4d trial 3 (lr=0.01, batch=64) succeeded: val_loss=0.21 (best so far)``."""
    params = trial.get("params") or {}
    names = [n for n in _names(sweep, [trial]) if n in params]
    label = ", ".join(f"{n}={format_value(params[n])}" for n in names)
    if trial.get("repeat"):
        label = f"{label}, repeat {trial['repeat']}" if label else f"repeat {trial['repeat']}"
    state = str(trial.get("state", ""))
    line = f"[jmk] sweep {sweep.get('sweep_id', '?')} trial {trial.get('index')}" + (f" ({label})" if label else "")
    line += f" {state}"
    if trial.get("objective") is not None:
        line += f": {_metric(sweep)}={format_value(trial['objective'])}"
        if sweep.get("best") is not None and trial.get("index") == sweep["best"]:
            line += " (best so far)"
    elif state == "pruned" and trial.get("value") is not None:
        line += f": {_metric(sweep)}={_objective_text(trial)}"
    elif trial.get("error"):
        line += f": {_first_line(trial['error'])}"
    elif state == "running" and trial.get("job_id"):
        line += f" as job {trial['job_id']}"
    return line


class SweepView:
    """A sweep's live leaderboard in its cell; ``update`` is cheap to call often.

    In a kernel with ipywidgets it is an HTML widget redrawn at most every
    ``MIN_REDRAW_SECONDS`` (at once when a trial changes state, and when the sweep ends), with a
    Cancel button when ``on_cancel`` is given. Elsewhere (a terminal, plain IPython) it prints one
    line per trial state change and the whole table once when the sweep ends.
    """

    def __init__(self, sweep: Sweep, on_cancel: Callable[[], Any] | None = None, limit: int | None = None) -> None:
        _check_limit(limit)
        self.sweep = sweep
        self.limit = limit
        self._on_cancel = on_cancel
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._states = self._trial_states(sweep)
        self._ended = False
        self._widget: Any = None
        widgets = kernel_widgets()
        if widgets is not None:
            self._board = widgets.HTML()
            self._action = cancel_control(widgets, on_cancel, self._cancel)
            self._widget = widgets.VBox([self._board, self._action])

    @staticmethod
    def _trial_states(sweep: Sweep) -> dict[Any, str]:
        return {t.get("index"): str(t.get("state")) for t in _trials(sweep)}

    def _cancel(self) -> None:
        cancel_clicked(self._action, self._on_cancel)

    def show(self) -> None:
        """Put the view in the cell's output (in a terminal: a line saying what the sweep does)."""
        with self._lock:
            if self._widget is not None:
                from IPython.display import display

                self._draw()
                display(self._widget)
                return
            objective = f"{_metric(self.sweep)}:{'min' if _minimize(self.sweep) else 'max'}"
            total = self.sweep.get("total") or len(_trials(self.sweep))
            parallel = f", {self.sweep['parallel']} at a time" if self.sweep.get("parallel") else ""
            what = f"{self.sweep.get('search', '')} · {total} trials{parallel} · objective {objective}"
            print(f"[jmk] sweep {self.sweep.get('sweep_id', '?')} · {what}")
            self._print_changes(self.sweep)

    def update(self, sweep: Sweep | None = None, force: bool = False) -> None:
        """Take the record as it is now (the same dict, changed in place, is fine) and redraw if due."""
        with self._lock:
            if sweep is not None:
                self.sweep = sweep
            if self._widget is None:
                self._print_changes(self.sweep)
                return
            states = self._trial_states(self.sweep)
            ended = self.sweep.get("state", "running") != "running"
            force = force or states != self._states or (ended and not self._ended)
            self._states, self._ended = states, ended
            now = time.monotonic()
            if force or now - self._last_draw >= MIN_REDRAW_SECONDS:
                self._last_draw = now
                self._draw()

    def close(self) -> None:
        """Take the widget out of the cell (a terminal's printed lines stay)."""
        if self._widget is not None:
            self._widget.close()

    def follow_in_background(self, current: Callable[[], Sweep], interval: float = 0.5) -> threading.Thread:
        """Keep the view current from a thread until the sweep ends (for ``--async`` sweeps)."""

        def loop() -> None:
            while True:
                sweep = current()
                self.update(sweep)
                if sweep.get("state", "running") != "running":
                    return
                time.sleep(interval)

        thread = threading.Thread(target=loop, name=f"jmk-sweep-{self.sweep.get('sweep_id')}", daemon=True)
        thread.start()
        return thread

    def _draw(self) -> None:
        self._board.value = render_html(self.sweep, self.limit)
        if self.sweep.get("state", "running") != "running":
            self._action.layout.display = "none"

    def _print_changes(self, sweep: Sweep) -> None:
        """A line per trial whose state changed since last time; the table once, when the sweep ends.

        A queued trial says nothing (it has nothing to say yet), nor does one cancelled before it
        started: the final table lists them all.
        """
        for trial in _trials(sweep):
            state, before = str(trial.get("state")), self._states.get(trial.get("index"))
            self._states[trial.get("index")] = state
            if state == before or state == "queued" or (state == "cancelled" and before in (None, "queued")):
                continue
            print(trial_line(sweep, trial))
        if sweep.get("state", "running") != "running" and not self._ended:
            self._ended = True
            print(render_text(sweep, self.limit))
