"""Fixtures of the trigger tests: a one-step pipeline that publishes the new objects it was given, evaluators."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from jupyter_mlflow_k8s.pipelines.triggers import TriggerEvaluator


def notebook(path: Path, parameters: str, code: str) -> None:
    """A notebook of a ``parameters`` cell and one code cell."""
    cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell(code)]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=cells, metadata=meta), path)


def retrain_pipeline(folder: Path) -> Path:
    """``folder/pipeline.yaml``: one step publishing (``output('objects')``) the new objects it was given."""
    notebook(folder / "train.ipynb", "new_objects = []",
             "from jupyter_mlflow_k8s import output\noutput('objects', list(new_objects))")
    path = folder / "pipeline.yaml"
    path.write_text("name: retrain\nparameters: {new_objects: []}\nsteps:\n"
                    "  train: {notebook: train.ipynb, parameters: {new_objects: '{{ parameters.new_objects }}'}}\n")
    return path


@pytest.fixture
def retrain(tmp_path: Path) -> Path:
    """A one-step pipeline that publishes the new objects it was given."""
    return retrain_pipeline(tmp_path / "retrain")


@pytest.fixture
def evaluators() -> Iterator[list[TriggerEvaluator]]:
    """Evaluators made by a test; the runs they started still running at its end are killed."""
    made: list[TriggerEvaluator] = []
    yield made
    for evaluator in made:
        for children in evaluator._children.values():
            for child in children:
                if child.process.poll() is None:
                    child.process.kill()
                    child.process.wait(10)
