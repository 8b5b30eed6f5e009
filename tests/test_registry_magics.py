"""``%models`` and ``%model alias|load`` on a real MLflow SQLite store with registered scikit-learn models."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from IPython.core.error import UsageError
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.magics.registry import ModelTable, variable_name
from jupyter_mlflow_k8s.tracking.refs import ModelRef, check_alias, parse_model_uri

# --- parsing, no MLflow ------------------------------------------------------------------------


def test_parse_model_uri_accepts_alias_and_version_forms() -> None:
    assert parse_model_uri("models:/iris@champion") == ModelRef("iris", alias="champion")
    assert parse_model_uri("models:/iris/3") == ModelRef("iris", version="3")
    assert parse_model_uri("models:/iris/latest") == ModelRef("iris", version="latest")
    assert parse_model_uri("models:/a@b@c").name == "a@b"
    for bad in ("runs:/abc/model", "iris@champion", "models:/iris", "models:/iris/x", "models:/iris/1/2", "models:/@a"):
        with pytest.raises(ValueError, match=r"Write models:/NAME@ALIAS or models:/NAME/VERSION"):
            parse_model_uri(bad)


def test_alias_rules_and_variable_names() -> None:
    check_alias("champion")
    check_alias("staging-2")
    for bad in ("", "has space", "a.b", "x" * 256):
        with pytest.raises(ValueError, match="letters, digits, _ and - only"):
            check_alias(bad)
    for reserved in ("latest", "Latest", "v3", "V12"):
        with pytest.raises(ValueError, match="reserved"):
            check_alias(reserved)
    assert variable_name("iris-clf") == "iris_clf"
    assert variable_name("2x") == "model_2x"
    assert variable_name("class") == "class_"
    assert variable_name("team/model.v2") == "team_model_v2"


# --- on a real store (registering models: slow) ------------------------------------------------

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def registered(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A model registered twice (versions 1 and 2, different coefficients), with the data to check them."""
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LinearRegression

    X = np.arange(20, dtype=float).reshape(10, 2)
    models = [
        LinearRegression().fit(X, X @ np.array([1.0, 2.0]) + 3),
        LinearRegression().fit(X, X @ np.array([-1.0, 0.5])),
    ]
    name = f"reg-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment(
        name, artifact_location=(tmp_path_factory.mktemp("registry") / "artifacts").as_uri()
    )
    run_ids = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        for model in models:
            with mlflow.start_run(experiment_id=experiment_id) as run:
                info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
            mlflow.register_model(info.model_uri, name)
            run_ids.append(run.info.run_id)
    yield {"name": name, "X": X, "models": models, "run_ids": run_ids, "client": client}


@slow
def test_models_lists_versions_and_aliases(shell: Any, registered: dict[str, Any]) -> None:
    name, client = registered["name"], registered["client"]
    client.set_registered_model_alias(name, "baseline", "1")
    client.set_registered_model_alias(name, "first", "1")
    table = shell.run_line_magic("models", name)
    assert isinstance(table, ModelTable)
    assert [row[:4] for row in table.rows] == [
        (name, "2", "", registered["run_ids"][1]),
        (name, "1", "baseline, first", registered["run_ids"][0]),
    ]
    lines = repr(table).splitlines()
    assert lines[0].split() == ["model", "version", "aliases", "run", "id", "created"]
    assert lines[2].split()[:4] == [name, "1", "baseline,", "first"]
    everything = shell.run_line_magic("models", "")
    assert [row[:3] for row in everything.rows if row[0] == name] == [(name, "2", ""), (name, "1", "baseline, first")]
    assert "<td>baseline, first</td>" in everything._repr_html_()


