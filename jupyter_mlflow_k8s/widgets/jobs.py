"""The jobs table of ``%jobs`` and ``jmk jobs``: aligned text in terminals, HTML in notebooks."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..models import JobRecord
from ..util.durations import short_age
from .table import Table


class JobTable(Table):
    """``%jobs`` output: text in terminals and logs, an HTML table in notebooks."""

    columns = ("job", "state", "backend", "age", "resources", "MLflow run", "notebook", "message")
    css_class = "jmk-JobTable"
    empty_message = "No jobs yet. Run a cell with %%train to start one."

    def __init__(self, records: list[JobRecord], sweeps: Sequence[Mapping[str, Any]] = ()) -> None:
        rows: list[tuple[float, tuple[str, ...]]] = [
            (r.created, (
                r.job_id,
                r.state.value,
                r.spec.backend,
                short_age(r.age),
                r.spec.describe_resources(),
                r.run_id or "",
                r.spec.notebook or "",
                "; ".join(filter(None, [r.message, *r.notes])),
            ))
            for r in records
        ]
        rows += [(float(sweep.get("created") or 0.0), sweep_row(sweep)) for sweep in sweeps]
        rows.sort(key=lambda pair: -pair[0])  # newest first, jobs and sweeps together
        super().__init__(row for _, row in rows)


def sweep_summary(sweep: Mapping[str, Any]) -> str:
    """``6 trials: 4 succeeded, 1 failed, 1 running · best val_loss=0.25 (trial 2)``."""
    counts: dict[str, int] = {}
    for trial in sweep.get("trials", []):
        counts[trial["state"]] = counts.get(trial["state"], 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in counts.items())
    text = f"{sweep.get('total', 0)} trials" + (f": {states}" if states else "")
    best = sweep.get("best")
    if best is not None:
        trial = sweep["trials"][best]
        text += f" · best {sweep['objective']['metric']}={trial['objective']:.6g} (trial {best})"
    return text


def sweep_row(sweep: Mapping[str, Any]) -> tuple[str, ...]:
    """One ``%jobs`` row for a whole sweep; its trials are not listed apart."""
    created = float(sweep.get("created") or time.time())
    message = "; ".join(filter(None, [sweep_summary(sweep), sweep.get("message", "")]))
    return (
        sweep["sweep_id"], sweep["state"], sweep.get("backend", ""), short_age(time.time() - created),
        f"sweep, {sweep.get('parallel', 1)} at once", sweep.get("parent_run_id") or "", "", message,
    )  # fmt: skip
