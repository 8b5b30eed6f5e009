"""The example notebooks, executed for real (papermill, a real kernel, real jobs, real MLflow)."""

from __future__ import annotations

from pathlib import Path

import papermill
import pytest

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_quickstart_trains_returns_and_records(state_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "quickstart.out.ipynb"
    nb = papermill.execute_notebook(
        str(NOTEBOOKS / "quickstart.ipynb"),
        str(out),
        parameters={"epochs": 15},
        kernel_name="python3",
        cwd=str(NOTEBOOKS.parent),
        progress_bar=False,
    )
    text = "".join(
        output.get("text", "") for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    assert "training on cpu" in text and "epoch 14 loss" in text
    assert "held-out accuracy" in text and "run status FINISHED" in text
    assert "served predictions match the returned model: True" in text
    assert 'jmk_requests_total{model="quickstart-mlp",version="1",code="200"} 1' in text
    jobs = list((state_dir / "jobs").iterdir())
    assert len(jobs) == 1
