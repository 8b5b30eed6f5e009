"""Registered models to serve, in the session's real MLflow store (a pytest plugin: see conftest)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


@dataclass(frozen=True)
class Served:
    """A registered scikit-learn model: its name, versions, and the data it was trained on."""

    name: str
    versions: tuple[str, ...]
    frame: Any  # the training DataFrame (float64 columns FEATURES)
    models: tuple[Any, ...]  # the fitted estimators, one per version

    def uri(self, version: str | None = None) -> str:
        return f"models:/{self.name}/{version or self.versions[-1]}"


def _register(name: str, model: Any, frame: Any) -> str:
    import mlflow

    from jupyter_mlflow_k8s.tracking.registry import register

    with mlflow.start_run() as run:
        info = register(name, "model", model, frame, run.info.run_id)
    return str(info["version"])


def make_served(name: str, tracking_uri: str) -> Served:
    """Two versions of an iris-like classifier (v2 ignores the sepal features), alias ``prod`` -> v1."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("serving-tests")
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(loc=[5.8, 3.0, 3.8, 1.2], scale=[0.8, 0.4, 1.7, 0.7], size=(300, 4)),
                         columns=list(FEATURES))
    labels = (frame["petal_length"] > 3.8).astype(int) + (frame["petal_width"] > 1.8).astype(int)
    first = LogisticRegression(max_iter=500).fit(frame, labels)
    second = LogisticRegression(C=0.05, max_iter=500).fit(frame[["petal_length", "petal_width"]].assign(
        sepal_length=0.0, sepal_width=0.0)[list(FEATURES)], labels)  # another model: it ignores the sepals
    versions = (_register(name, first, frame), _register(name, second, frame))
    MlflowClient().set_registered_model_alias(name, "prod", versions[0])
    return Served(name, versions, frame, (first, second))


@pytest.fixture(scope="session")
def served_model(mlflow_uri: str) -> Iterator[Served]:
    """``iris-serving``: versions 1 and 2, ``@prod`` on 1, each with a signature and a drift baseline."""
    yield make_served("iris-serving", mlflow_uri)


@pytest.fixture(scope="session")
def served_tensor_model(mlflow_uri: str, served_model: Served) -> Served:
    """``iris-tensor``: version 1 trained on a float32 array, so its signature is one tensor (-1, 4)."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(mlflow_uri)
    array = served_model.frame.to_numpy(dtype="float32")
    labels = (array[:, 2] > 3.8).astype(int)
    model = LogisticRegression(max_iter=500).fit(array, labels)
    return Served("iris-tensor", (_register("iris-tensor", model, array),), served_model.frame, (model,))


def make_broken(name: str, tracking_uri: str, served: Served, damage: str = "corrupt") -> str:
    """A version of model ``name`` that the registry has but that cannot load; its ``models:/`` URI.

    ``served``'s first model is saved, then its serialized estimator is overwritten with junk (``corrupt``) or deleted
    (``missing``) before the files are logged and registered: what a half-copied or damaged artifact store holds.
    """
    import tempfile
    from pathlib import Path

    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("serving-tests")
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(folder) / "model"
        mlflow.sklearn.save_model(served.models[0], str(model_dir), pip_requirements=[])  # no inference: seconds
        [weights] = [path for path in model_dir.iterdir() if path.stem == "model"]  # model.skops or model.pkl
        if damage == "corrupt":
            weights.write_bytes(b"not a model: the upload was cut off here")
        else:
            weights.unlink()
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(model_dir), "model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
    return f"models:/{name}/{version.version}"


ROOT = Path(__file__).resolve().parents[1]


def entry_points_folder(folder: Path) -> Path:
    """``folder`` holding a ``*.dist-info`` with this checkout's ``mlflow.deployments`` entry points (pyproject.toml).

    On ``PYTHONPATH`` it makes MLflow find the plugin whether or not the package was installed again
    since the entry point was declared (an editable install of another checkout, say).
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"]["mlflow.deployments"]
    info = folder / "jmk_checkout_plugins-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jmk-checkout-plugins\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[mlflow.deployments]\n" + "".join(f"{name} = {value}\n" for name, value in declared.items()))
    return folder


@dataclass(frozen=True)
class MlflowCli:
    """The real ``mlflow`` command line of this environment, seeing this checkout and its plugin.

    Each call takes this process's environment as it is then (the state directory, the tracking URI,
    a kubeconfig that fixtures set), with the plugin's entry points and this checkout first on ``PYTHONPATH``.
    """

    plugins: Path

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(self.plugins), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "PYTHONPATH": path}

    def argv(self, *args: str) -> list[str]:
        from servers import BIN

        return [str(BIN / "mlflow"), *args]

    def __call__(self, *args: str, ok: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run ``mlflow ARGS``; with ``ok``, a non-zero exit fails the test with what it printed."""
        result = subprocess.run(self.argv(*args), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if ok and result.returncode != 0:
            raise AssertionError(f"mlflow {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n"
                                 f"{result.stderr[-4000:]}")
        return result


@pytest.fixture
def mlflow_cli(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowCli]:
    """``mlflow`` as a subprocess on the test's state directory; local endpoints it left running are stopped."""
    from jupyter_mlflow_k8s.serving.manager import ServingManager

    yield MlflowCli(entry_points_folder(tmp_path_factory.mktemp("mlflow-plugins")))
    manager = ServingManager()
    for endpoint in manager.list():
        if endpoint.running:
            manager.stop(endpoint.name)
