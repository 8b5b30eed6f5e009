"""The one place that makes MLflow clients and turns MLflow's errors into the package's families.

Owns the client cache (one client per tracking URI: opening a SQLite store costs a second) and
:func:`mlflow_errors`, which every facade function wraps its MLflow calls in, so that a missing
run or model is a :class:`~jupyter_mlflow_k8s.errors.NotFoundError`, a refused request a usage
error and a tracking server that does not answer an
:class:`~jupyter_mlflow_k8s.errors.UnavailableError`, each saying what to do. MLflow is imported
lazily; nothing here imports the rest of the package but ``errors``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import JMKError, JMKUsageError, NotFoundError, UnavailableError
from .bounds import bound_requests

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()
_import_lock = threading.Lock()
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def import_mlflow() -> None:
    """Import MLflow once, one thread at a time; cheap once it is imported.

    Two threads importing MLflow for the first time at once (the sidebar's runs table and a job's
    resource use, a completion's registry read and the next cell) can each get the other's
    half-initialised modules ("partially initialized module 'mlflow'"), and a failed import stays
    broken for the life of the process. Every client is made after this; code that imports
    MLflow itself off the main thread calls it first.
    """
    import sys

    module = sys.modules.get("mlflow")
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        return
    with _import_lock:
        import mlflow  # noqa: F401


def resolved_uri(tracking_uri: str | None) -> str:
    """``tracking_uri``, or MLflow's own default (``MLFLOW_TRACKING_URI``, else its local store) for ``None``."""
    if tracking_uri:
        return tracking_uri
    import mlflow

    return str(mlflow.get_tracking_uri())


def client(tracking_uri: str | None = None) -> MlflowClient:
    """A cached client for ``tracking_uri`` (MLflow's default for ``None``)."""
    bound_requests()
    import_mlflow()
    uri = resolved_uri(tracking_uri)
    with _clients_lock:  # a status view's thread and the magic may both get here
        if uri not in _clients:
            from mlflow.tracking import MlflowClient

            if uri.startswith("sqlite:///"):
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            made = MlflowClient(tracking_uri=uri)
            # Open the store now (a new SQLite file gets its tables here), not in the first call.
            with mlflow_errors(uri):
                made.search_experiments(max_results=1)
            _clients[uri] = made
        return _clients[uri]


def is_not_found(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow saying that the thing asked for does not exist."""
    return getattr(exc, "error_code", "") in NOT_FOUND_CODES


def translated(exc: BaseException, tracking_uri: str | None = None) -> JMKError | None:
    """The family error for an MLflow (or network) error, worded for a user; ``None`` for anything else."""
    from ..errors import translate

    if isinstance(exc, JMKError):
        return exc
    family = translate(exc)
    if family is None:
        return None
    where = f"the MLflow tracking server at {tracking_uri}" if tracking_uri else "the MLflow tracking store"
    if isinstance(family, UnavailableError):
        detail = str(getattr(exc, "message", "") or exc).splitlines()[0][:300]
        return UnavailableError(
            f"{where[0].upper()}{where[1:]} did not answer ({detail}). Check that it runs and that "
            "MLFLOW_TRACKING_URI (c.JMKSettings.tracking_uri) points at it, then try again."
        )
    if isinstance(family, NotFoundError):
        return NotFoundError(str(getattr(exc, "message", "") or exc))
    if type(family) is JMKUsageError:
        return JMKUsageError(str(getattr(exc, "message", "") or exc))
    return family


@contextlib.contextmanager
def mlflow_errors(tracking_uri: str | None = None) -> Iterator[None]:
    """Re-raise MLflow's and the network's errors as the package's families (bugs pass through)."""
    try:
        yield
    except JMKError:
        raise
    except Exception as exc:
        family = translated(exc, tracking_uri)
        if family is None:
            raise
        raise family from exc


def pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged MLflow search (``search_experiments``, ``search_registered_models``, ...)."""
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return
