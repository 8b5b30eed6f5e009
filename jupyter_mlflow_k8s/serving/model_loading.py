"""Loading the model a server answers with: the registry lookup, the pyfunc model, its signature.

A ``models:/`` URI is resolved to one version through the tracking facade
(:mod:`jupyter_mlflow_k8s.tracking.model_registry`); the model itself is loaded with
``mlflow.pyfunc.load_model``. What the signature allows (named scalar columns, or one batched
tensor) decides which requests :mod:`.batching` may check and join. No HTTP here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from ..errors import JMKError, NotFoundError, UnavailableError
from ..exceptions import JMKUsageError
from ..tracking import model_registry
from ..tracking.refs import ModelRef

NUMERIC = {"double": (int, float), "float": (int, float), "long": (int,), "integer": (int,)}
SCALAR_TYPES = {**NUMERIC, "string": (str,), "boolean": (bool,)}


#: The server's exit code when the tracking server did not answer: trying again later may work (unlike 2).
EXIT_UNAVAILABLE = 4


class ServerStartupError(JMKUsageError):
    """The server process cannot start: an unknown model, a port in use, bad settings (``exit_code``: its status)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- the model -------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedModel:
    """A loaded pyfunc model and what the server needs to know about it."""

    uri: str
    name: str
    version: str
    role: str  # primary, canary or shadow
    pyfunc: Any
    input_schema: Any
    columns: tuple[str, ...] | None  # the signature's columns when every one is a named scalar
    types: dict[str, str]
    baseline: dict[str, Any] | None
    tensor: tuple[Any, tuple[int, ...]] | None = None  # (numpy dtype, shape) of a one-tensor signature
    direct: Any = None  # the flavor's own predict, for inputs this module has already checked and typed


def _resolve(uri: str) -> tuple[str, str, str | None, str]:
    """``(name, version, baseline uri, URI to load)`` of a model URI; registry URIs are looked up (clear errors).

    A ``models:/`` URI is resolved through the tracking facade to one concrete version, and that
    version is what gets loaded, so the version the server reports is the one it answers with even
    if the alias moves meanwhile.
    """
    try:
        ref = ModelRef.maybe(uri)
    except JMKError as exc:
        raise ServerStartupError(f"{uri}: {exc}") from exc
    if ref is None:
        return uri.rstrip("/").rsplit("/", 1)[-1] or uri, "", None, uri
    where = os.environ.get("MLFLOW_TRACKING_URI", "the default tracking URI")
    try:
        found = model_registry.resolve(ref)
    except NotFoundError as exc:
        try:
            known = model_registry.describe(None, ref.name)
        except JMKError:
            known = ""
        said = f" {ref.name} has {known}." if known else ""
        raise ServerStartupError(f"{uri}: no such model version in the registry at {where}.{said} "
                           "Check the name, the version or alias, and MLFLOW_TRACKING_URI.") from exc
    except UnavailableError as exc:  # the tracking server does not answer: a later try may work
        raise ServerStartupError(f"{uri}: {exc}", exit_code=EXIT_UNAVAILABLE) from exc
    except JMKError as exc:  # the tracking server refused
        raise ServerStartupError(f"{uri}: {exc}") from exc
    version = str(found.version)
    return ref.name, version, (found.tags or {}).get("jmk.baseline"), ref.pinned(version).uri


def load(uri: str, role: str = "primary") -> LoadedModel:
    """Load ``uri`` with MLflow (and its drift baseline, if registered with one)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, version, baseline_uri, source = _resolve(uri)
    try:
        model = mlflow.pyfunc.load_model(source)
    except Exception as exc:  # missing or damaged artifacts, or the flavor's own loader failing: all the user's to fix
        raise ServerStartupError(_load_failure(uri, exc)) from exc
    baseline = None
    if baseline_uri:
        try:
            baseline = json.loads(mlflow.artifacts.load_text(baseline_uri))
        except (MlflowException, OSError, ValueError) as exc:
            print(f"jmk-serve: {uri}: no drift baseline ({exc}); drift is not computed", flush=True)
    schema = model.metadata.get_input_schema()
    columns, types = _columns(schema)
    return LoadedModel(uri, name, version, role, model, schema, columns, types, baseline, _tensor(schema),
                       _direct(model))


def _load_failure(uri: str, exc: Exception) -> str:
    """Why ``uri`` did not load, and what to do: the error's first line with its type when it is not MLflow's."""
    lines = str(exc).strip().splitlines()
    said = lines[0] if lines else "no message"
    if not isinstance(exc, OSError) and type(exc).__module__.split(".")[0] != "mlflow":
        said = f"{type(exc).__name__}: {said}"
    return (f"{uri}: the model could not be loaded ({said}). Its artifacts may be missing or damaged, or its "
            "loader fails in this environment: check that mlflow.pyfunc.load_model loads it here, and register a "
            "version that does.")


# Flavors whose predict is a plain function of the (already schema-typed) input. For them a checked
# batch skips pyfunc's per-call wrapper (schema enforcement again, context, signature inspection:
# about half of a one-row call), with the same result.
DIRECT_FLAVORS = ("mlflow.sklearn", "mlflow.pytorch")


def _direct(model: Any) -> Any:
    metadata = model.metadata
    if getattr(model, "loader_module", None) not in DIRECT_FLAVORS or metadata.get_params_schema() is not None:
        return None
    if getattr(metadata, "metadata", None) and metadata.metadata.get("dependencies_schemas"):
        return None
    return getattr(model, "_predict_fn", None)


def _tensor(schema: Any) -> tuple[Any, tuple[int, ...]] | None:
    """``(dtype, shape)`` of a signature that is one unnamed tensor batched on its first dimension."""
    if schema is None or not schema.is_tensor_spec() or len(schema.inputs) != 1 or schema.has_input_names():
        return None
    spec = schema.inputs[0]
    shape = tuple(int(d) for d in spec.shape)
    return (spec.type, shape) if shape and shape[0] == -1 else None


def _columns(schema: Any) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """The signature's column names and scalar types, or None when requests cannot be checked here."""
    if schema is None or not getattr(schema, "has_input_names", lambda: False)() or schema.is_tensor_spec():
        return None, {}
    types: dict[str, str] = {}
    for spec in schema.inputs:
        kind = getattr(getattr(spec, "type", None), "name", None)
        if kind not in SCALAR_TYPES or getattr(spec, "optional", False) or not getattr(spec, "required", True):
            return None, {}
        types[spec.name] = kind
    return tuple(types), types
