"""The error model: a few families, each carrying what every front door needs to report it.

A front door (a magic, ``jmk``, a REST handler) never decides how to show an error by its class
name: it reads ``http_status`` and ``exit_status`` from the family. Errors from MLflow, Kubernetes or
storage are turned into one of these at the boundary (``translate``), with a message that says what
to do. This module is a leaf: it imports nothing from the package and no third-party module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class JMKError(Exception):
    """Root of every error this package raises on purpose.

    ``http_status`` is what the REST API answers, ``exit_status`` what ``jmk`` exits with.
    """

    http_status = 500
    exit_status = 1


class JMKUsageError(JMKError, ValueError):
    """Bad input from the user: a flag, a value, a cell. Its message says what to type instead."""

    http_status = 400
    exit_status = 2


class NotFoundError(JMKUsageError, LookupError):
    """A named thing (job, endpoint, run, model, schedule) does not exist; the message says how to list them."""

    http_status = 404
    exit_status = 3


class ConflictError(JMKUsageError):
    """The request clashes with what exists (a name taken, an object we do not own, a state that forbids it)."""

    http_status = 409
    exit_status = 4


class UnavailableError(JMKError):
    """A dependency (MLflow, the Kubernetes API, storage, an endpoint) is down or refused; retrying may help."""

    http_status = 503
    exit_status = 5


def _kubernetes_error(exc: BaseException) -> JMKError | None:
    rest = sys.modules.get("kubernetes.client.exceptions")
    if rest is None or not isinstance(exc, rest.ApiException):
        return None
    status = int(getattr(exc, "status", 0) or 0)
    reason = getattr(exc, "reason", "") or type(exc).__name__
    detail = f"the Kubernetes API answered {status} {reason}".strip()
    if status in (401, 403):
        return UnavailableError(f"{detail}: the service account lacks a right; "
                                "docs/kubernetes.md lists the Role it needs.")
    if status == 404:
        return NotFoundError(f"{detail}: the object or namespace does not exist.")
    if status == 409:
        return ConflictError(f"{detail}: the object exists or changed meanwhile; try again.")
    if 400 <= status < 500:
        return JMKUsageError(f"{detail}: {getattr(exc, 'body', '') or 'the request was refused'}.")
    return UnavailableError(f"{detail or 'the Kubernetes API is unreachable'}; check the cluster "
                            "(kubectl get --raw /readyz) and try again.")


def _mlflow_error(exc: BaseException) -> JMKError | None:
    module = sys.modules.get("mlflow.exceptions")
    if module is None or not isinstance(exc, module.MlflowException):
        return None
    status = exc.get_http_status_code()
    message = getattr(exc, "message", str(exc))
    if status == 404:
        return NotFoundError(f"MLflow: {message}")
    if 400 <= status < 500:
        return JMKUsageError(f"MLflow: {message}")
    return UnavailableError(f"MLflow is unavailable: {message}. Check the tracking URI "
                            "(c.JMKSettings.tracking_uri or MLFLOW_TRACKING_URI) and that the server runs.")


def _network_error(exc: BaseException) -> JMKError | None:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return UnavailableError(f"a service did not answer ({type(exc).__name__}: {exc}); "
                                "check that it runs and try again.")
    urllib3 = sys.modules.get("urllib3.exceptions")
    if urllib3 is not None and isinstance(exc, urllib3.HTTPError):
        return UnavailableError(f"the Kubernetes API is unreachable ({exc}); check the cluster and your kubeconfig.")
    return None


TRANSLATORS: list[Callable[[BaseException], JMKError | None]] = [_kubernetes_error, _mlflow_error, _network_error]


def translate(exc: BaseException) -> JMKError | None:
    """The family error for ``exc``.

    Itself when it is ours, a translation for a known dependency's error, ``None`` for anything
    else (a bug, which should surface with its traceback).
    """
    if isinstance(exc, JMKError):
        return exc
    for translator in TRANSLATORS:
        found = translator(exc)
        if found is not None:
            return found
    return None
