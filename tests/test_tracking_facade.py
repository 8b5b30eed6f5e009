"""The tracking facade on a real SQLite store: the registry, runs, MLflow's errors as families, closing a job's run."""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s import lifecycle, tracking
from jupyter_mlflow_k8s.errors import ConflictError, JMKUsageError, NotFoundError, UnavailableError
from jupyter_mlflow_k8s.models import JobSpec, JobState
from jupyter_mlflow_k8s.records import JobStore
from jupyter_mlflow_k8s.tracking import model_registry
from jupyter_mlflow_k8s.tracking.refs import ModelRef

REPO = Path(__file__).resolve().parent.parent


def _model(mlflow_uri: str, name: str, versions: int = 2, aliases: dict[str, str] | None = None) -> str:
    """A registered model with ``versions`` versions (no files: only the registry is read)."""
    client = MlflowClient(mlflow_uri)
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, "file:///nowhere/model", run_id=None)
    for alias, version in (aliases or {}).items():
        client.set_registered_model_alias(name, alias, version)
    return name


@pytest.fixture
def quoted(mlflow_uri: str) -> str:
    """A model whose name holds a single quote (MLflow allows it; a filter ``name='...'`` breaks on it)."""
    return _model(mlflow_uri, f"o'brien-{uuid.uuid4().hex[:6]}", aliases={"prod": "1"})


# -- the registry ----------------------------------------------------------------------------------


def test_resolves_alias_latest_and_version_of_a_quoted_name(mlflow_uri: str, quoted: str) -> None:
    assert str(model_registry.resolve(ModelRef(quoted, alias="prod"), mlflow_uri).version) == "1"
    assert str(model_registry.resolve(f"models:/{quoted}/latest", mlflow_uri).version) == "2"
    assert str(model_registry.resolve(f"models:/{quoted}/1", mlflow_uri).version) == "1"
    assert [str(v.version) for v in model_registry.model_versions(mlflow_uri, quoted)] == ["2", "1"]
    assert model_registry.describe(mlflow_uri, quoted) == "versions 1, 2 and aliases prod"


def test_resolve_alias_pins_to_the_version_named_now(mlflow_uri: str, quoted: str) -> None:
    assert model_registry.resolve_alias(f"models:/{quoted}@prod", mlflow_uri) == f"models:/{quoted}/1"
    assert model_registry.resolve_alias(f"models:/{quoted}/latest", mlflow_uri) == f"models:/{quoted}/latest"
    assert model_registry.pin(f"models:/{quoted}/latest", mlflow_uri).uri == f"models:/{quoted}/2"
    assert model_registry.resolve_alias(f"models:/{quoted}/2", mlflow_uri) == f"models:/{quoted}/2"
    assert model_registry.resolve_alias("runs:/abc/model", mlflow_uri) == "runs:/abc/model"


def test_a_name_with_both_quotes_still_lists_its_versions(mlflow_uri: str) -> None:
    name = _model(mlflow_uri, f"""it's "odd" {uuid.uuid4().hex[:6]}""", versions=3)
    assert [str(v.version) for v in model_registry.model_versions(mlflow_uri, name)] == ["3", "2", "1"]
    assert str(model_registry.resolve(ModelRef(name, version="latest"), mlflow_uri).version) == "3"


def test_set_and_delete_alias(mlflow_uri: str, quoted: str) -> None:
    assert model_registry.set_alias(mlflow_uri, quoted, "champion", "2") is None
    assert model_registry.set_alias(mlflow_uri, quoted, "champion", "1") == "2"
    assert str(model_registry.version_by_alias(mlflow_uri, quoted, "champion").version) == "1"
    model_registry.delete_alias(mlflow_uri, quoted, "champion")
    with pytest.raises(NotFoundError, match=r"has no alias 'champion'\. Its aliases: prod"):
        model_registry.delete_alias(mlflow_uri, quoted, "champion")


def test_missing_things_are_not_found_errors_that_say_what_exists(mlflow_uri: str, quoted: str) -> None:
    cases = {
        # the session's store holds other tests' models too: ours is named, or the list is cut with its count
        f"models:/nosuch-{uuid.uuid4().hex[:6]}/1": rf"No registered model .*Registered models: .*({quoted}|\(\d+ in all\))",
        f"models:/{quoted}/9": r"has no version 9\. Versions: 1, 2\.",
        f"models:/{quoted}@nope": r"has no alias 'nope'\. Aliases: prod → 1",
    }
    for uri, pattern in cases.items():
        with pytest.raises(NotFoundError, match=pattern) as info:
            model_registry.resolve(uri, mlflow_uri)
        assert info.value.http_status == 404 and isinstance(info.value, LookupError)
    with pytest.raises(JMKUsageError, match="Write models:/NAME@ALIAS"):
        model_registry.resolve("models:/just-a-name", mlflow_uri)


# -- experiments and runs --------------------------------------------------------------------------


