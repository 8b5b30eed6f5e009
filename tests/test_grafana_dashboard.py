"""The Grafana dashboard in docs/grafana: generated, well formed, and only the queries a real Prometheus answered."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

from jupyter_mlflow_k8s.serving import grafana
from jupyter_mlflow_k8s.serving.promql import QUERIES

DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana" / "jmk-serving.json"


def test_the_committed_file_is_the_generators_output() -> None:
    assert DASHBOARD.read_text() == grafana.render(), (
        "docs/grafana/jmk-serving.json is stale: python -m jupyter_mlflow_k8s.serving.grafana "
        "docs/grafana/jmk-serving.json")


def test_the_module_writes_the_dashboard(tmp_path: Path) -> None:
    written = tmp_path / "dashboard.json"
    result = subprocess.run([sys.executable, "-m", "jupyter_mlflow_k8s.serving.grafana", str(written)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert written.read_text() == DASHBOARD.read_text()
    wrong = subprocess.run([sys.executable, "-m", "jupyter_mlflow_k8s.serving.grafana", "--nope"],
                           capture_output=True, text=True, check=False)
    assert wrong.returncode == 2 and "usage:" in wrong.stderr


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    model = json.loads(DASHBOARD.read_text())
    assert model["schemaVersion"] >= 36 and model["uid"]
    panels = model["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"]) for p in panels]
    for x, _, w, h in boxes:
        assert x >= 0 and x + w <= 24 and w > 0 and h > 0
    for (x1, y1, w1, h1), (x2, y2, w2, h2) in combinations(boxes, 2):
        assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, "two panels overlap"


def test_every_target_is_a_tested_query_and_every_query_is_shown() -> None:
    model = json.loads(DASHBOARD.read_text())
    tested = set(QUERIES.values())  # tests/test_prometheus_scrape.py runs each against a real Prometheus
    shown = [t["expr"] for p in model["panels"] for t in p["targets"]]
    assert set(shown) <= tested, set(shown) - tested
    assert set(shown) == tested, f"queries on no panel: {tested - set(shown)}"
    for panel in model["panels"]:
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            assert target["legendFormat"].startswith("{{model}} v{{version}}")
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_variables_pick_the_data_source_model_and_version() -> None:
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["definition"] == "label_values(jmk_model_info, model)"
    assert variables["version"]["definition"] == 'label_values(jmk_model_info{model=~"$model"}, version)'
