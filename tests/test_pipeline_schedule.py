"""Pipelines on a schedule: cron times, the embedded scheduler firing real runs, CronJob manifests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
import yaml
from helpers import wait_for
from k8s_manifests import validate_manifest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from jupyter_mlflow_k8s.cli import main as jmk
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.k8s.validation import check_manifest
from jupyter_mlflow_k8s.pipelines.engine import PipelineEngine
from jupyter_mlflow_k8s.pipelines.schedule import (
    CronError,
    Schedule,
    Scheduler,
    SchedulerRunning,
    add_schedule,
    build_cronjob,
    build_schedule_manifests,
    get_schedule,
    list_schedules,
    next_fire,
    remove_schedule,
    schedules_dir,
)
from jupyter_mlflow_k8s.pipelines.spec import InvalidPipeline, load_pipeline

UTC = timezone.utc
REPO = Path(__file__).resolve().parent.parent


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def notebook(path: Path, parameters: str, code: str, outputs: list[object] | None = None) -> None:
    cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell(code, outputs=outputs or [])]
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(new_notebook(cells=cells, metadata=meta), path)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A one-step pipeline whose notebook publishes an output."""
    folder = tmp_path / "tiny"
    notebook(folder / "one.ipynb", "x = 1", "from jupyter_mlflow_k8s import output\noutput('double', x * 2)")
    path = folder / "pipeline.yaml"
    path.write_text("name: Tiny Nightly\nparameters: {x: 1}\nsteps:\n  one: {notebook: one.ipynb, parameters: {x: '{{ parameters.x }}'}}\n")
    return path


# -- cron ------------------------------------------------------------------------------------

CASES = [
    # (expression, after, expected)
    ("0 3 * * *", "2024-01-01T02:59:59", "2024-01-01T03:00:00"),
    ("0 3 * * *", "2024-01-01T03:00:00", "2024-01-02T03:00:00"),  # strictly after
    ("*/15 * * * *", "2024-01-01T10:07:30", "2024-01-01T10:15:00"),
    ("*/15 9-17/4 * * *", "2024-01-01T17:46:00", "2024-01-02T09:00:00"),  # hours 9, 13, 17
    ("5/20 * * * *", "2024-01-01T00:46:00", "2024-01-01T01:05:00"),  # N/step is N-max/step
    ("0 9 * * 1-5", "2024-01-05T09:00:00", "2024-01-08T09:00:00"),  # Friday -> Monday
    ("0 12 * JAN-MAR mon-FRI", "2024-03-29T12:00:00", "2025-01-01T12:00:00"),
    ("30 6 1 jan,Jul *", "2024-01-01T06:30:00", "2024-07-01T06:30:00"),
    ("0 0 1 1 *", "2024-12-31T23:59:00", "2025-01-01T00:00:00"),  # year rollover
    ("@yearly", "2024-12-31T23:59:00", "2025-01-01T00:00:00"),
    ("@annually", "2024-06-01T00:00:00", "2025-01-01T00:00:00"),
    ("@monthly", "2024-01-31T12:00:00", "2024-02-01T00:00:00"),
    ("@weekly", "2024-01-01T00:00:00", "2024-01-07T00:00:00"),  # Sunday
    ("@daily", "2024-02-28T12:00:00", "2024-02-29T00:00:00"),
    ("@midnight", "2024-02-29T00:00:00", "2024-03-01T00:00:00"),
    ("@hourly", "2024-01-01T10:00:00", "2024-01-01T11:00:00"),
    ("0 0 29 2 *", "2025-03-01T00:00:00", "2028-02-29T00:00:00"),  # leap day
    ("0 0 29 2 *", "2096-03-01T00:00:00", "2104-02-29T00:00:00"),  # 2100 is no leap year
    ("0 0 31 * *", "2024-04-01T00:00:00", "2024-05-31T00:00:00"),  # April has 30 days
    # Day of month OR day of week when both are restricted: the 13th, and every Friday.
    ("0 0 13 * 5", "2024-01-01T00:00:00", "2024-01-05T00:00:00"),
    ("0 0 13 * FRI", "2024-01-12T00:00:00", "2024-01-13T00:00:00"),
    # ... AND when one is * or ?: only the 13th / only Mondays.
    ("0 0 13 * *", "2024-01-01T00:00:00", "2024-01-13T00:00:00"),
    ("0 0 ? * MON", "2024-01-02T00:00:00", "2024-01-08T00:00:00"),
    ("0 0 1 * */1", "2024-01-01T00:00:00", "2024-02-01T00:00:00"),  # */1 is still *
    ("0 0 1 * */2", "2024-01-01T00:00:00", "2024-01-02T00:00:00"),  # */2 restricts (robfig): OR, Tuesday
    ("0,30 8-9 * * 0", "2024-01-07T09:30:00", "2024-01-14T08:00:00"),
    ("@every 90m", "2024-01-01T10:00:30.500", "2024-01-01T11:30:30"),
    ("@every 1h30m", "2024-01-01T10:00:00", "2024-01-01T11:30:00"),
    ("@every 500ms", "2024-01-01T10:00:00", "2024-01-01T10:00:01"),  # at least a second
]


