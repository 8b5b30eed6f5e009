"""Batch prediction: the plan, the checks of every flag, and real runs of shard jobs (local backend).

Real parts: the session's SQLite MLflow store with a registered pyfunc model (tests/batch_model.py),
a moto S3 server (tests/servers.py) and local folders for the files, shard jobs as local processes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import stop_jobs

from jupyter_mlflow_k8s.batch import BatchFailed, BatchRequest, BatchService
from jupyter_mlflow_k8s.batch.plan import InputFile, Plan, differences, split_into_shards
from jupyter_mlflow_k8s.exceptions import JMKUsageError

MODEL = "batch-twice"
ROWS = 100  # per file; 4 files


@pytest.fixture(scope="session")
def batch_model(mlflow_uri: str) -> str:
    """``models:/batch-twice@champion``: the pyfunc model of tests/batch_model.py, with a signature a, b (double)."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("batch-tests")
    example = pd.DataFrame({"a": [1.0, 2.0], "b": [0.5, 0.25]})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("batch_model.py")),
                                       input_example=example, registered_model_name=MODEL)
    MlflowClient(mlflow_uri).set_registered_model_alias(MODEL, "champion", str(info.registered_model_version))
    return f"models:/{MODEL}@champion"


def frames(bad: int = 0, hang_in_last: bool = False) -> list[Any]:
    """4 files of ROWS rows (``id`` unique); ``bad`` rows in all: half empty ``a``, half failing ``predict``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    out = []
    for number in range(4):
        frame = pd.DataFrame({"id": np.arange(number * ROWS, (number + 1) * ROWS),
                              "a": rng.normal(size=ROWS).round(3), "b": rng.normal(size=ROWS).round(3)})
        out.append(frame)
    for k in range(bad):
        frame, row = out[k % 4], 10 + k // 4
        if k % 2:
            frame.loc[row, "b"] = -5000.0
        else:
            frame.loc[row, "a"] = None
    if hang_in_last:
        out[3].loc[50, "a"] = 777.0
    return out


def write_local(folder: Path, kind: str, parts: list[Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for number, frame in enumerate(parts):
        path = folder / f"f{number}.{kind}"
        frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path, index=False)
    return str(folder) + f"/*.{kind}"


def read_outputs(fs: Any, root: str, kind: str) -> Any:
    import pandas as pd

    fs.invalidate_cache()  # the shard jobs wrote them, in other processes
    paths = sorted(p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1].startswith("part-"))
    readers = {"csv": pd.read_csv, "parquet": pd.read_parquet}
    parts = []
    for path in paths:
        with fs.open(path, "rb") as handle:
            parts.append(readers[kind](handle))
    return pd.concat(parts, ignore_index=True)


def expected(model_uri: str, parts: list[Any]) -> Any:
    """What the model's own ``predict`` gives for the good rows, by id."""
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    whole = pd.concat(parts, ignore_index=True)
    good = whole[whole["a"].notna() & (whole["b"] >= -1000)]
    return pd.Series(model.predict(good[["a", "b"]]).to_numpy(), index=good["id"].to_numpy()).sort_index()


def service(state_dir: Path) -> BatchService:
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.jobs import JobService

    return BatchService(JobService(load_settings(state_dir=str(state_dir))))


# -- pure -------------------------------------------------------------------------------------------


def test_plan_is_fixed_balanced_and_compared() -> None:
    files = [InputFile(f"s3://b/in/f{i}.parquet", size, "etag") for i, size in enumerate([10, 50, 20, 20, 5])]
    assert split_into_shards(files, 2) == [[1, 4], [0, 2, 3]]  # 55 and 50 bytes
    one = Plan.make("models:/m/1", "models:/m@a", "s3://b/in/*", "s3://b/out", "parquet", files, 2)
    again = Plan.make("models:/m/1", "models:/m@a", "s3://b/in/*", "s3://b/out/", "parquet", list(reversed(files)), 2)
    assert again == one and again.plan_id == one.plan_id and Plan.from_dict(one.to_dict()) == one
    grown = Plan.make("models:/m/2", "models:/m@a", "x", "s3://b/out/", "parquet",
                      [*files[:4], InputFile("s3://b/in/f5.parquet", 1, "e")], 3)
    assert differences(one, grown) == [
        "the model was models:/m/1, now models:/m/2", "1 input file(s) new (s3://b/in/f5.parquet)",
        "1 input file(s) gone (s3://b/in/f4.parquet)", "--shards was 2, now 3"]
    with pytest.raises(JMKUsageError, match=r"--shards 6 but only 5 input file\(s\) match.*--shards 5 or fewer"):
        split_into_shards(files, 6)


