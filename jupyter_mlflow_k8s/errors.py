"""The error model: a few families, each carrying what every front door needs to report it.

A front door (a magic, ``jmk``, a REST handler) never decides how to show an error by its class
name: it reads ``http_status`` and ``exit_status`` from the family. Errors from MLflow, Kubernetes or
storage are turned into one of these at the boundary (``translate``), with a message that says what
to do. This module is a leaf: it imports nothing from the package and no third-party module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


class JMKError(Exception):
    """Root of every error this package raises on purpose: something failed that the user cannot fix by retyping.

    ``http_status`` is what the REST API answers, ``exit_status`` what ``jmk`` exits with.
    """

    http_status = 500
    exit_status = 1


class JMKUsageError(JMKError, ValueError):
    """Bad input from the user: a flag, a value, a cell. Its message says what to type instead."""

    http_status = 400
    exit_status = 2


class NotFoundError(JMKUsageError, LookupError):
    """A named thing (job, endpoint, run, model, schedule) does not exist; the message says how to list them.

    Exits 2 like every usage error: ``jmk logs NOPE`` has always exited 2, and scripts rely on it.
    """

    http_status = 404


class ConflictError(JMKUsageError):
    """The request clashes with what exists (a name taken, an object we do not own, a state that forbids it)."""

    http_status = 409


class UnavailableError(JMKError):
    """A dependency (MLflow, the Kubernetes API, storage, an endpoint) is down or refused; retrying may help."""

    http_status = 503
    exit_status = 3


FAMILIES: tuple[type[JMKError], ...] = (NotFoundError, ConflictError, JMKUsageError, UnavailableError, JMKError)


def _api_message(body: object) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the body itself (short)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body.strip():
        return ""
    try:
        status = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    return str(status.get("message", "")) if isinstance(status, dict) else ""


def _kubernetes_error(exc: BaseException) -> JMKError | None:
    rest = sys.modules.get("kubernetes.client.exceptions")
    if rest is not None and isinstance(exc, rest.ApiException):
        status = int(getattr(exc, "status", 0) or 0)
        reason = getattr(exc, "reason", "") or type(exc).__name__
        said = _api_message(getattr(exc, "body", None))
        if not status:
            return UnavailableError(f"The Kubernetes API did not answer ({reason}). Check the cluster "
                                    "(kubectl get --raw /readyz) and your kubeconfig, then try again.")
        detail = f"The Kubernetes API answered {status} {reason}" + (f": {said}" if said else "")
        if status in (401, 403):
            return UnavailableError(f"{detail}. The service account (or the kubeconfig's user) lacks a right; "
                                    "docs/kubernetes.md#rbac lists the Role it needs.")
        if status == 404:
            return NotFoundError(f"{detail}. The object or its namespace does not exist.")
        if status == 409:
            return ConflictError(f"{detail}. The object exists or changed meanwhile; look at it with kubectl "
                                 "and try again.")
        if 400 <= status < 500:
            return JMKUsageError(f"{detail}.")
        return UnavailableError(f"{detail}. Check the cluster (kubectl get --raw /readyz) and try again.")
    config = sys.modules.get("kubernetes.config.config_exception")
    if config is not None and isinstance(exc, config.ConfigException):
        return UnavailableError(f"No Kubernetes cluster is configured ({exc}). Set KUBECONFIG, or run inside a "
                                "pod with a service account.")
    return None


def _mlflow_error(exc: BaseException) -> JMKError | None:
    module = sys.modules.get("mlflow.exceptions")
    if module is None or not isinstance(exc, module.MlflowException):
        return None
    status = exc.get_http_status_code()
    message = getattr(exc, "message", str(exc))
    if status == 404:
        return NotFoundError(f"MLflow: {message}")
    if getattr(exc, "error_code", "") == "RESOURCE_ALREADY_EXISTS":
        return ConflictError(f"MLflow: {message}")
    if 400 <= status < 500:
        return JMKUsageError(f"MLflow: {message}")
    return UnavailableError(f"MLflow is unavailable: {message}. Check the tracking URI "
                            "(c.JMKSettings.tracking_uri or MLFLOW_TRACKING_URI) and that the server runs.")


_STORAGE_CREDENTIALS = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                        "ExpiredToken", "InvalidToken", "403"}
_STORAGE_MISSING = {"NoSuchBucket", "NoSuchKey", "404"}
_STORAGE_HINT = "Check the AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) or " \
                "c.JMKSettings.storage_options."


def _storage_error(exc: BaseException) -> JMKError | None:
    """Botocore's errors (s3fs passes some through), then the ``OSError`` kinds fsspec raises."""
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None and isinstance(exc, botocore.ClientError):
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        message = str(response.get("Error", {}).get("Message", "")) or str(exc)
        if code in _STORAGE_MISSING:
            return NotFoundError(f"Storage: {message} ({code}). Check the bucket and the storage URL "
                                 "(JMK_STORAGE_URL or c.JMKSettings.storage_url).")
        if code in _STORAGE_CREDENTIALS:
            return UnavailableError(f"Storage refused the credentials ({code}: {message}). {_STORAGE_HINT}")
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if 400 <= status < 500:
            return JMKUsageError(f"Storage: {message} ({code}).")
        return UnavailableError(f"Storage is unavailable ({code or type(exc).__name__}: {message}). "
                                "Try again; if it lasts, check the S3 endpoint.")
    if botocore is not None and isinstance(exc, botocore.BotoCoreError):
        return UnavailableError(f"Storage cannot be reached ({type(exc).__name__}: {exc}). {_STORAGE_HINT}")
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"{exc.filename or exc} does not exist.")
    if isinstance(exc, PermissionError):
        return UnavailableError(f"Permission denied: {exc.filename or exc}. Check the file's permissions or "
                                "the storage credentials.")
    return None


def _network_error(exc: BaseException) -> JMKError | None:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return UnavailableError(f"A service did not answer ({type(exc).__name__}: {exc}). "
                                "Check that it runs and try again.")
    urllib3 = sys.modules.get("urllib3.exceptions")
    if urllib3 is not None and isinstance(exc, urllib3.HTTPError):
        pool: Any = getattr(exc, "pool", None)
        where = f"{pool.scheme}://{pool.host}:{pool.port}" if getattr(pool, "host", None) else "A server"
        reason = str(getattr(exc, "reason", None) or exc)
        reason = reason.rsplit("): ", 1)[-1]  # the cause, without urllib3's repeat of the connection
        return UnavailableError(f"{where} did not answer ({type(exc).__name__}: {reason}). Check that it runs "
                                "(for the Kubernetes API: the cluster, and the kubeconfig KUBECONFIG names) "
                                "and try again.")
    requests = sys.modules.get("requests.exceptions")
    if requests is not None and isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return UnavailableError(f"A server did not answer ({type(exc).__name__}: {exc}). Check that it runs "
                                "and try again.")
    return None


# Dependencies' own errors first: requests' errors are OSErrors, which the storage rules would also take.
TRANSLATORS: list[Callable[[BaseException], JMKError | None]] = [
    _kubernetes_error, _mlflow_error, _network_error, _storage_error,
]


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
            found.__cause__ = exc
            return found
    return None