@pytest.mark.parametrize(("expression", "after", "expected"), CASES)
def test_next_fire(expression: str, after: str, expected: str) -> None:
    assert next_fire(expression, at(after)) == at(expected)


ORACLES: dict[str, Callable[[datetime], bool]] = {
    "0 0 13 * 5": lambda t: (t.hour, t.minute) == (0, 0) and (t.day == 13 or t.weekday() == 4),
    "0 0 13 * *": lambda t: (t.hour, t.minute) == (0, 0) and t.day == 13,
    "*/20 1-3 * * SAT,sun": lambda t: t.minute % 20 == 0 and 1 <= t.hour <= 3 and t.weekday() in (5, 6),
    "59 23 31 * *": lambda t: (t.hour, t.minute, t.day) == (23, 59, 31),
    "15 10 1-7 * 1": lambda t: (t.hour, t.minute) == (10, 15) and (t.day <= 7 or t.weekday() == 0),
    "0 12 * 2 *": lambda t: (t.hour, t.minute, t.month) == (12, 0, 2),
}


@pytest.mark.parametrize("expression", list(ORACLES))
def test_next_fire_agrees_with_a_minute_by_minute_scan(expression: str) -> None:
    matches = ORACLES[expression]
    start = at("2023-12-30T22:13:00")
    expected = []
    moment = start + timedelta(minutes=1)
    while moment < start + timedelta(days=800) and len(expected) < 40:
        if matches(moment):
            expected.append(moment)
        moment += timedelta(minutes=1)
    found = []
    moment = start
    for _ in expected:
        moment = next_fire(expression, moment)
        found.append(moment)
    assert found == expected and len(found) >= 3


def test_next_fire_is_utc_whatever_the_input_zone() -> None:
    berlin = timezone(timedelta(hours=2))
    assert next_fire("0 3 * * *", datetime(2024, 6, 1, 4, 30, tzinfo=berlin)) == at("2024-06-01T03:00:00")
    naive = next_fire("0 3 * * *", datetime(2024, 6, 1, 2, 0))
    assert naive == at("2024-06-01T03:00:00") and naive.tzinfo == UTC


@pytest.mark.parametrize("expression", ["61 * * * *", "0 3 * *", "0 3 * * 7", "@fortnightly", "TZ=UTC 0 3 * * *", ""])
def test_next_fire_refuses_what_kubernetes_refuses(expression: str) -> None:
    with pytest.raises(CronError, match="schedule: invalid value"):
        next_fire(expression, at("2024-01-01T00:00:00"))


def test_a_schedule_that_never_fires_is_refused() -> None:
    with pytest.raises(CronError, match="never fires"):
        next_fire("0 0 30 2 *", at("2024-01-01T00:00:00"))


# -- schedules on disk -----------------------------------------------------------------------


def test_add_list_remove(state_dir: Path, tiny: Path) -> None:
    created = at("2030-01-01T06:30:00")
    schedule = add_schedule(tiny, "0 3 * * *", {"x": 5}, now=created)

    assert schedule.name == "tiny-nightly"  # from the pipeline's name
    assert schedule.next_fire == at("2030-01-02T03:00:00") and schedule.created == created
    data = json.loads((state_dir / "pipelines" / "schedules" / "tiny-nightly.json").read_text())
    assert data["pipeline"] == str(tiny.resolve()) and data["overrides"] == {"x": "5"}
    assert data["missed"] == "run-once" and data["overlap"] is False
    assert data["next_fire"] == "2030-01-02T03:00:00Z" and data["last_fire"] is None and data["last_run_id"] is None
    assert [s.name for s in list_schedules()] == ["tiny-nightly"]

    other = add_schedule(tiny, "@hourly", name="hourly", missed="skip", overlap=True, now=created)
    assert (other.missed, other.overlap, other.next_fire) == ("skip", True, at("2030-01-01T07:00:00"))
    assert [s.name for s in list_schedules()] == ["hourly", "tiny-nightly"]

    with pytest.raises(JMKUsageError, match="exists already"):
        add_schedule(tiny, "@daily", now=created)
    replaced = add_schedule(tiny, "@daily", replace=True, now=created)
    assert get_schedule("tiny-nightly").cron == "@daily" == replaced.cron

    assert remove_schedule("hourly").name == "hourly"
    assert [s.name for s in list_schedules()] == ["tiny-nightly"]
    with pytest.raises(JMKUsageError, match=r"No schedule named 'hourly'\. Schedules: tiny-nightly"):
        remove_schedule("hourly")