def test_request_lists_every_problem_with_its_fix() -> None:
    with pytest.raises(JMKUsageError) as caught:
        BatchRequest.parse("", None, "s3://b/out/*", shards="0", gpus="two", backend="slurm", error_threshold="5",
                           output_format="json", retries="-1")
    text = str(caught.value)
    for said in ("no model: give its URI first", "no --input", "--output 's3://b/out/*' is a pattern",
                 "--shards '0': give a whole number of at least 1", "--gpus 'two'", "--backend 'slurm'",
                 "--error-threshold '5'", "--output-format 'json'", "--retries '-1'"):
        assert said in text
    ok = BatchRequest.parse("models:/m@a", "s3://b/in/*.csv", "s3://b/out", shards="2", error_threshold="1%")
    assert (ok.output, ok.shards, ok.error_threshold) == ("s3://b/out/", 2, 0.01)


# -- real runs --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_shards_on_s3_parquet_equal_the_models_predict(
    state_dir: Path, s3_bucket: str, batch_model: str, mlflow_uri: str
) -> None:
    import s3fs
    from mlflow.tracking import MlflowClient

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # this test's AWS variables
    parts = frames()
    for number, frame in enumerate(parts):
        fs.pipe(f"{s3_bucket}/in/f{number}.parquet", frame.to_parquet(index=False))
    request = BatchRequest.parse(batch_model, f"s3://{s3_bucket}/in/*.parquet", f"s3://{s3_bucket}/out/", shards=2)
    report = service(state_dir).run(request, say=print)

    assert report.state == "succeeded" and (report.rows, report.errors) == (4 * ROWS, 0)
    assert [s["state"] for s in report.shards] == ["succeeded", "succeeded"]
    got = read_outputs(fs, f"{s3_bucket}/out", "parquet")
    assert sorted(got["id"]) == list(range(4 * ROWS))  # every row once
    want = expected(batch_model, parts)
    assert got.set_index("id")["prediction"].sort_index().tolist() == pytest.approx(want.tolist())
    assert fs.exists(f"{s3_bucket}/out/_SUCCESS") and not fs.exists(f"{s3_bucket}/out/_quarantine")
    run = MlflowClient(mlflow_uri).get_run(report.run_id)
    assert run.info.status == "FINISHED"
    for shard in (0, 1):
        assert run.data.metrics[f"shard_{shard}/rows"] == report.shards[shard]["rows"] > 0
        assert run.data.metrics[f"shard_{shard}/errors"] == 0
        assert run.data.metrics[f"shard_{shard}/rows_per_s"] > 0
    assert run.data.metrics["rows"] == 4 * ROWS
    assert report.form == "jobs" and run.data.tags["batch.form"] == "jobs"
    children = MlflowClient(mlflow_uri).search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{report.run_id}'")
    assert len(children) == 2

    again = service(state_dir).run(request, say=print)  # everything finished: nothing runs again
    assert [s["state"] for s in again.shards] == ["skipped", "skipped"] and again.rows == 4 * ROWS

    fs.pipe(f"{s3_bucket}/in/f9.parquet", parts[0].to_parquet(index=False))  # the inputs changed
    with pytest.raises(JMKUsageError, match=r"plan differs: 1 input file\(s\) new .*f9.parquet.*--replan"):
        service(state_dir).run(request, say=print)


def test_a_pod_of_an_indexed_job_runs_the_shard_at_its_completion_index(
    state_dir: Path, tmp_path: Path, batch_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_mlflow_k8s.batch.worker import run_indexed_shard

    parts = frames()
    out = tmp_path / "out"
    request = BatchRequest.parse(batch_model, write_local(tmp_path / "in", "csv", parts), str(out), shards=2)
    plan = service(state_dir).plan(request, say=print)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.setenv("JMK_BATCH_SHARDS", "1")  # shard 0 finished before: the Job's index 0 is shard 1
    marker = run_indexed_shard(str(out))

    assert marker["shard"] == 1 and marker["rows"] == sum(len(parts[i]) for i in plan.shards[1])
    assert (out / "_jmk_batch" / "shard-00001" / "_SUCCESS").exists()
    assert not (out / "_jmk_batch" / "shard-00000" / "_SUCCESS").exists()
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{i:05d}.csv" for i in plan.shards[1]]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")  # past the list: not a pod of this Job
    with pytest.raises(JMKUsageError, match=r"name no shard.*run_shard\("):
        run_indexed_shard(str(out))


