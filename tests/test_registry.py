"""``%%train --register``: real jobs log and register models in a real MLflow store."""

from __future__ import annotations

import json
import socket
from typing import Any

import mlflow
import numpy as np
import pytest
from IPython.core.error import UsageError
from mlflow.tracking import MlflowClient

from jupyter_mlflow_k8s.jobs import RegistrationFailed
from jupyter_mlflow_k8s.magics.common import service_for

pytestmark = pytest.mark.slow


def _version(shell: Any, name: str) -> Any:
    (record,) = service_for(shell).list()
    client = MlflowClient(record.tracking_uri)
    (version,) = client.search_model_versions(f"name='{name}'")
    return record, client, version


def _load(record: Any, uri: str) -> Any:
    mlflow.set_tracking_uri(record.tracking_uri)
    return mlflow.pyfunc.load_model(uri)


@pytest.fixture
def data(shell: Any) -> Any:
    shell.run_cell(
        "import numpy as np\nrng = np.random.default_rng(0)\n"
        "X = rng.random((64, 3)).astype('float32')\ny = X @ np.array([1.0, -2.0, 0.5], dtype='float32')"
    )
    return shell.user_ns


def test_sklearn_model_registers_with_signature_and_baseline(shell: Any, data: Any, tmp_path: Any) -> None:
    cell = "from sklearn.linear_model import Ridge\nreg = Ridge(alpha=0.1).fit(X, y)\nscore = reg.score(X, y)"
    shell.run_cell_magic("train", "--register ridge-test --input-example X", cell)
    record, _, version = _version(shell, "ridge-test")
    assert version.run_id == record.run_id and version.tags["jmk.flavor"] == "sklearn"
    loaded = _load(record, "models:/ridge-test/1")
    np.testing.assert_allclose(loaded.predict(data["X"]), data["reg"].predict(data["X"]), rtol=1e-6)
    assert loaded.metadata.get_input_schema() is not None
    baseline = json.loads(mlflow.artifacts.load_text(version.tags["jmk.baseline"]))
    assert set(baseline["features"]) == {"0", "1", "2"}
    feature = baseline["features"]["1"]
    assert feature["count"] == 64 and abs(feature["mean"] - float(data["X"][:, 1].mean())) < 1e-6
    assert abs(sum(feature["bin_fractions"]) - 1) < 1e-9


def test_tree_models_register_and_load(shell: Any, data: Any) -> None:
    """Trees hold types skops does not trust by default; the model's own types are trusted when it is logged."""
    cell = ("from sklearn.ensemble import GradientBoostingRegressor\n"
            "gbr = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(X, y)")
    shell.run_cell_magic("train", "--register gbr-test --input-example X", cell)
    record, _, version = _version(shell, "gbr-test")
    assert version.tags["jmk.flavor"] == "sklearn"
    loaded = _load(record, "models:/gbr-test/1")
    np.testing.assert_allclose(loaded.predict(data["X"]), data["gbr"].predict(data["X"]), rtol=1e-6)


def test_torch_module_registers_and_predicts_the_same(shell: Any, data: Any) -> None:
    shell.run_cell(
        "import torch\nclass Tiny(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.lin = torch.nn.Linear(3, 1)\n    def forward(self, x):\n        return self.lin(x)\n"
        "example = torch.from_numpy(X[:8])"
    )
    cell = "torch.manual_seed(0)\nnet = Tiny()\nwith torch.no_grad():\n    net.lin.weight.fill_(0.5)"
    shell.run_cell_magic("train", "--register tiny-net --input-example example", cell)
    record, _, version = _version(shell, "tiny-net")
    assert version.tags["jmk.flavor"] == "pytorch" and version.tags["jmk.variable"] == "net"
    loaded = _load(record, "models:/tiny-net/1")
    import torch

    expected = shell.user_ns["net"](torch.from_numpy(data["X"])).detach().numpy()
    np.testing.assert_allclose(np.asarray(loaded.predict(data["X"])).reshape(-1), expected.reshape(-1), rtol=1e-5)


def test_object_with_predict_registers_as_pyfunc(shell: Any, data: Any) -> None:
    shell.run_cell("class Doubler:\n    def predict(self, rows):\n        return np.asarray(rows).sum(axis=1) * 2")
    shell.run_cell_magic("train", "--register doubler --model model --input-example X", "model = Doubler()\nother = 1")
    record, _, version = _version(shell, "doubler")
    assert version.tags["jmk.flavor"] == "pyfunc"
    loaded = _load(record, "models:/doubler/1")
    np.testing.assert_allclose(np.asarray(loaded.predict(data["X"])).reshape(-1), data["X"].sum(axis=1) * 2, rtol=1e-5)


def test_model_of_no_known_flavor_names_its_type_and_keeps_results(shell: Any, data: Any) -> None:
    with pytest.raises(RegistrationFailed) as info:
        shell.run_cell_magic("train", "--register nothing-here --model weights", "weights = [1.0, 2.0]")
    message = str(info.value)
    assert "weights is a builtins.list" in message and "torch.nn.Module, a scikit-learn estimator" in message
    assert shell.user_ns["weights"] == [1.0, 2.0]  # the job's results are not lost
    (record,) = service_for(shell).list()
    assert record.state.value == "failed" and "could not be registered" in record.message
    assert MlflowClient(record.tracking_uri).get_run(record.run_id).info.status == "FAILED"


def test_register_without_a_model_says_what_the_cell_returned(shell: Any, data: Any) -> None:
    with pytest.raises(RegistrationFailed, match=r"assigned no model \(it assigned: total, mean\)"):
        shell.run_cell_magic("train", "--register nope", "total = float(X.sum())\nmean = total / X.size")
    assert "mean" in shell.user_ns


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--register 'bad name!'", "is not a usable model name"),
        ("--register ok --model missing", "--model missing: the cell never assigns missing"),
        ("--register ok --input-example nowhere", "--input-example nowhere: no such variable"),
        ("--model reg", "--model only makes sense with --register NAME"),
    ],
)
def test_register_flags_are_checked_before_submission(shell: Any, data: Any, line: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("train", line, "reg = 1")
    assert message in str(info.value)
    assert service_for(shell).list() == []


def test_unreachable_tracking_server_fails_before_submission(shell: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    shell.__dict__.pop("_jmk_service", None)
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("train", "", "x = 1")
    assert f"The MLflow tracking server at {uri} does not answer" in str(info.value)
    assert service_for(shell).list() == []
