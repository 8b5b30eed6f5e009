"""Notebook pipelines, run for real: papermill, real kernels, real MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from mlflow.tracking import MlflowClient
from nbformat.v4 import new_code_cell, new_notebook

from jupyter_mlflow_k8s.cli import main as jmk
from jupyter_mlflow_k8s.pipelines.engine import PipelineEngine
from jupyter_mlflow_k8s.pipelines.spec import load_pipeline

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parent.parent / "notebooks" / "pipeline" / "pipeline.yaml"


def notebook(path: Path, parameters: str, code: str) -> None:
    cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell(code)]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(new_notebook(cells=cells, metadata=meta), path)


def write_pipeline(folder: Path, text: str) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(text)
    return path


def test_example_pipeline_runs_tracks_and_caches(state_dir: Path, tmp_path: Path) -> None:
    engine = PipelineEngine()
    data = {"data_dir": str(tmp_path / "data")}
    first = engine.run(load_pipeline(EXAMPLE, data))

    assert first.state == "succeeded", {s.name: s.reason for s in first.steps.values()}
    steps = first.steps
    assert list(steps) == ["prepare", "train", "evaluate", "register"]
    assert steps["prepare"].outputs["rows"] == 2000
    assert steps["evaluate"].outputs["accuracy"] > 0.7
    versions = MlflowClient().search_model_versions("name='churn-classifier'")  # the session's store is shared
    assert steps["register"].outputs["model_version"] == max(int(v.version) for v in versions)
    assert steps["train"].parameters["features_uri"] == steps["prepare"].outputs["features_uri"]
    assert all(Path(s.executed_notebook).exists() for s in steps.values())

    client = MlflowClient()
    parent = client.get_run(first.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["c"] == "1.0"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{first.mlflow_run_id}'")
    assert sorted(c.info.run_name for c in children) == ["evaluate", "prepare", "register", "train"]
    train = next(c for c in children if c.info.run_name == "train")
    assert train.data.tags["jmk.cache_hit"] == "false" and "duration_seconds" in train.data.metrics
    assert "train.ipynb" in [a.path for a in client.list_artifacts(train.info.run_id)]
    from jupyter_mlflow_k8s.jobs import JobService

    jobs = {r.spec.run_name: r for r in JobService().list()}  # local steps are in %jobs too
    assert {name: r.state.value for name, r in jobs.items()} == dict.fromkeys(steps, "succeeded")
    assert jobs["prepare"].job_id == steps["prepare"].job_id and jobs["train"].run_id == train.info.run_id
    assert "customers, churn rate" in JobService().read_log(steps["prepare"].job_id)

    again = engine.run(load_pipeline(EXAMPLE, data))
    assert {s.state for s in again.steps.values()} == {"cached"}
    assert again.steps["evaluate"].outputs == steps["evaluate"].outputs

    changed = engine.run(load_pipeline(EXAMPLE, {**data, "c": "0.05"}))
    states = {name: s.state for name, s in changed.steps.items()}
    assert states == {"prepare": "cached", "train": "succeeded", "evaluate": "succeeded", "register": "succeeded"}
    assert changed.steps["train"].reason == "ran: parameter c: 1.0 -> 0.05"
    assert changed.steps["evaluate"].reason.endswith("; the outputs of train changed")


def test_parallel_branches_and_failure_isolation(state_dir: Path, tmp_path: Path) -> None:
    notebook(tmp_path / "start.ipynb", "", "from jupyter_mlflow_k8s import output\noutput('token', 'abc')")
    sleeper = "import time\nfrom jupyter_mlflow_k8s import output\nstarted = time.time()\ntime.sleep(2)\noutput('started', started)"
    notebook(tmp_path / "slow.ipynb", "token = ''", sleeper)
    notebook(tmp_path / "broken.ipynb", "token = ''", "raise RuntimeError('bad data in ' + token)")
    notebook(tmp_path / "after.ipynb", "", "print('never')")
    path = write_pipeline(tmp_path, """
name: branches
steps:
  start: {notebook: start.ipynb}
  left: {notebook: slow.ipynb, needs: [start], parameters: {token: "{{ steps.start.outputs.token }}"}}
  right: {notebook: slow.ipynb, needs: [start], parameters: {token: "{{ steps.start.outputs.token }}"}}
  broken: {notebook: broken.ipynb, needs: [start], parameters: {token: "{{ steps.start.outputs.token }}"}}
  after: {notebook: after.ipynb, needs: [broken, left]}
