"""``%%train --register``: log the job's model with the right MLflow flavor and register it.

Runs inside the job (the runner), after the cell succeeded, where the model object lives.
A ``torch.nn.Module`` is logged with ``mlflow.pytorch``, a scikit-learn estimator with
``mlflow.sklearn``, anything else with a ``predict`` method as a pyfunc wrapper. The input
example (``--input-example VAR``) gives the signature and a feature summary that is stored
with the version as the drift baseline for serving.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ..exceptions import JMKUsageError
from .baseline import feature_summary

WHAT_WORKS = "a torch.nn.Module, a scikit-learn estimator, or any object with a predict(data) method"


class RegistrationError(JMKUsageError):
    """The job ran, but its model could not be logged or registered."""


def flavor_of(value: Any) -> str | None:
    """``pytorch``, ``sklearn``, ``pyfunc`` or None, without importing torch or sklearn."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.nn.Module):
        return "pytorch"
    base = sys.modules.get("sklearn.base")
    if base is not None and isinstance(value, base.BaseEstimator) and hasattr(value, "predict"):
        return "sklearn"
    if callable(getattr(value, "predict", None)) and not isinstance(value, type):
        return "pyfunc"
    return None


def pick_model(namespace: Mapping[str, Any], assigned: list[str], name: str, model_var: str | None) -> tuple[str, Any]:
    """The variable holding the model: ``--model VAR``, or the one model the cell assigned."""
    if model_var:
        value = namespace[model_var]
        if flavor_of(value) is None:
            kind = type(value).__module__ + "." + type(value).__qualname__
            raise RegistrationError(
                f"--register {name}: {model_var} is a {kind}, which cannot be logged as a model. "
                f"Use {WHAT_WORKS}."
            )
        return model_var, value
    models = [n for n in assigned if n in namespace and flavor_of(namespace[n]) is not None]
    if len(models) == 1:
        return models[0], namespace[models[0]]
    if not models:
        returned = ", ".join(n for n in assigned if n in namespace) or "nothing"
        raise RegistrationError(
            f"--register {name}: the cell assigned no model (it assigned: {returned}). "
            f"Assign {WHAT_WORKS} to a variable, or name it with --model VAR."
        )
    raise RegistrationError(
        f"--register {name}: the cell assigned several models ({', '.join(models)}). Pick one with --model VAR."
    )


class _PredictModel:
    """pyfunc wrapper for objects that only have ``predict``. Defined here so it imports anywhere."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        return self.model.predict(model_input)


def _own_types(model: Any) -> list[str] | None:
    """The types in ``model`` that skops does not trust by default (None if there are none, or no skops)."""
    try:
        import skops.io
    except ImportError:
        return None
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return list(untrusted) or None


def _as_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _signature(flavor: str, model: Any, example: Any) -> Any:
    """Signature inferred from the example and the model's output on it."""
    from mlflow.models import infer_signature

    if flavor == "pytorch":
        import torch

        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        tensor = example if isinstance(example, torch.Tensor) else torch.as_tensor(example)
        with torch.no_grad():
            output = model(tensor.to(device))
        return infer_signature(_as_numpy(tensor), _as_numpy(output))
    return infer_signature(example, model.predict(example))


def register(name: str, model_var: str, model: Any, example: Any, run_id: str) -> dict[str, Any]:
    """Log ``model`` in the active run and register it as a new version of ``name``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    flavor = flavor_of(model)
    signature = _signature(str(flavor), model, example) if example is not None else None
    # The flavors' default requirements name the exact torch/scikit-learn versions; MLflow's
    # own inference would load the model again in a subprocess (seconds) to find the same.
    if flavor == "pytorch":
        requirements = mlflow.pytorch.get_default_pip_requirements()
        # Pickled (cloudpickle), not MLflow 3's default traced "pt2": a class defined in the
        # notebook travels by value, and no example input is needed to save the model.
        info = mlflow.pytorch.log_model(
            model, name="model", signature=signature, pip_requirements=requirements, serialization_format="pickle"
        )
    elif flavor == "sklearn":
        requirements = mlflow.sklearn.get_default_pip_requirements()
        # MLflow saves scikit-learn models with skops, which refuses types it does not know (a tree's
        # sklearn.tree._tree.Tree): the user's own model's types are trusted, and MLflow records them for loading.
        info = mlflow.sklearn.log_model(model, name="model", signature=signature, pip_requirements=requirements,
                                        skops_trusted_types=_own_types(model))
    else:
        wrapper = type("PredictModel", (_PredictModel, mlflow.pyfunc.PythonModel), {})
        info = mlflow.pyfunc.log_model(name="model", python_model=wrapper(model), signature=signature)
    version = mlflow.register_model(info.model_uri, name, tags={"jmk.flavor": str(flavor), "jmk.variable": model_var})
    client = MlflowClient()
    baseline_uri = None
    if example is not None:
        mlflow.log_dict(feature_summary(example), "jmk/baseline.json", run_id=run_id)
        baseline_uri = f"runs:/{run_id}/jmk/baseline.json"
        client.set_model_version_tag(name, version.version, "jmk.baseline", baseline_uri)
    return {
        "name": name,
        "version": str(version.version),
        "model_uri": info.model_uri,
        "flavor": flavor,
        "variable": model_var,
        "baseline_uri": baseline_uri,
    }
