"""Triggers: pipelines run on new S3 objects (a moto server) and on a served model's drift (a real endpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for
from servers import S3Server
from serving_fixtures import FEATURES, Served
from trigger_fixtures import notebook

from jupyter_mlflow_k8s.cli import main as jmk
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.pipelines.engine import PipelineEngine
from jupyter_mlflow_k8s.pipelines.schedule import Scheduler
from jupyter_mlflow_k8s.pipelines.triggers import (
    DriftReading,
    TriggerEvaluator,
    add_trigger,
    build_trigger,
    get_trigger,
    list_triggers,
    load_cursor,
    read_history,
    triggers_dir,
)
from jupyter_mlflow_k8s.pipelines.triggers import evaluator as evaluator_module

UTC = timezone.utc
REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def evaluator(evaluators: list[TriggerEvaluator], **kwargs: Any) -> TriggerEvaluator:
    made = TriggerEvaluator(**kwargs)
    evaluators.append(made)
    return made


def put(s3: S3Server, bucket: str, *keys: str, body: bytes = b"rows") -> list[str]:
    client = s3.client()
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return [f"s3://{bucket}/{key}" for key in keys]


def wait_run_ended(made: TriggerEvaluator, name: str) -> None:
    def ended() -> bool:
        made.reap()
        return load_cursor(name).pid is None and load_cursor(name).last_exit is not None

    wait_for(ended, timeout=180, interval=0.2)


def fired(name: str) -> list[dict[str, Any]]:
    return [entry for entry in read_history(name) if entry["event"] == "fired"]


# -- adding, listing, refusing ---------------------------------------------------------------


def test_every_bad_flag_is_refused_at_once_and_nothing_is_stored(state_dir: Path, retrain: Path) -> None:
    with pytest.raises(JMKUsageError) as caught:
        build_trigger(retrain, name="Bad_Name", on_new_objects="http://bucket/in/", min_new="zero", debounce="10q",
                      psi_above="0.2", cooldown="soon", mode="later")
    message = str(caught.value)
    for expected in ("--min-new 'zero' is not a whole number: e.g. --min-new 3", "--debounce '10q' is not a duration",
                     "--cooldown 'soon' is not a duration", "--mode 'later': use --mode run",
                     "--psi-above only goes with --on-drift", "--on-new-objects 'http://bucket/in/': give an S3 folder",
                     "--name: invalid value 'Bad_Name'"):
        assert expected in message, message
    with pytest.raises(JMKUsageError, match="give one condition"):
        build_trigger(retrain, name="none")
    with pytest.raises(JMKUsageError) as drift:
        build_trigger(retrain, name="drift", on_drift="iris", pattern="*.csv")
    for expected in ("--pattern only goes with --on-new-objects", "--on-drift 'iris': give a registered model and its "
                     "alias", "--on-drift needs --psi-above", "--on-drift needs --for"):
        assert expected in str(drift.value)
    with pytest.raises(JMKUsageError, match=r"declares no parameter 'files'.*add `files: \[\]` under parameters"):
        build_trigger(retrain, name="files", on_new_objects="s3://bucket/in/", param="files")
    assert jmk(["trigger", "add", "x", "--pipeline", str(retrain), "--on-drift", "iris@prod", "--psi-above", "-1",
                "--for", "15m"]) == 2
    assert list_triggers() == [] and not triggers_dir().exists()


def test_cli_add_list_history_remove(state_dir: Path, retrain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert jmk(["trigger", "add", "new-data", "--pipeline", str(retrain), "--on-new-objects", "s3://bucket/in",
                "--pattern", "*.parquet", "--min-new", "3", "--debounce", "10m", "--cooldown", "6h"]) == 0
    assert jmk(["trigger", "add", "drifted", "--pipeline", str(retrain), "--on-drift", "iris@prod", "--psi-above",
                "0.2", "--for", "15m", "--mode", "suggest"]) == 0
    out = capsys.readouterr().out
    assert "added trigger new-data: run" in out and "at least 3, quiet 10m, cooldown 6h" in out
    trigger = get_trigger("new-data")
    assert (trigger.url, trigger.pattern, trigger.min_new, trigger.debounce, trigger.cooldown) == (
        "s3://bucket/in/", "*.parquet", 3, 600.0, 21600.0)
    drift = get_trigger("drifted")
    assert (drift.model, drift.alias, drift.psi_above, drift.hold, drift.mode) == ("iris", "prod", 0.2, 900.0, "suggest")
    assert jmk(["trigger", "add", "drifted", "--pipeline", str(retrain), "--on-drift", "iris@prod", "--psi-above",
                "0.3", "--for", "1m"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert jmk(["trigger", "list"]) == 0
    listing = capsys.readouterr().out
    assert "new-data" in listing and "drift of iris@prod: PSI > 0.2 for 15m" in listing
    assert jmk(["trigger", "history", "new-data"]) == 0
    assert "has not fired yet" in capsys.readouterr().out
    assert jmk(["trigger", "remove", "new-data"]) == 0
    assert [t.name for t in list_triggers()] == ["drifted"]
    assert jmk(["trigger", "remove", "new-data"]) == 2
    assert "No trigger named 'new-data'. Triggers: drifted" in capsys.readouterr().err


def test_trigger_magic(shell: Any, retrain: Path) -> None:
    from IPython.core.error import UsageError

    trigger = shell.run_line_magic("trigger", f"add nb --pipeline {retrain} --on-new-objects s3://bucket/in/")
    assert trigger.name == "nb" and get_trigger("nb").url == "s3://bucket/in/"
    with pytest.raises(UsageError, match="--min-new 'x' is not a whole number"):
        shell.run_line_magic("trigger", f"add nb2 --pipeline {retrain} --on-new-objects s3://bucket/in/ --min-new x")
    with pytest.raises(UsageError, match="Usage: %trigger add NAME"):
        shell.run_line_magic("trigger", "fire nb")
    assert shell.run_line_magic("trigger", "history nb") == []
    shell.run_line_magic("trigger", "remove nb")
    assert list_triggers() == []


# -- new objects, on a real S3 endpoint ------------------------------------------------------


def test_three_new_objects_give_one_run_with_their_keys_and_one_more_below_min_new_none(
        state_dir: Path, retrain: Path, s3_server: S3Server, s3_bucket: str, evaluators: list[TriggerEvaluator]) -> None:
    add_trigger(build_trigger(retrain, name="new-data", on_new_objects=f"s3://{s3_bucket}/in/", pattern="*.parquet",
                              min_new=3))
    put(s3_server, s3_bucket, "in/skip.csv", "elsewhere/c.parquet")
    first = evaluator(evaluators)
    keys = put(s3_server, s3_bucket, "in/a.parquet", "in/b.parquet")
    assert first.tick(T0) == []  # two of three
    keys += put(s3_server, s3_bucket, "in/2026/c.parquet")
    assert first.tick(T0 + timedelta(minutes=1)) == ["new-data"]
    assert first.tick(T0 + timedelta(minutes=2)) == []
    wait_run_ended(first, "new-data")
    (run,) = PipelineEngine().list()
    assert run.state == "succeeded" and run.parameters["new_objects"] == sorted(keys)
    assert run.steps["train"].outputs == {"objects": sorted(keys)}
    assert load_cursor("new-data").last_run_id == run.run_id == fired("new-data")[0]["run_id"]

    put(s3_server, s3_bucket, "in/d.parquet")
    restarted = evaluator(evaluators)  # a scheduler started again: same cursor
    assert restarted.tick(T0 + timedelta(minutes=3)) == []
    assert load_cursor("new-data").pending == {f"s3://{s3_bucket}/in/d.parquet": load_cursor("new-data").pending[
        f"s3://{s3_bucket}/in/d.parquet"]}
    assert len(PipelineEngine().list()) == 1 and len(fired("new-data")) == 1

    put(s3_server, s3_bucket, "in/a.parquet", body=b"rewritten")  # another ETag: new again
    put(s3_server, s3_bucket, "in/e.parquet")
    assert restarted.tick(T0 + timedelta(minutes=4)) == ["new-data"]
    wait_run_ended(restarted, "new-data")
    newest = PipelineEngine().list()[0]
    assert newest.parameters["new_objects"] == [f"s3://{s3_bucket}/in/{n}.parquet" for n in ("a", "d", "e")]


def test_debounce_waits_for_quiet_and_cooldown_holds(state_dir: Path, retrain: Path, s3_server: S3Server,
                                                     s3_bucket: str, evaluators: list[TriggerEvaluator]) -> None:
    add_trigger(build_trigger(retrain, name="quiet", on_new_objects=f"s3://{s3_bucket}/in/", debounce="10m",
                              cooldown="6h"))
    made = evaluator(evaluators)
    put(s3_server, s3_bucket, "in/a.csv")
    assert made.tick(T0) == []
    put(s3_server, s3_bucket, "in/b.csv")
    assert made.tick(T0 + timedelta(minutes=9)) == []  # b came at 9m: quiet counts from there
    assert made.tick(T0 + timedelta(minutes=18)) == []
    assert made.tick(T0 + timedelta(minutes=19)) == ["quiet"]
    wait_run_ended(made, "quiet")
    put(s3_server, s3_bucket, "in/c.csv")
    assert made.tick(T0 + timedelta(minutes=40)) == []
    assert made.tick(T0 + timedelta(hours=6, minutes=18)) == []  # still cooling down (fired at 19m)
    assert load_cursor("quiet").pending and len(fired("quiet")) == 1
    assert made.tick(T0 + timedelta(hours=6, minutes=19)) == ["quiet"]
    wait_run_ended(made, "quiet")
    assert [len(e["objects"]) for e in fired("quiet")] == [2, 1]


def test_suggest_records_and_runs_nothing(state_dir: Path, retrain: Path, s3_server: S3Server, s3_bucket: str,
                                         evaluators: list[TriggerEvaluator]) -> None:
    add_trigger(build_trigger(retrain, name="ask", on_new_objects=f"s3://{s3_bucket}/in/", mode="suggest"))
    told: list[dict[str, Any]] = []
    made = evaluator(evaluators, notify=lambda trigger, entry: told.append(dict(entry)))
    keys = put(s3_server, s3_bucket, "in/a.csv", "in/b.csv")
    assert made.tick(T0) == ["ask"]
    assert made.tick(T0 + timedelta(minutes=1)) == []
    (entry,) = read_history("ask")
    assert entry["event"] == "suggested" and entry["objects"] == keys and told == [entry]
    assert "pipeline" in entry["command"] and f"new_objects={json.dumps(keys)}" in entry["command"]
    assert made._children == {} and load_cursor("ask").pid is None
    assert not (state_dir / "pipelines" / "runs").exists() or PipelineEngine().list() == []


def test_one_run_at_a_time_new_objects_wait_for_the_running_one(
        state_dir: Path, tmp_path: Path, s3_server: S3Server, s3_bucket: str,
        evaluators: list[TriggerEvaluator]) -> None:
    folder = tmp_path / "slow"
    notebook(folder / "wait.ipynb", "new_objects = []\nrelease = ''",
             "import pathlib, time\nwhile not pathlib.Path(release).exists():\n    time.sleep(0.1)")
    pipeline = folder / "pipeline.yaml"
    pipeline.write_text("name: slow\nparameters: {new_objects: [], release: ''}\nsteps:\n  wait:\n"
                        "    notebook: wait.ipynb\n    parameters: {new_objects: '{{ parameters.new_objects }}', "
                        "release: '{{ parameters.release }}'}\n")
    release = tmp_path / "release"
    add_trigger(build_trigger(pipeline, name="slow", on_new_objects=f"s3://{s3_bucket}/in/",
                              overrides={"release": str(release)}))
    made = evaluator(evaluators)
    first = put(s3_server, s3_bucket, "in/a.csv")
    assert made.tick(T0) == ["slow"]
    second = put(s3_server, s3_bucket, "in/b.csv")
    assert made.tick(T0 + timedelta(minutes=1)) == []  # the first run still runs
    assert list(load_cursor("slow").pending) == second
    release.touch()
    wait_run_ended(made, "slow")
    assert made.tick(T0 + timedelta(minutes=2)) == ["slow"]
    wait_run_ended(made, "slow")
    assert [e["objects"] for e in fired("slow")] == [first, second]
    runs = sorted(PipelineEngine().list(), key=lambda run: run.created)
    assert [run.parameters["new_objects"] for run in runs] == [first, second]
    assert all(run.state == "succeeded" and run.parameters["release"] == str(release) for run in runs)


def test_a_kill_after_the_run_key_is_recorded_never_launches_it(
        state_dir: Path, retrain: Path, s3_server: S3Server, s3_bucket: str, evaluators: list[TriggerEvaluator],
        monkeypatch: pytest.MonkeyPatch) -> None:
    add_trigger(build_trigger(retrain, name="once", on_new_objects=f"s3://{s3_bucket}/in/"))
    put(s3_server, s3_bucket, "in/a.csv")

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the scheduler dies between recording the run key and starting the run

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(evaluator_module.subprocess, "Popen", killed)
        evaluator(evaluators).tick(T0)
    cursor = load_cursor("once")
    assert len(cursor.run_keys) == 1 and cursor.pid is None and len(fired("once")) == 1
    assert evaluator(evaluators).tick(T0 + timedelta(minutes=1)) == []
    assert not (state_dir / "pipelines" / "runs").exists() or PipelineEngine().list() == []


def test_the_scheduler_killed_and_restarted_launches_no_duplicate(state_dir: Path, retrain: Path,
                                                                  s3_server: S3Server, s3_bucket: str) -> None:
    add_trigger(build_trigger(retrain, name="killed", on_new_objects=f"s3://{s3_bucket}/in/", min_new=3))
    keys = put(s3_server, s3_bucket, "in/a.csv", "in/b.csv", "in/c.csv")

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "jupyter_mlflow_k8s.cli", "scheduler", "--poll", "0.2"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def checked_after(moment: datetime) -> bool:
        last = load_cursor("killed").last_check
        return last is not None and last > moment

    first = start()
    try:
        wait_for(lambda: load_cursor("killed").pid, timeout=120, interval=0.1)  # launched
        first.send_signal(signal.SIGKILL)  # no cleanup at all
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    second = start()
    try:
        restarted = datetime.now(UTC)
        wait_for(lambda: checked_after(restarted + timedelta(seconds=1)), timeout=120, interval=0.1)
        wait_for(lambda: PipelineEngine().list() and PipelineEngine().list()[0].state != "running", timeout=180,
                 interval=0.2)
        ended = datetime.now(UTC)
        wait_for(lambda: checked_after(ended + timedelta(seconds=0.5)), timeout=60, interval=0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    runs = PipelineEngine().list()
    assert len(runs) == 1 and runs[0].parameters["new_objects"] == keys, runs
    assert len(fired("killed")) == 1 and load_cursor("killed").last_run_id == runs[0].run_id


def test_the_scheduler_ticks_the_triggers_beside_the_schedules(state_dir: Path, retrain: Path) -> None:
    add_trigger(build_trigger(retrain, name="beside", on_new_objects="s3://bucket/in/", mode="suggest"))
    listed = {"s3://bucket/in/a.csv": "etag-a"}
    scheduler = Scheduler(tickers=[TriggerEvaluator(objects=lambda url, pattern: dict(listed))])
    assert scheduler.tick(T0) == ["beside"]
    assert scheduler.tick(T0 + timedelta(minutes=1)) == []


# -- drift, from a real served model -----------------------------------------------------------


@pytest.fixture
def drifting(tmp_path: Path) -> Path:
    folder = tmp_path / "drift"
    notebook(folder / "fit.ipynb", "x = 1", "from jupyter_mlflow_k8s import output\noutput('x', x)")
    path = folder / "pipeline.yaml"
    path.write_text("name: refit\nparameters: {x: 1}\nsteps:\n  fit: {notebook: fit.ipynb}\n")
    return path


def _rows(rows: int, shift: float, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    data = rng.normal(loc=[5.8, 3.0, 3.8, 1.2], scale=[0.8, 0.4, 1.7, 0.7], size=(rows, 4))
    data[:, 2] += shift * 1.7
    return pd.DataFrame(data, columns=list(FEATURES))


@pytest.fixture
def endpoint(state_dir: Path, served_model: Served) -> Iterator[Any]:
    from jupyter_mlflow_k8s.serving.manager import ServingManager

    manager = ServingManager()
    started = manager.start(f"models:/{served_model.name}@prod", name="iris-prod", drift_window=200)
    yield manager, started
    manager.stop(started.name)


def _reader() -> Any:
    from jupyter_mlflow_k8s.serving.drift_reading import DriftReader
    from jupyter_mlflow_k8s.serving.targets.registry import get_target

    reader = DriftReader(targets=[get_target("local")])
    return lambda model, alias: DriftReading(**asdict(reader(model, alias)))


def _send(manager: Any, name: str, shift: float, seed: int) -> None:
    for i in range(10):
        manager.predict(name, _rows(20, shift, seed * 100 + i))  # 200 rows: the whole window


def test_drift_held_for_the_duration_runs_once_and_a_brief_crossing_runs_nothing(
        state_dir: Path, drifting: Path, served_model: Served, endpoint: Any,
        evaluators: list[TriggerEvaluator]) -> None:
    manager, started = endpoint
    add_trigger(build_trigger(drifting, name="held", on_drift=f"{served_model.name}@prod", psi_above=0.2, hold="60s",
                              cooldown="6h"))
    add_trigger(build_trigger(drifting, name="brief", on_drift=f"{served_model.name}@prod", psi_above=0.2,
                              hold="90s", mode="suggest"))
    made = evaluator(evaluators, drift_reader=_reader())

    assert made.tick(T0) == []
    assert load_cursor("held").last_error and "no drift values yet" in load_cursor("held").last_error
    _send(manager, started.name, 0.0, 1)
    assert made.tick(T0 + timedelta(seconds=30)) == []
    assert (load_cursor("held").last_value or 1) < 0.2 and load_cursor("held").above_since is None

    _send(manager, started.name, 1.5, 2)  # shifted: PSI well above 0.2
    assert made.tick(T0 + timedelta(seconds=60)) == []  # above since 60s
    assert load_cursor("held").above_since == T0 + timedelta(seconds=60)
    assert made.tick(T0 + timedelta(seconds=90)) == []
    _send(manager, started.name, 0.0, 3)  # back to normal briefly: "brief" starts over
    assert made.tick(T0 + timedelta(seconds=100)) == []
    assert load_cursor("brief").above_since is None and load_cursor("held").above_since is None
    _send(manager, started.name, 1.5, 4)
    assert made.tick(T0 + timedelta(seconds=110)) == []
    assert made.tick(T0 + timedelta(seconds=140)) == []
    assert made.tick(T0 + timedelta(seconds=170)) == ["held"]  # held above 110..170: 60 s
    for second in (180, 190):  # "brief" (90 s) since 110 s: not yet; "held" cools down
        assert made.tick(T0 + timedelta(seconds=second)) == []
    wait_run_ended(made, "held")
    (entry,) = fired("held")
    assert entry["psi"] > 0.2 and entry["above_since"] == "2026-12-06T12:01:50Z" and entry["endpoints"] == ["iris-prod"]
    assert read_history("brief") == [] and len(PipelineEngine().list()) == 1
    assert made.tick(T0 + timedelta(seconds=200)) == ["brief"]  # 90 s held now; "held" cools down for 6h
    assert [e["event"] for e in read_history("brief")] == ["suggested"]
