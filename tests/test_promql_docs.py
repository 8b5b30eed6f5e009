"""docs/serving.md's "Useful queries" block is promql.QUERIES and promql.ALERTS, so the docs cannot drift from them.

The same expressions are the ones tests/test_prometheus_scrape.py runs against a real Prometheus and
docs/grafana/jmk-serving.json shows.
"""

from __future__ import annotations

import re
from pathlib import Path

from jupyter_mlflow_k8s.serving.promql import ALERTS, DESCRIPTIONS, QUERIES

SERVING_DOCS = Path(__file__).parent.parent / "docs" / "serving.md"


def queries_block() -> str:
    """The fenced block's text: ``# name: what`` then the expression, per query; then each alert rule."""
    parts = [f"# {name}: {DESCRIPTIONS[name][0]}\n{expr}\n" for name, expr in QUERIES.items()]
    parts += [f"# alert {a.name} (for {a.for_}, {a.severity})\n{a.expr}\n" for a in ALERTS]
    return "\n".join(parts)


def test_the_docs_show_every_query_and_alert_as_promql_has_them() -> None:
    text = SERVING_DOCS.read_text()
    match = re.search(r"^Useful queries.*?\n\n```promql\n(.*?)```\n", text, re.MULTILINE | re.DOTALL)
    assert match, "docs/serving.md has no 'Useful queries' paragraph followed by a ```promql block"
    assert match.group(1) == queries_block(), f"the block should read:\n```promql\n{queries_block()}```"


def test_every_query_has_a_description() -> None:
    assert DESCRIPTIONS.keys() == QUERIES.keys()