def test_bad_schedules_are_refused_with_every_problem(state_dir: Path, tiny: Path) -> None:
    with pytest.raises(InvalidPipeline, match=r"schedule: invalid value '61 \* \* \* \*'"):
        add_schedule(tiny, "61 * * * *")
    with pytest.raises(InvalidPipeline) as both:
        add_schedule(tiny, "0 3 * *", {"lr": "0.1"})  # an undeclared parameter, and four fields
    assert any("-p lr" in p for p in both.value.problems)
    assert any("expected exactly 5 fields" in p for p in both.value.problems)
    (tiny.parent / "one.ipynb").unlink()
    with pytest.raises(InvalidPipeline, match=r"one\.ipynb does not exist"):
        add_schedule(tiny, "0 3 * * *")
    notebook(tiny.parent / "one.ipynb", "x = 1", "print(x)")
    with pytest.raises(CronError, match="never fires"):
        add_schedule(tiny, "0 0 31 4 *")
    with pytest.raises(JMKUsageError, match="missed='sometimes'"):
        add_schedule(tiny, "@daily", missed="sometimes")
    with pytest.raises(JMKUsageError, match="--name: invalid value 'Bad_Name'"):
        add_schedule(tiny, "@daily", name="Bad_Name")
    with pytest.raises(JMKUsageError, match="more than 52"):
        add_schedule(tiny, "@daily", name="a" * 53)
    assert list_schedules() == []


