"""The error model: translate() per dependency, the families' statuses, and each front door's one rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore.exceptions
import kubernetes.client
import kubernetes.config
import pytest
import requests
import urllib3
from IPython.core.error import UsageError
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)

from jupyter_mlflow_k8s import cli
from jupyter_mlflow_k8s.errors import (
    ConflictError,
    JMKError,
    JMKUsageError,
    NotFoundError,
    UnavailableError,
    translate,
)
from jupyter_mlflow_k8s.exceptions import JobFailed, JobNotFound
from jupyter_mlflow_k8s.jobs import JobService
from jupyter_mlflow_k8s.magics.common import user_errors

FORBIDDEN = json.dumps({"kind": "Status", "message": 'jobs.batch is forbidden: User "jane" cannot list jobs'})


def api_error(status: int, reason: str = "", body: str | None = None) -> kubernetes.client.ApiException:
    error = kubernetes.client.ApiException(status=status, reason=reason)
    error.body = body
    return error


def unreachable() -> urllib3.exceptions.MaxRetryError:
    pool = urllib3.HTTPConnectionPool("127.0.0.1", 9)
    cause = urllib3.exceptions.NewConnectionError(pool, "Failed to establish a new connection: [Errno 111] refused")
    return urllib3.exceptions.MaxRetryError(pool, "/api/v1/namespaces", cause)


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": f"{code} says no"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "ListObjectsV2")


# -- the families ----------------------------------------------------------------------------


def test_each_family_carries_its_http_and_exit_status() -> None:
    assert (JMKError.http_status, JMKError.exit_status) == (500, 1)
    assert (JMKUsageError.http_status, JMKUsageError.exit_status) == (400, 2)
    assert (NotFoundError.http_status, NotFoundError.exit_status) == (404, 2)
    assert (ConflictError.http_status, ConflictError.exit_status) == (409, 2)
    assert (UnavailableError.http_status, UnavailableError.exit_status) == (503, 3)
    assert JobNotFound("x").http_status == 404 and isinstance(JobNotFound("x"), LookupError)


def test_ours_translate_to_themselves_and_a_bug_to_nothing() -> None:
    ours = ConflictError("taken")
    assert translate(ours) is ours
    for bug in (LookupError("x"), KeyError("x"), ValueError("x"), TypeError("x"), RuntimeError("x")):
        assert translate(bug) is None, bug


# -- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "family"), [(401, UnavailableError), (403, UnavailableError),
                                                (404, NotFoundError), (409, ConflictError), (422, JMKUsageError),
                                                (500, UnavailableError), (503, UnavailableError)])
def test_kubernetes_api_errors_by_status(status: int, family: type[JMKError]) -> None:
    error = translate(api_error(status, "Reason"))
    assert type(error) is family
    assert f"The Kubernetes API answered {status} Reason" in str(error)


def test_kubernetes_forbidden_quotes_the_api_and_says_what_to_do() -> None:
    error = translate(api_error(403, "Forbidden", FORBIDDEN))
    assert isinstance(error, UnavailableError) and "\n" not in str(error)
    assert 'User "jane" cannot list jobs' in str(error) and "docs/kubernetes.md#rbac" in str(error)


def test_kubernetes_without_an_answer_or_a_kubeconfig() -> None:
    assert "did not answer" in str(translate(api_error(0, "connection reset")))
    missing = translate(kubernetes.config.ConfigException("Invalid kube-config file. No configuration found."))
    assert isinstance(missing, UnavailableError) and "KUBECONFIG" in str(missing)
    down = translate(unreachable())
    assert isinstance(down, UnavailableError)
    assert "http://127.0.0.1:9 did not answer" in str(down) and "refused" in str(down)


# -- MLflow ----------------------------------------------------------------------------------


def test_mlflow_errors_by_code() -> None:
    assert isinstance(translate(MlflowException("no model m", RESOURCE_DOES_NOT_EXIST)), NotFoundError)
    assert isinstance(translate(MlflowException("m exists", RESOURCE_ALREADY_EXISTS)), ConflictError)
    assert type(translate(MlflowException("bad value", INVALID_PARAMETER_VALUE))) is JMKUsageError
    down = translate(MlflowException("boom", INTERNAL_ERROR))
    assert isinstance(down, UnavailableError) and "MLFLOW_TRACKING_URI" in str(down)


# -- storage and the network -----------------------------------------------------------------


def test_storage_errors() -> None:
    assert isinstance(translate(client_error("NoSuchBucket", 404)), NotFoundError)
    denied = translate(client_error("AccessDenied", 403))
    assert isinstance(denied, UnavailableError) and "AWS_ACCESS_KEY_ID" in str(denied)
    assert type(translate(client_error("InvalidArgument", 400))) is JMKUsageError
    assert isinstance(translate(client_error("InternalError", 500)), UnavailableError)
    endpoint = translate(botocore.exceptions.EndpointConnectionError(endpoint_url="http://minio:9000"))
    assert isinstance(endpoint, UnavailableError) and "minio:9000" in str(endpoint)
    missing = translate(FileNotFoundError(2, "No such file or directory", "s3://b/jmk/blobs/x"))
    assert isinstance(missing, NotFoundError) and "s3://b/jmk/blobs/x does not exist" in str(missing)
    assert isinstance(translate(PermissionError(13, "Permission denied", "/data")), UnavailableError)


def test_network_errors() -> None:
    for error in (ConnectionRefusedError(111, "refused"), TimeoutError("slow"),
                  requests.ConnectionError("no route"), requests.Timeout("slow")):
        assert isinstance(translate(error), UnavailableError), error


# -- the front doors -------------------------------------------------------------------------


def test_a_raw_kubernetes_error_through_jmk_is_one_line_and_the_familys_status(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def forbidden(self: Any) -> Any:
        raise api_error(403, "Forbidden", FORBIDDEN)

    monkeypatch.setattr(JobService, "list", forbidden)
    assert cli.main(["jobs"]) == UnavailableError.exit_status
    err = capsys.readouterr().err
    assert err.startswith("jmk: The Kubernetes API answered 403 Forbidden") and err.count("\n") == 1
    assert "Traceback" not in err

    def down(self: Any) -> Any:
        raise unreachable()

    monkeypatch.setattr(JobService, "list", down)
    assert cli.main(["jobs"]) == 3
    assert capsys.readouterr().err.startswith("jmk: http://127.0.0.1:9 did not answer")


def test_jmk_with_an_unreachable_cluster_says_so_without_a_traceback(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
    }))
    env = {"KUBECONFIG": str(kubeconfig), "JMK_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "jupyter_mlflow_k8s.cli", "pipeline", "unschedule", "nightly",
                           "--kubernetes", "--namespace", "ml"], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(Path(cli.__file__).parent.parent)})
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("jmk: http://127.0.0.1:9 did not answer") and "Traceback" not in done.stderr


def test_jmk_leaves_a_bug_its_traceback(monkeypatch: pytest.MonkeyPatch, state_dir: Path) -> None:
    def bug(self: Any) -> Any:
        raise LookupError("a bug")

    monkeypatch.setattr(JobService, "list", bug)
    with pytest.raises(LookupError):
        cli.main(["jobs"])


def test_the_magics_rule() -> None:
    def raising(error: BaseException) -> Any:
        @user_errors
        def magic() -> None:
            raise error

        return magic

    with pytest.raises(UsageError, match="The Kubernetes API answered 403"):
        raising(api_error(403, "Forbidden"))()
    with pytest.raises(UsageError, match="is down"):
        raising(UnavailableError("MLflow is down"))()
    with pytest.raises(UsageError, match="No job 'x'"):
        raising(JobNotFound("x"))()
    with pytest.raises(JobFailed):  # the job's own traceback is in its message: it stays itself
        raising(JobFailed("abc", "boom"))()
    with pytest.raises(KeyError):  # a bug keeps its traceback
        raising(KeyError("x"))()
