"""The jobs table of ``%jobs`` and ``jmk jobs``: aligned text in terminals, HTML in notebooks."""

from __future__ import annotations

from ..models import JobRecord
from ..util.durations import short_age
from .table import Table


class JobTable(Table):
    """``%jobs`` output: text in terminals and logs, an HTML table in notebooks."""

    columns = ("job", "state", "backend", "age", "resources", "MLflow run", "notebook", "message")
    css_class = "jmk-JobTable"
    empty_message = "No jobs yet. Run a cell with %%train to start one."

    def __init__(self, records: list[JobRecord]) -> None:
        super().__init__(
            (
                r.job_id,
                r.state.value,
                r.spec.backend,
                short_age(r.age),
                r.spec.describe_resources(),
                r.run_id or "",
                r.spec.notebook or "",
                "; ".join(filter(None, [r.message, *r.notes])),
            )
            for r in records
        )