@slow
def test_alias_then_load_predicts_like_the_original(
    shell: Any, registered: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    name, X, (first, second) = registered["name"], registered["X"], registered["models"]
    shell.run_line_magic("model", f"alias {name} 2 champion")
    assert f"models:/{name}@champion → version 2" in capsys.readouterr().out
    shell.run_line_magic("model", f"alias {name} 1 champion")
    assert f"models:/{name}@champion → version 1 (was version 2)" in capsys.readouterr().out

    loaded = shell.run_line_magic("model", f"load models:/{name}@champion")
    var = name.replace("-", "_")
    assert shell.user_ns[var] is loaded
    np.testing.assert_allclose(loaded.predict(X), first.predict(X))
    assert (
        f"loaded models:/{name}@champion (version 1, run {registered['run_ids'][0]}) into {var}"
        in capsys.readouterr().out
    )

    shell.run_line_magic("model", f"load models:/{name}/2 --as newest")
    np.testing.assert_allclose(shell.user_ns["newest"].predict(X), second.predict(X))
    shell.run_line_magic("model", f"load models:/{name}/latest --as=also_newest")
    np.testing.assert_allclose(shell.user_ns["also_newest"].predict(X), second.predict(X))


@slow
def test_model_errors_say_what_exists(shell: Any, registered: dict[str, Any]) -> None:
    name = registered["name"]
    cases = {
        "": r"Usage:\n  %model alias NAME VERSION ALIAS",
        "promote x 1 y": r"Usage:",
        "alias nosuchmodel 1 champion": rf"No registered model 'nosuchmodel'\. Registered models: .*{name}",
        f"alias {name} 9 champion": rf"Model '{name}' has no version 9\. Versions: 1, 2\.",
        f"alias {name} one champion": r"VERSION is a number",
        f"alias {name} 1": r"%model alias takes NAME VERSION ALIAS",
        f"alias {name} 1 'has space'": r"letters, digits, _ and - only",
        f"alias {name} 1 latest": r"reserved by MLflow",
        f"load runs:/{registered['run_ids'][0]}/model": r"Write models:/NAME@ALIAS or models:/NAME/VERSION",
        f"load models:/{name}": r"Write models:/NAME@ALIAS or models:/NAME/VERSION",
        "load": r"needs a model URI",
        f"load models:/{name}@nosuchalias": rf"Model '{name}' has no alias 'nosuchalias'\. Aliases: .*%model alias {name} VERSION nosuchalias",
        f"load models:/{name}/7": rf"Model '{name}' has no version 7\. Versions: 1, 2\.",
        "load models:/nosuchmodel/1": r"No registered model 'nosuchmodel'",
        f"load models:/{name}/1 --as 2bad": r"--as '2bad' is not a Python variable name",
        f"load models:/{name}/1 --bogus": r"does not take '--bogus'",
    }
    for line, pattern in cases.items():
        with pytest.raises(UsageError, match=pattern):
            shell.run_line_magic("model", line)
    with pytest.raises(UsageError, match=r"No registered model 'nosuchmodel'"):
        shell.run_line_magic("models", "nosuchmodel")


@slow
def test_models_when_none_match(shell: Any, registered: dict[str, Any], tmp_path: Path) -> None:
    name = f"empty-{uuid.uuid4().hex[:8]}"
    registered["client"].create_registered_model(name)
    table = shell.run_line_magic("models", name)
    assert table.rows == [(name, "", "", "", table.rows[0][4])]
    assert name in repr(table)


@slow
def test_load_uses_the_configured_tracking_uri_not_mlflows_global_one(
    shell: Any, registered: dict[str, Any], mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from traitlets.config import Config

    name = registered["name"]
    monkeypatch.setitem(shell.config, "JMKSettings", Config({"tracking_uri": mlflow_uri}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "elsewhere").as_uri())
    shell.__dict__.pop("_jmk_service", None)
    model = shell.run_line_magic("model", f"load models:/{name}/1 --as configured")
    np.testing.assert_allclose(model.predict(registered["X"]), registered["models"][0].predict(registered["X"]))
    assert not (tmp_path / "elsewhere").exists()