def test_runs_through_the_facade(mlflow_uri: str, tmp_path: Path) -> None:
    name = f"facade-{uuid.uuid4().hex[:6]}"
    experiment_id = tracking.ensure_experiment(mlflow_uri, name, tmp_path.as_uri())
    assert tracking.ensure_experiment(mlflow_uri, name, None) == experiment_id
    writer = tracking.RunWriter(mlflow_uri)
    run_id = writer.create_run(experiment_id, run_name="r", start_time=1000, tags={"jmk.step": "a"})
    writer.log_params(run_id, {"lr": 0.1})
    writer.log_metric(run_id, "loss", 0.5)
    writer.terminate(run_id, status="FINISHED", end_time=2000)
    runs, token = tracking.search_runs(mlflow_uri, [experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and token is None
    run = tracking.get_run(mlflow_uri, run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"} and run.data.tags["jmk.step"] == "a"
    assert [m.value for m in tracking.metric_history(mlflow_uri, run_id, "loss")] == [0.5]
    assert tracking.experiment_names(mlflow_uri)[experiment_id] == name
    assert tracking.experiment_by_name(mlflow_uri, name).experiment_id == experiment_id
    assert tracking.experiment_by_id(mlflow_uri, "987654321") is None
    with pytest.raises(NotFoundError, match="No MLflow run"):
        tracking.get_run(mlflow_uri, "0" * 32)
    with pytest.raises(JMKUsageError):  # MLflow's words for a malformed filter, as a usage error (400)
        tracking.search_runs(mlflow_uri, [experiment_id], filter_string="metrics.loss <<< 1")


def test_a_tracking_server_that_does_not_answer_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed
    with pytest.raises(UnavailableError, match=rf"The MLflow tracking server at {uri} did not answer.*MLFLOW_TRACKING_URI"):
        model_registry.registered_models(uri)


def test_the_sidebar_errors_are_the_families() -> None:
    from jupyter_mlflow_k8s.labapp import shapes

    assert shapes.NotFound is NotFoundError and shapes.Conflict is ConflictError


# -- closing a job's run: the lifecycle's duty -----------------------------------------------------


def test_end_job_closes_the_run_once(mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JobStore(tmp_path / "state")
    spec = JobSpec(code="x = 1", experiment=f"facade-{uuid.uuid4().hex[:6]}")
    record = store.create(spec)
    _, run_id = tracking.start_run(mlflow_uri, None, record.job_id, spec)
    store.update(record.job_id, run_id=run_id, tracking_uri=mlflow_uri)
    closed: list[str] = []
    close_run = tracking.close_run
    monkeypatch.setattr(tracking, "close_run", lambda r, *steps: (closed.append(r.job_id), close_run(r, *steps)))

    ended = lifecycle.end_job(store, record.job_id, JobState.FAILED, "boom", exit_code=1)
    assert ended.tracking_final and ended.state is JobState.FAILED and closed == [record.job_id]
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"
    again = lifecycle.end_job(store, record.job_id, JobState.SUCCEEDED, "late")
    assert again.state is JobState.FAILED and again.message == "boom" and closed == [record.job_id]
    assert lifecycle.finalize_tracking(store, store.load(record.job_id)).tracking_final
    assert closed == [record.job_id]


def test_a_process_that_loses_the_claim_waits_and_does_not_close(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = JobStore(tmp_path / "state")
    record = store.create(JobSpec(code="x = 1"))
    record = store.update(record.job_id, state=JobState.CANCELLED, run_id="r", tracking_uri="sqlite:///unused.db")
    assert store.claim(record.job_id, lifecycle.CLOSE_RUN_DUTY)  # another process closes it...
    store.update(record.job_id, tracking_final=True)  # ...and says so
    monkeypatch.setattr(tracking, "close_run", lambda r, *steps: pytest.fail("closed twice"))
    assert lifecycle.finalize_tracking(store, record, wait=False).tracking_final is False  # not waiting: as it was
    store.release(record.job_id, lifecycle.CLOSE_RUN_DUTY)
    assert lifecycle.finalize_tracking(store, record).tracking_final


def test_tracking_imports_neither_the_records_nor_the_lifecycle() -> None:
    code = ("import sys, jupyter_mlflow_k8s.tracking\n"
            "bad = [m for m in ('jupyter_mlflow_k8s.records', 'jupyter_mlflow_k8s.lifecycle', 'mlflow') "
            "if m in sys.modules]\nassert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_only_the_facade_talks_to_mlflow_s_client() -> None:
    """No module outside ``tracking/`` imports ``MlflowClient`` or MLflow's run and registry entities."""
    package = REPO / "jupyter_mlflow_k8s"
    offenders = []
    for path in package.rglob("*.py"):
        if path.is_relative_to(package / "tracking"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("mlflow.tracking", "mlflow.client",
                                                                                    "mlflow.entities")):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.ImportFrom) and node.module == "mlflow" and any(
                    alias.name == "MlflowClient" for alias in node.names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} MlflowClient")
    assert not offenders, offenders