def test_cli_schedule_list_unschedule(state_dir: Path, tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert jmk(["pipeline", "schedule", str(tiny), "--cron", "61 * * * *"]) == 2
    err = capsys.readouterr().err
    assert "jmk: " in err and "minute field '61': 61 is above the maximum" in err
    assert list_schedules() == []

    assert jmk(["pipeline", "schedule", str(tiny), "--cron", "0 3 * * *", "-p", "x=3", "--name", "nightly",
                "--missed", "skip"]) == 0
    out = capsys.readouterr().out
    assert "scheduled nightly" in out and "(UTC)" in out and "start one with `jmk scheduler`" in out
    assert get_schedule("nightly").overrides == {"x": "3"} and get_schedule("nightly").missed == "skip"

    assert jmk(["pipeline", "schedules"]) == 0
    out = capsys.readouterr().out
    assert "nightly" in out and "0 3 * * *" in out and f"{get_schedule('nightly').next_fire:%Y-%m-%d} 03:00:00Z" in out

    assert jmk(["pipeline", "schedule", str(tiny), "--cron", "@daily", "--namespace", "x"]) == 2
    assert "only go with --kubernetes" in capsys.readouterr().err
    assert jmk(["pipeline", "unschedule", "nightly"]) == 0
    assert list_schedules() == []
    assert jmk(["pipeline", "unschedule", "nightly"]) == 2


# -- the embedded scheduler ------------------------------------------------------------------


class QuickScheduler(Scheduler):
    """Fires a plain process instead of a pipeline run: the policies without kernels."""

    seconds = 0.0

    def command(self, schedule: Schedule, run_id: str) -> list[str]:
        return [sys.executable, "-c", f"import time; time.sleep({self.seconds})"]


@pytest.fixture
def schedulers() -> Iterator[list[Scheduler]]:
    made: list[Scheduler] = []
    yield made
    for scheduler in made:
        for children in scheduler._children.values():
            for child in children:
                if child.process.poll() is None:
                    child.process.kill()
                    child.process.wait(10)
        scheduler.release()


def quick(schedulers: list[Scheduler], seconds: float = 0.0) -> QuickScheduler:
    scheduler = QuickScheduler()
    scheduler.seconds = seconds
    schedulers.append(scheduler)
    return scheduler


def wait_ended(scheduler: Scheduler, name: str) -> Schedule:
    def ended() -> Schedule | None:
        scheduler.reap()
        schedule = get_schedule(name)
        return schedule if schedule.last_exit is not None else None

    return wait_for(ended, timeout=30)


@pytest.mark.parametrize(("missed", "fires"), [("skip", 0), ("run-once", 1)])
def test_missed_slots(state_dir: Path, tiny: Path, schedulers: list[Scheduler], missed: str, fires: int) -> None:
    add_schedule(tiny, "0 * * * *", name="hourly", missed=missed, now=at("2030-01-01T06:30:00"))  # next: 07:00
    scheduler = quick(schedulers)

    fired = scheduler.tick(at("2030-01-01T10:30:00"))  # 07:00, 08:00, 09:00 and 10:00 went by

    assert fired == ["hourly"] * fires
    schedule = get_schedule("hourly")
    assert schedule.next_fire == at("2030-01-01T11:00:00")
    assert schedule.last_fire == (at("2030-01-01T10:30:00") if fires else None)
    logs = list((schedules_dir() / "logs").glob("hourly/*.log"))
    assert len(logs) == fires
    assert scheduler.tick(at("2030-01-01T10:45:00")) == []


def test_skip_still_fires_a_slot_that_is_only_a_little_late(state_dir: Path, tiny: Path,
                                                            schedulers: list[Scheduler]) -> None:
    add_schedule(tiny, "0 * * * *", name="hourly", missed="skip", now=at("2030-01-01T06:30:00"))
    scheduler = quick(schedulers)

    assert scheduler.tick(at("2030-01-01T06:59:59")) == []
    assert scheduler.tick(at("2030-01-01T07:04:00")) == ["hourly"]  # 4 minutes late: within the 5-minute grace
    assert get_schedule("hourly").next_fire == at("2030-01-01T08:00:00")
    assert wait_ended(scheduler, "hourly").last_exit == 0
    assert scheduler.tick(at("2030-01-01T08:06:00")) == []  # 6 minutes late: skipped


def test_every_keeps_to_its_grid(state_dir: Path, tiny: Path, schedulers: list[Scheduler]) -> None:
    add_schedule(tiny, "@every 1h", name="hourly", now=at("2030-01-01T00:00:10"))
    assert get_schedule("hourly").next_fire == at("2030-01-01T01:00:10")
    scheduler = quick(schedulers)

    assert scheduler.tick(at("2030-01-01T01:00:25")) == ["hourly"]
    assert get_schedule("hourly").next_fire == at("2030-01-01T02:00:10")  # not 02:00:25
    wait_ended(scheduler, "hourly")
    assert scheduler.tick(at("2030-01-01T05:30:00")) == ["hourly"]  # 4 slots missed: one run
    assert get_schedule("hourly").next_fire == at("2030-01-01T06:00:10")
    with pytest.raises(JMKUsageError, match="No schedule named"):
        remove_schedule("../schedules/hourly")


def test_no_overlap_waits_for_the_previous_run(state_dir: Path, tiny: Path, schedulers: list[Scheduler]) -> None:
    add_schedule(tiny, "* * * * *", name="minutely", now=at("2030-01-01T00:00:30"))
    first = quick(schedulers, seconds=60)

    assert first.tick(at("2030-01-01T00:01:00")) == ["minutely"]
    running = get_schedule("minutely")
    assert running.pid and psutil.pid_exists(running.pid) and running.next_fire == at("2030-01-01T00:02:00")

    assert first.tick(at("2030-01-01T00:02:00")) == []  # still running: the slot waits
    assert first.tick(at("2030-01-01T00:03:00")) == []
    assert get_schedule("minutely").next_fire == at("2030-01-01T00:02:00")
    later = quick(schedulers)  # a scheduler started afterwards knows the run by its pid
    assert later.tick(at("2030-01-01T00:03:00")) == []

    psutil.Process(running.pid).kill()
    assert wait_ended(first, "minutely").last_exit == -signal.SIGKILL
    assert first.tick(at("2030-01-01T00:03:30")) == ["minutely"]  # the missed slots: one run
    assert get_schedule("minutely").next_fire == at("2030-01-01T00:04:00")


def test_allow_overlap_fires_while_the_previous_run_runs(state_dir: Path, tiny: Path,
                                                         schedulers: list[Scheduler]) -> None:
    add_schedule(tiny, "* * * * *", name="minutely", overlap=True, now=at("2030-01-01T00:00:30"))
    scheduler = quick(schedulers, seconds=60)

    assert scheduler.tick(at("2030-01-01T00:01:00")) == ["minutely"]
    assert scheduler.tick(at("2030-01-01T00:02:00")) == ["minutely"]
    pids = [child.process.pid for child in scheduler._children["minutely"]]
    assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)


@pytest.mark.slow
def test_a_schedule_fires_a_real_pipeline_run(state_dir: Path, tiny: Path, schedulers: list[Scheduler]) -> None:
    schedule = add_schedule(tiny, "* * * * *", {"x": 21})
    due = schedule.next_fire
    assert due is not None
    scheduler = Scheduler()
    schedulers.append(scheduler)

    assert scheduler.tick(due - timedelta(seconds=1)) == []
    assert scheduler.tick(due) == ["tiny-nightly"]
    fired = get_schedule("tiny-nightly")
    assert fired.last_fire == due and fired.next_fire == due + timedelta(minutes=1)

    ended = wait_for(lambda: (scheduler.reap(), get_schedule("tiny-nightly"))[1].last_exit is not None, timeout=180)
    assert ended
    done = get_schedule("tiny-nightly")
    log = Path(done.log or "").read_text()
    assert done.last_exit == 0, log
    runs = PipelineEngine().list()
    assert len(runs) == 1 and runs[0].state == "succeeded" and runs[0].source == str(tiny.resolve())
    assert runs[0].steps["one"].outputs == {"double": 42}
    assert done.last_run_id == runs[0].run_id and done.pid is None