@pytest.mark.slow
def test_a_shard_killed_half_way_then_a_rerun_skips_the_finished_one(
    state_dir: Path, tmp_path: Path, batch_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.jobs import JobService

    parts = frames(hang_in_last=True)
    pattern = write_local(tmp_path / "in", "csv", parts)
    out = tmp_path / "out"
    request = BatchRequest.parse(batch_model, pattern, str(out), shards=2, retries=0)
    monkeypatch.setenv("JMK_TEST_BATCH_HANG", "1")  # the shard reading f3.csv stops at its row a == 777
    failure: list[BaseException] = []

    def first_run() -> None:
        try:
            service(state_dir).run(request, say=print)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=first_run)
    thread.start()
    deadline = time.monotonic() + 240
    while not (out / "_jmk_batch" / "plan.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    plan = json.loads((out / "_jmk_batch" / "plan.json").read_text())
    hung = next(i for i, files in enumerate(plan["shards"]) if 3 in files)
    other, first_of_hung = 1 - hung, plan["shards"][hung][0]
    marker = out / "_jmk_batch" / f"shard-{other:05d}" / "_SUCCESS"
    while not (marker.exists() and (out / f"part-{first_of_hung:05d}.csv").exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the other shard never finished"
    assert not (out / "_jmk_batch" / f"shard-{hung:05d}" / "_SUCCESS").exists()
    jobs = JobService(load_settings(state_dir=str(state_dir)))
    try:
        record = next(r for r in jobs.list() if r.spec.tags.get("jmk.batch.shard") == str(hung))
        while not jobs.get(record.job_id).runner_pid and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(int(jobs.get(record.job_id).runner_pid or 0), signal.SIGKILL)  # half way: one file written, one not
        thread.join(120)
    finally:
        stop_jobs(state_dir)
    assert failure and isinstance(failure[0], BatchFailed)
    assert f"shard {hung}" in str(failure[0]) and "Run the same command again" in str(failure[0])
    finished = marker.read_bytes(), marker.stat().st_mtime_ns

    monkeypatch.delenv("JMK_TEST_BATCH_HANG")
    report = service(state_dir).run(request, say=print)
    assert report.shards[other]["state"] == "skipped" and report.shards[hung]["state"] == "succeeded"
    assert (marker.read_bytes(), marker.stat().st_mtime_ns) == finished  # the finished shard did not run again
    shard_jobs = [r for r in jobs.list() if r.spec.tags.get("jmk.batch") == report.plan_id]
    assert sorted(r.spec.tags["jmk.batch.shard"] for r in shard_jobs) == sorted([str(other), str(hung), str(hung)])
    got = read_outputs(fsspec.filesystem("file"), str(out), "csv")
    assert sorted(got["id"]) == list(range(4 * ROWS))  # no row twice, none missing
    want = expected(batch_model, parts)
    assert got.set_index("id")["prediction"].sort_index().tolist() == pytest.approx(want.tolist())


@pytest.mark.slow
def test_bad_rows_under_the_threshold_pass_with_a_quarantine_over_it_fail_with_the_count(
    shell: Any, state_dir: Path, tmp_path: Path, batch_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd
    from IPython.core.error import UsageError

    from jupyter_mlflow_k8s.cli import main as jmk

    parts = frames(bad=4)  # 1% of 400 rows
    pattern = write_local(tmp_path / "in", "csv", parts)
    out = tmp_path / "out"
    assert jmk(["batch-predict", batch_model, "--input", pattern, "--output", str(out), "--shards", "2",
                "--error-threshold", "0.02", "--output-format", "parquet"]) == 0
    printed = capsys.readouterr().out
    assert "total  succeeded        400        4" in printed
    quarantine = pd.concat([pd.read_csv(p) for p in sorted((out / "_quarantine").glob("*.csv"))])
    assert len(quarantine) == 4
    reasons = sorted(set(quarantine["_reason"]))
    assert len(reasons) == 2 and reasons[0] == "column 'a' is empty"
    assert reasons[1].startswith("predict failed: ") and "b below -1000" in reasons[1]
    assert set(quarantine["id"]) == {int(parts[k % 4].loc[10 + k // 4, "id"]) for k in range(4)}
    got = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
    assert len(got) == 396 and not set(got["id"]) & set(quarantine["id"])

    parts = frames(bad=20)  # 5%
    pattern = write_local(tmp_path / "in5", "parquet", parts)
    with pytest.raises(UsageError, match=r"20 of 400 rows were bad \(5.00%\), more than --error-threshold 0.02 "
                                         r"allows \(8\); see .*_quarantine/"):
        shell.run_line_magic("batch_predict", f"{batch_model} --input '{pattern}' --output {tmp_path / 'out5'} "
                                              "--shards 2 --error-threshold 0.02")
    assert len(list((tmp_path / "out5" / "_quarantine").glob("*.csv"))) == 4
    assert not (tmp_path / "out5" / "_SUCCESS").exists()


def test_every_bad_flag_is_refused_before_anything_runs(
    shell: Any, state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from IPython.core.error import UsageError

    from jupyter_mlflow_k8s.cli import main as jmk

    assert jmk(["batch-predict", "models:/m@a", "--input", str(tmp_path / "*.csv"), "--shards", "none"]) == 2
    said = capsys.readouterr().err
    assert "no --output" in said and "--shards 'none'" in said
    with pytest.raises(UsageError, match="matches no file"):
        shell.run_line_magic("batch_predict", f"models:/nothing/1 --input {tmp_path}/*.csv --output {tmp_path}/o/")
    with pytest.raises(UsageError, match="unrecognized arguments: --workers"):
        shell.run_line_magic("batch_predict", "models:/m@a --workers 2")
    from jupyter_mlflow_k8s.config import load_settings
    from jupyter_mlflow_k8s.jobs import JobService

    assert JobService(load_settings(state_dir=str(state_dir))).store.list() == []  # nothing was submitted


def test_a_batch_predict_step_is_checked_when_the_pipeline_loads(tmp_path: Path) -> None:
    from jupyter_mlflow_k8s.pipelines.spec import load_pipeline

    path = tmp_path / "pipeline.yaml"
    path.write_text("name: scoring\nsteps:\n  score:\n    backend: kubernetes\n    batch_predict:\n"
                    "      model: models:/m@a\n      input: 's3://b/in/*.csv'\n      output: s3://b/out/\n"
                    "      shard: 2\n      error_threshold: 3\n")
    with pytest.raises(JMKUsageError) as caught:
        load_pipeline(path)
    text = str(caught.value)
    assert "steps.score.backend: not with batch_predict" in text
    assert "steps.score.batch_predict.shard: unknown key (did you mean 'shards'?)" in text
    assert "steps.score.batch_predict: --error-threshold 3" in text


@pytest.mark.slow
def test_a_pipeline_runs_a_batch_predict_step(state_dir: Path, tmp_path: Path, batch_model: str) -> None:
    import pandas as pd

    from jupyter_mlflow_k8s.pipelines.engine import PipelineEngine
    from jupyter_mlflow_k8s.pipelines.spec import load_pipeline

    parts = frames()
    write_local(tmp_path / "in" / "d1", "csv", parts)
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"name: scoring\nparameters:\n  day: d1\nsteps:\n  score:\n    batch_predict:\n"
                    f"      model: {batch_model}\n      input: '{tmp_path}/in/{{{{ parameters.day }}}}/*.csv'\n"
                    f"      output: '{tmp_path}/out/{{{{ parameters.day }}}}/'\n      shards: 2\n")
    run = PipelineEngine().run(load_pipeline(path))
    assert run.state == "succeeded", run.steps["score"].reason
    outputs = run.steps["score"].outputs
    assert (outputs["rows"], outputs["errors"]) == (4 * ROWS, 0) and outputs["output"] == f"{tmp_path}/out/d1/"
    got = pd.concat([pd.read_csv(p) for p in sorted((tmp_path / "out" / "d1").glob("part-*.csv"))])
    assert sorted(got["id"]) == list(range(4 * ROWS))