""")
    run = PipelineEngine().run(load_pipeline(path))

    states = {name: s.state for name, s in run.steps.items()}
    assert states == {"start": "succeeded", "left": "succeeded", "right": "succeeded", "broken": "failed",
                      "after": "skipped"}
    assert run.state == "failed"
    assert "RuntimeError: bad data in abc" in run.steps["broken"].reason
    assert run.steps["after"].reason == "not run: broken did not succeed"
    left, right = run.steps["left"].outputs["started"], run.steps["right"].outputs["started"]
    assert abs(left - right) < 1.5, "independent branches run at the same time"


def test_retries_and_resume(state_dir: Path, tmp_path: Path) -> None:
    flaky = ("from pathlib import Path\nfrom jupyter_mlflow_k8s import output\n"
             "marker = Path('tried')\nif not marker.exists():\n    marker.write_text('1')\n    raise RuntimeError('first try fails')\n"
             "output('ok', True)")
    notebook(tmp_path / "flaky.ipynb", "", flaky)
    counted = ("from pathlib import Path\nfrom jupyter_mlflow_k8s import output\n"
               "count = Path('runs-of-first'); count.write_text(count.read_text() + 'x' if count.exists() else 'x')\n"
               "output('n', 1)")
    notebook(tmp_path / "first.ipynb", "", counted)
    notebook(tmp_path / "gate.ipynb", "", "from pathlib import Path\nassert Path('open').exists(), 'the gate is closed'")
    path = write_pipeline(tmp_path, """
name: flaky
steps:
  first: {notebook: first.ipynb, cache: false}
  flaky: {notebook: flaky.ipynb, needs: [first], retries: 1, cache: false}
  gate: {notebook: gate.ipynb, needs: [flaky], cache: false}
""")
    engine = PipelineEngine()
    failed = engine.run(load_pipeline(path))

    assert failed.steps["flaky"].state == "succeeded" and failed.steps["flaky"].attempts == 2
    assert failed.steps["gate"].state == "failed" and "the gate is closed" in failed.steps["gate"].reason

    (tmp_path / "open").write_text("")
    resumed = engine.run(load_pipeline(path), resume=failed.run_id[:5])

    assert resumed.run_id == failed.run_id and resumed.state == "succeeded"
    assert (tmp_path / "runs-of-first").read_text() == "x", "steps that succeeded are not run again"


def test_cli_run_explain_show_and_validate(state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notebook(tmp_path / "one.ipynb", "x = 1", "from jupyter_mlflow_k8s import output\noutput('double', x * 2)")
    path = write_pipeline(tmp_path, "name: tiny\nparameters: {x: 1}\nsteps:\n  one: {notebook: one.ipynb, parameters: {x: '{{ parameters.x }}'}}\n")

    assert jmk(["pipeline", "run", str(path), "-p", "x=4", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "one: ok" in out and "double=8" in out and "one: ran: no earlier result of this step" in out
    run_id = out.split("run ", 1)[1].split(":", 1)[0]
    assert jmk(["pipeline", "show", run_id]) == 0
    assert "pipeline tiny run" in capsys.readouterr().out

    assert jmk(["pipeline", "run", str(path), "-p", "y=4"]) == 2
    assert "y" in capsys.readouterr().err
    bad = write_pipeline(tmp_path, "name: bad\nsteps:\n  a: {notebook: one.ipynb, needs: [b]}\n  b: {notebook: one.ipynb, needs: [a]}\n")
    assert jmk(["pipeline", "validate", str(bad)]) == 2
    assert "cycle" in capsys.readouterr().err


def test_pipeline_magic_runs_with_a_live_view(shell: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.core.error import UsageError

    notebook(tmp_path / "one.ipynb", "x = 1", "from jupyter_mlflow_k8s import output\noutput('double', x * 2)")
    path = write_pipeline(tmp_path, "name: tiny\nparameters: {x: 1}\nsteps:\n  one: {notebook: one.ipynb, parameters: {x: '{{ parameters.x }}'}}\n")

    run = shell.run_line_magic("pipeline", f"run {path} -p x=21")

    assert run.state == "succeeded" and run.steps["one"].outputs == {"double": 42}
    assert "one" in capsys.readouterr().out
    with pytest.raises(UsageError, match="Usage: %pipeline run"):
        shell.run_line_magic("pipeline", "launch")
    with pytest.raises(UsageError, match="x"):
        shell.run_line_magic("pipeline", f"run {path} -p nope=1")
    shell.run_line_magic("pipeline", "list")
    assert run.run_id in capsys.readouterr().out