def test_one_scheduler_per_state_dir(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = Scheduler()
    first.acquire()
    try:
        with pytest.raises(SchedulerRunning, match=f"already running for this state directory \\(pid {os.getpid()}\\)"):
            Scheduler().acquire()
        assert jmk(["scheduler", "--poll", "0.1"]) == 1
        assert "already running" in capsys.readouterr().err
    finally:
        first.release()
    second = Scheduler()
    second.acquire()  # free again
    second.release()


def test_jmk_scheduler_serves_until_sigterm(state_dir: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_mlflow_k8s.cli", "scheduler", "--poll", "0.2"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(1)]
        while "scheduler started" not in lines[-1] and lines[-1] and len(lines) < 50:
            lines.append(process.stdout.readline())
        assert "scheduler started" in lines[-1], lines
        second = subprocess.run([sys.executable, "-m", "jupyter_mlflow_k8s.cli", "scheduler"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and f"(pid {process.pid})" in second.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "scheduler stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture
def churn(tmp_path: Path) -> Path:
    """A two-step pipeline with a notebook in a subfolder, a GPU step and a notebook with outputs."""
    folder = tmp_path / "churn"
    image = new_output("display_data", data={"image/png": "iVBORw0KGgo=" * 2000})
    notebook(folder / "prepare.ipynb", "rows = 10", "from jupyter_mlflow_k8s import output\noutput('n', rows)", [image])
    notebook(folder / "models" / "train.ipynb", "n = 0", "print(n)")
    path = folder / "churn.yaml"
    path.write_text(
        "name: Churn Model\nparameters: {rows: 10}\nsteps:\n"
        "  prepare: {notebook: prepare.ipynb, parameters: {rows: '{{ parameters.rows }}'}}\n"
        "  train: {notebook: models/train.ipynb, needs: [prepare], parameters: {n: '{{ steps.prepare.outputs.n }}'},"
        " resources: {gpus: 1, memory: 4Gi}}\n"
    )
    return path


def test_cronjob_and_configmap(churn: Path) -> None:
    pipeline = load_pipeline(churn, {"rows": "20"})
    configmap, cronjob = build_schedule_manifests(
        churn, pipeline, "0 3 * * *", {"rows": 20}, namespace="team", image="registry.example.com/runner:1",
        settings=PodSettings(namespace="team", gpus=1, memory="4Gi", secrets=("mlflow",)),
    )
    for manifest in (configmap, cronjob):
        validate_manifest(manifest)
        assert check_manifest(manifest) == []
        assert manifest["metadata"]["namespace"] == "team"
        assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "jupyter-mlflow-k8s"
        assert manifest["metadata"]["labels"]["jmk.io/pipeline"] == "Churn-Model"
    assert cronjob["metadata"]["name"] == "churn-model" and configmap["metadata"]["name"] == "churn-model-pipeline"

    spec = cronjob["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == ("0 3 * * *", "Etc/UTC", "Forbid")
    assert "startingDeadlineSeconds" not in spec  # run-once: the controller starts the latest missed slot
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert spec["jobTemplate"]["metadata"]["labels"]["jmk.io/schedule"] == "churn-model"
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/runner:1"
    assert container["command"] == ["python", "-m", "jupyter_mlflow_k8s.cli", "pipeline", "run",
                                    "/var/run/jmk/pipeline/pipeline.yaml", "-p", "rows=20"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"secretRef": {"name": "mlflow"}} in container["envFrom"]
    assert {"name": "JMK_STATE_DIR", "value": "/var/run/jmk/state"} in container["env"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["pipeline"] == {"name": "pipeline", "mountPath": "/var/run/jmk/pipeline", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "pipeline")["configMap"]
    assert volume["name"] == "churn-model-pipeline"
    items = {item["path"]: item["key"] for item in volume["items"]}
    assert set(items) == {"pipeline.yaml", "prepare.ipynb", "models/train.ipynb"}
    assert items["models/train.ipynb"] == "models_2ftrain.ipynb"
    assert set(configmap["data"]) == set(items.values())
    assert configmap["data"]["pipeline.yaml"] == churn.read_text()
    prepared = json.loads(configmap["data"]["prepare.ipynb"])
    assert prepared["cells"][1]["outputs"] == [] and "output('n', rows)" in "".join(prepared["cells"][1]["source"])
    assert len(configmap["data"]["prepare.ipynb"]) < len((churn.parent / "prepare.ipynb").read_text()) / 2

    skip = build_cronjob(churn, pipeline, "@hourly", namespace="team", image="runner:1", missed="skip", overlap=True)
    validate_manifest(skip)
    assert skip["spec"]["startingDeadlineSeconds"] == 300 and skip["spec"]["concurrencyPolicy"] == "Allow"
    default = build_cronjob(churn, pipeline, "@daily", namespace="team", image="runner:1")
    limits = default["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"memory": "4Gi", "nvidia.com/gpu": "1"}  # the steps' most, without settings


def test_cronjob_refusals(churn: Path, tmp_path: Path) -> None:
    pipeline = load_pipeline(churn)
    with pytest.raises(JMKUsageError, match="more than 52"):
        build_cronjob(churn, pipeline, "@daily", namespace="team", image="runner:1", name="x" * 53)
    with pytest.raises(JMKUsageError, match="invalid value 'Churn'"):
        build_cronjob(churn, pipeline, "@daily", namespace="team", image="runner:1", name="Churn")
    with pytest.raises(CronError, match="day of week field '8'"):
        build_cronjob(churn, pipeline, "0 3 * * 8", namespace="team", image="runner:1")

    notebook(churn.parent / "models" / "train.ipynb", "n = 0", "x = '" + "a" * 1_100_000 + "'")
    with pytest.raises(JMKUsageError, match="Bake the pipeline and its notebooks into the runner image"):
        build_schedule_manifests(churn, load_pipeline(churn), "@daily", namespace="team", image="runner:1")

    outside = tmp_path / "elsewhere"
    notebook(outside / "shared.ipynb", "", "print(1)")
    (churn.parent / "p2.yaml").write_text("name: p2\nsteps:\n  s: {notebook: ../elsewhere/shared.ipynb}\n")
    with pytest.raises(JMKUsageError, match="outside the pipeline's folder"):
        build_schedule_manifests(churn.parent / "p2.yaml", load_pipeline(churn.parent / "p2.yaml"), "@daily",
                                 namespace="team", image="runner:1")


def test_cli_kubernetes_print(state_dir: Path, churn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["pipeline", "schedule", str(churn), "--cron", "*/30 1-5 * * MON-FRI", "-p", "rows=7", "--kubernetes",
            "--namespace", "ml", "--image", "registry.example.com/runner:2", "--print", "--missed", "skip"]
    assert jmk(args) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in documents] == ["ConfigMap", "CronJob"]
    for document in documents:
        validate_manifest(document)
    cronjob = documents[1]
    assert cronjob["metadata"]["namespace"] == "ml" and cronjob["spec"]["schedule"] == "*/30 1-5 * * MON-FRI"
    assert cronjob["spec"]["startingDeadlineSeconds"] == 300
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["-p", "rows=7"] and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert list_schedules() == []  # nothing embedded

    assert jmk([*args[:4], "0 3 * * 9", *args[5:]]) == 2
    assert "day of week field '9'" in capsys.readouterr().err


class FakeCluster:
    """The few calls apply/delete make, against a dict; ``has_cronjobs=False`` is a cluster before 1.21."""

    def __init__(self, has_cronjobs: bool = True) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, object]] = {}
        self.has_cronjobs = has_cronjobs

    def api(self, kind: str) -> object:
        cluster = self

        class Response:
            def __init__(self, obj: object) -> None:
                self.data = json.dumps(obj).encode()

        def missing(status: int, reason: str) -> Exception:
            import kubernetes

            return kubernetes.client.ApiException(status=status, reason=reason)

        class Api:
            def create(self, namespace: str, body: dict[str, object], **_: object) -> Response:
                if kind == "CronJob" and not cluster.has_cronjobs:
                    raise missing(404, "Not Found")
                key = (kind, namespace, body["metadata"]["name"])  # type: ignore[index]
                if key in cluster.objects:
                    raise missing(409, "Conflict")
                cluster.objects[key] = body
                return Response(body)

            def read(self, name: str, namespace: str, **_: object) -> Response:
                if (kind, namespace, name) not in cluster.objects:
                    raise missing(404, "Not Found")
                return Response(cluster.objects[(kind, namespace, name)])

            def replace(self, name: str, namespace: str, body: dict[str, object], **_: object) -> Response:
                cluster.objects[(kind, namespace, name)] = body
                return Response(body)

            def delete(self, name: str, namespace: str, **_: object) -> Response:
                if (kind, namespace, name) not in cluster.objects:
                    raise missing(404, "Not Found")
                return Response(cluster.objects.pop((kind, namespace, name)))

        return Api()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import kubernetes

        from jupyter_mlflow_k8s.pipelines import schedule

        def batch(_: object) -> object:
            api = self.api("CronJob")
            return type("Batch", (), {f"{verb}_namespaced_cron_job": staticmethod(getattr(api, verb))
                                      for verb in ("create", "read", "replace", "delete")})()

        def core(_: object) -> object:
            api = self.api("ConfigMap")
            return type("Core", (), {f"{verb}_namespaced_config_map": staticmethod(getattr(api, verb))
                                     for verb in ("create", "read", "replace", "delete")})()

        monkeypatch.setattr(schedule.cluster, "_api_client", lambda: object())
        monkeypatch.setattr(kubernetes.client, "BatchV1Api", batch)
        monkeypatch.setattr(kubernetes.client, "CoreV1Api", core)


def test_apply_and_delete_on_a_cluster(state_dir: Path, churn: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from jupyter_mlflow_k8s.exceptions import JMKError
    from jupyter_mlflow_k8s.pipelines.schedule import apply_schedule_manifests, delete_schedule_manifests

    cluster = FakeCluster()
    cluster.install(monkeypatch)
    args = ["pipeline", "schedule", str(churn), "--cron", "0 3 * * *", "--kubernetes", "--namespace", "ml",
            "--image", "runner:1"]
    assert jmk(args) == 0
    out = capsys.readouterr().out
    assert "created ConfigMap ml/churn-model-pipeline" in out and "created CronJob ml/churn-model" in out
    assert set(cluster.objects) == {("ConfigMap", "ml", "churn-model-pipeline"), ("CronJob", "ml", "churn-model")}
    assert jmk([*args, "--allow-overlap"]) == 0
    assert "replaced CronJob ml/churn-model" in capsys.readouterr().out
    assert cluster.objects[("CronJob", "ml", "churn-model")]["spec"]["concurrencyPolicy"] == "Allow"  # type: ignore[index]

    cluster.objects[("CronJob", "ml", "churn-model")]["metadata"] = {"name": "churn-model", "labels": {}}
    manifests = build_schedule_manifests(churn, load_pipeline(churn), "@daily", namespace="ml", image="runner:1")
    with pytest.raises(JMKUsageError, match="did not make"):
        apply_schedule_manifests(manifests)
    with pytest.raises(JMKUsageError, match="was not made by jupyter-mlflow-k8s"):
        delete_schedule_manifests("churn-model", "ml")
    del cluster.objects[("CronJob", "ml", "churn-model")]

    assert jmk(["pipeline", "unschedule", "churn-model", "--kubernetes", "--namespace", "ml"]) == 0
    assert "deleted ConfigMap ml/churn-model-pipeline" in capsys.readouterr().out and cluster.objects == {}
    assert jmk(["pipeline", "unschedule", "churn-model", "--kubernetes", "--namespace", "ml"]) == 2
    assert "No scheduled pipeline 'churn-model'" in capsys.readouterr().err

    old = FakeCluster(has_cronjobs=False)
    old.install(monkeypatch)
    with pytest.raises(JMKError, match="no batch/v1 CronJob"):
        apply_schedule_manifests(manifests)


# -- the CronJob's pod is shaped like a job's, in the jobs' namespace ------------------------


def test_a_cronjob_pod_has_the_backends_tolerations_pull_secrets_and_service_account(
        state_dir: Path, churn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from traitlets.config import Config

    from jupyter_mlflow_k8s.pipelines.schedule_cli import _schedule_on_kubernetes

    dedicated = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    config = Config({"KubernetesBackend": {
        "namespace": "team-gpu", "tolerations": [dedicated], "image_pull_secrets": ["regcred"],
        "service_account_name": "trainer", "node_selector": {"gpu": "a100"}, "secrets": ["wandb"]}})
    args = argparse.Namespace(pipeline=str(churn), cron="0 3 * * *", namespace=None, image="runner:1", name=None,
                              missed="run-once", allow_overlap=False, print=True)
    assert _schedule_on_kubernetes(args, {}, config) == 0
    cronjob = list(yaml.safe_load_all(capsys.readouterr().out))[1]
    validate_manifest(cronjob)
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cronjob["metadata"]["namespace"] == "team-gpu"
    assert pod["tolerations"] == [dedicated, {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "trainer" and pod["nodeSelector"] == {"gpu": "a100"}
    assert {"secretRef": {"name": "wandb"}} in pod["containers"][0]["envFrom"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the steps' most, still


def test_jmk_schedule_reads_the_backend_settings_from_the_jupyter_config(
        state_dir: Path, churn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Before: `jmk` built the CronJob's pod without the user's traitlets config, so these were ignored.
    dedicated = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    config_dir = tmp_path / "jupyter"
    config_dir.mkdir()
    (config_dir / "jupyter_mlflow_k8s_config.py").write_text(
        f"c.KubernetesBackend.namespace = 'team-gpu'\nc.KubernetesBackend.tolerations = [{dedicated!r}]\n"
        "c.KubernetesBackend.image_pull_secrets = ['regcred']\nc.KubernetesBackend.service_account_name = 'trainer'\n")
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config_dir))
    assert jmk(["pipeline", "schedule", str(churn), "--cron", "0 3 * * *", "--kubernetes", "--image", "runner:1",
                "--print"]) == 0
    cronjob = list(yaml.safe_load_all(capsys.readouterr().out))[1]
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cronjob["metadata"]["namespace"] == "team-gpu"
    assert pod["tolerations"][0] == dedicated
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "trainer"


def test_inside_a_pod_a_cronjob_lands_in_the_pods_namespace(
        state_dir: Path, churn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from jupyter_mlflow_k8s.k8s import namespace as namespace_module
    from jupyter_mlflow_k8s.pipelines.schedule import kube_namespace

    account = tmp_path / "serviceaccount" / "namespace"
    account.parent.mkdir()
    account.write_text("team-pod\n")
    monkeypatch.setattr(namespace_module, "SERVICE_ACCOUNT_NAMESPACE", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # in a pod, with its service account only
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("JMK_K8S_NAMESPACE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kube_namespace() == "team-pod"
    assert kube_namespace("ml") == "ml"
    assert jmk(["pipeline", "schedule", str(churn), "--cron", "@daily", "--kubernetes", "--image", "runner:1",
                "--print"]) == 0
    configmap, cronjob = yaml.safe_load_all(capsys.readouterr().out)
    assert configmap["metadata"]["namespace"] == cronjob["metadata"]["namespace"] == "team-pod"


@pytest.mark.k8s
def test_a_schedule_on_the_cluster_is_applied_replaced_and_removed_only_when_ours(
        state_dir: Path, churn: Path, k8s_cluster: Any, k8s_api: Any, k8s_namespace: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes

    from jupyter_mlflow_k8s.errors import ConflictError
    from jupyter_mlflow_k8s.pipelines.schedule import apply_schedule_manifests, delete_schedule_manifests

    resources = kubernetes.client.BatchV1Api(k8s_api).get_api_resources().resources
    if "cronjobs" not in {resource.name for resource in resources}:
        pytest.skip("this cluster's API server serves no batch/v1 CronJob (the test control plane runs without it)")
    monkeypatch.setenv("KUBECONFIG", str(k8s_cluster.kubeconfig))
    manifests = build_schedule_manifests(churn, load_pipeline(churn), "0 3 * * *", namespace=k8s_namespace,
                                         image="runner:1")
    assert apply_schedule_manifests(manifests) == [f"created ConfigMap {k8s_namespace}/churn-model-pipeline",
                                                   f"created CronJob {k8s_namespace}/churn-model"]
    assert apply_schedule_manifests(manifests)[1] == f"replaced CronJob {k8s_namespace}/churn-model"
    batch = kubernetes.client.BatchV1Api(k8s_api)
    assert batch.read_namespaced_cron_job("churn-model", k8s_namespace).spec.time_zone == "Etc/UTC"

    foreign = build_schedule_manifests(churn, load_pipeline(churn), "@daily", namespace=k8s_namespace,
                                       image="runner:1", name="theirs")[1]
    foreign["metadata"]["labels"] = {"app": "someone-elses"}
    batch.create_namespaced_cron_job(k8s_namespace, foreign)
    theirs = build_schedule_manifests(churn, load_pipeline(churn), "@daily", namespace=k8s_namespace,
                                      image="runner:1", name="theirs")
    with pytest.raises(ConflictError, match=f"CronJob {k8s_namespace}/theirs exists and is not managed by"):
        apply_schedule_manifests(theirs)
    with pytest.raises(ConflictError, match="was not made by jupyter-mlflow-k8s"):
        delete_schedule_manifests("theirs", k8s_namespace)
    assert batch.read_namespaced_cron_job("theirs", k8s_namespace).spec.schedule == "@daily"
    core = kubernetes.client.CoreV1Api(k8s_api)
    assert "theirs-pipeline" not in [c.metadata.name for c in core.list_namespaced_config_map(k8s_namespace).items]

    assert delete_schedule_manifests("churn-model", k8s_namespace) == [
        f"deleted CronJob {k8s_namespace}/churn-model", f"deleted ConfigMap {k8s_namespace}/churn-model-pipeline"]
