"""How a pipeline run shows: a text table for ``jmk pipeline`` and logs, an HTML table for ``%pipeline``."""

from __future__ import annotations

import html
from typing import Any

from ..util.durations import elapsed_text

MARKS = {"succeeded": "ok", "cached": "cached", "failed": "FAILED", "skipped": "skipped", "running": "..."}
COLORS = {"succeeded": "#2e7d32", "cached": "#1565c0", "failed": "#c62828", "skipped": "#757575",
          "running": "#ef6c00", "pending": "#9e9e9e"}


def run_html(run: Any) -> str:
    """A run as an HTML table: one row per step, its state, time, outputs and why it ran."""
    rows = []
    for step in run.steps.values():
        took = elapsed_text(step.started, step.finished)
        outputs = ", ".join(f"{k}={v!r}" for k, v in step.outputs.items())
        color = COLORS.get(step.state, "#000")
        rows.append(
            f"<tr><td>{html.escape(step.name)}</td><td style='color:{color};font-weight:bold'>{step.state}</td>"
            f"<td>{took}</td><td>{html.escape(outputs[:120])}</td><td>{html.escape(step.reason[:200])}</td></tr>"
        )
    head = (f"<b>pipeline {html.escape(run.pipeline)}</b> run <code>{run.run_id}</code>: {run.state}"
            + (f" · MLflow run <code>{run.mlflow_run_id}</code>" if run.mlflow_run_id else ""))
    return (f"<div>{head}<table><tr><th>step</th><th>state</th><th>time</th><th>outputs</th><th>why</th></tr>"
            + "".join(rows) + "</table></div>")


def format_run(run: Any, explain: bool = False) -> str:
    """A run as a table: step, state, duration, attempts, outputs (and why, with ``explain``)."""
    rows = [("step", "state", "time", "outputs")]
    for step in run.steps.values():
        outputs = ", ".join(f"{k}={v!r}" for k, v in step.outputs.items())
        rows.append((step.name, step.state, elapsed_text(step.started, step.finished), outputs[:80]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"pipeline {run.pipeline} run {run.run_id}: {run.state}"
             + (f" (MLflow run {run.mlflow_run_id})" if run.mlflow_run_id else "")]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows]
    if explain:
        lines.append("why:")
        lines += [f"  {s.name}: {s.reason}" for s in run.steps.values()]
    failed = [s for s in run.steps.values() if s.state == "failed"]
    lines += [f"  {s.name} failed: {s.reason}" for s in failed if not explain]
    return "\n".join(lines)
