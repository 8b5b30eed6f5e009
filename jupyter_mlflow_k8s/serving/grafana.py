"""The Grafana dashboard of served models, built from :data:`.promql.QUERIES` (docs/grafana/jmk-serving.json).

``python -m jupyter_mlflow_k8s.serving.grafana [PATH]`` writes it (``-`` or nothing: standard output).
Every panel target's ``expr`` is one of ``QUERIES``' expressions unchanged, the ones a test runs against
a real Prometheus; the dashboard's ``model`` and ``version`` variables pick series with a "filter by
name" transformation on each series' legend (``<model> v<version>``) instead of rewriting the
expression. The data source is the ``datasource`` variable (any Prometheus). Pure data: no Grafana
client, no network.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .promql import DESCRIPTIONS, ERROR_RATIO_THRESHOLD, PSI_THRESHOLD, QUERIES

UID = "jmk-serving"
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
LEGEND = "{{model}} v{{version}}"
#: Panels are laid out two to a row of Grafana's 24 columns.
WIDTH, HEIGHT = 12, 8

#: (title, [(query name, legend suffix)], unit, threshold line or None), in the order shown.
PANELS: tuple[tuple[str, tuple[tuple[str, str], ...], str, float | None], ...] = (
    ("Requests per second", (("request_rate", ""),), "reqps", None),
    ("Error ratio (not 2xx)", (("error_ratio", ""),), "percentunit", ERROR_RATIO_THRESHOLD),
    ("Latency p50 / p90 / p99", (("latency_p50", " p50"), ("latency_p90", " p90"), ("latency_p99", " p99")), "s",
     None),
    ("Requests in flight", (("in_flight", ""),), "short", None),
    ("Rows per model call: mean / p90", (("batch_size_mean", " mean"), ("batch_size_p90", " p90")), "short", None),
    ("Input drift (PSI) per feature", (("drift_psi", " {{feature}}"),), "short", PSI_THRESHOLD),
)


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A query variable over the served versions (``jmk_model_info``), several values or all."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,  # on time range change: a new version shows up without reloading the dashboard
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def _panel(number: int, title: str, targets: Sequence[tuple[str, str]], unit: str,
           threshold: float | None) -> dict[str, Any]:
    """One time series panel; its ``gridPos`` puts it at place ``number - 1`` of the two-column grid."""
    place = number - 1
    description = "; ".join(f"{name}: {DESCRIPTIONS[name][0]}" for name, _ in targets)
    defaults: dict[str, Any] = {"unit": unit, "custom": {"showPoints": "never"}}
    if threshold is not None:
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                                {"color": "red", "value": threshold}]}
        defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
    return {
        "id": number,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": HEIGHT, "w": WIDTH, "x": (place % 2) * WIDTH, "y": (place // 2) * HEIGHT},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "editorMode": "code", "range": True,
             "expr": QUERIES[name], "legendFormat": LEGEND + suffix}
            for i, (name, suffix) in enumerate(targets)
        ],
        # The chosen models and versions, matched on each series' name (its legend): the expressions stay as tested.
        "transformations": [{"id": "filterFieldsByName", "options": {
            "include": {"pattern": "^(Time|(${model:regex}) v(${version:regex})( .*)?)$"}}}],
    }


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (import it, or provision it from a file)."""
    return {
        "uid": UID,
        "title": "jupyter_mlflow_k8s serving",
        "description": "Requests, errors, latency, batching and input drift of models served by jupyter_mlflow_k8s, "
                       "per model and version. The queries are jupyter_mlflow_k8s.serving.promql.QUERIES.",
        "tags": ["jupyter_mlflow_k8s", "serving", "mlflow"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,  # a shared crosshair: latency and errors read at the same moment
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "options": [], "refresh": 1, "regex": "", "hide": 0},
            _variable("model", "Model", "label_values(jmk_model_info, model)"),
            _variable("version", "Version", 'label_values(jmk_model_info{model=~"$model"}, version)'),
        ]},
        "panels": [_panel(i, *panel) for i, panel in enumerate(PANELS, start=1)],
    }


def render() -> str:
    """The dashboard as the JSON text committed in docs/grafana/jmk-serving.json."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboard to the path given (standard output for none or ``-``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(a.startswith("-") and a != "-" for a in args):
        print("usage: python -m jupyter_mlflow_k8s.serving.grafana [PATH|-]", file=sys.stderr)
        return 2
    text = render()
    if not args or args[0] == "-":
        sys.stdout.write(text)
    else:
        Path(args[0]).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
