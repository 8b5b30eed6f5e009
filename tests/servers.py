"""Fixtures that start real servers on 127.0.0.1 (or, for pods, the node's address): ``mlflow server`` and S3.

Each server is a subprocess in its own process group on a free port, started once per session
when a test first asks for it. Readiness is polled with a deadline; a server that exits or does
not answer in time fails the fixture with the tail of its log. Teardown terminates the whole
group, then kills what is left, so no server outlives the session.

- ``s3_server``: moto's server mode, with IAM authentication switched on after one user with
  full rights has been created, so that a wrong secret is refused as real S3 would refuse it.
- ``s3_bucket``: a fresh bucket per test, and the AWS variables of this process pointing at it.
- ``mlflow_server``: ``mlflow server`` on a SQLite store, artifacts in a local folder.
- ``mlflow_server_s3``: ``mlflow server`` that proxies artifacts into a bucket of ``s3_server``;
  the S3 credentials are given to the server process only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
REGION = "us-east-1"
# Every AWS variable a test may set or a developer's shell may carry: servers and tests start clean.
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
)


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold ``~/.cache/jupyter_mlflow_k8s/<name>.lock``: one process installs a cached tool, the others wait for it."""
    from cluster.images import cache_dir

    path = cache_dir() / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another process installing: wait for it, then reuse its tree
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server started in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own group: workers it forks are stopped with it
        )

    def log_tail(self, chars: int = 4000) -> str:
        """The end of what the server printed."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready`` until it is true; fail with the server's log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"{self.name} exited with status {self.process.returncode} before it was ready "
                    f"({' '.join(self.argv)}). Its output:\n{self.log_tail()}"
                )
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s ({' '.join(self.argv)}). Its output:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        """Terminate the process group, then kill what is left of it."""
        pgid = self.process.pid  # the group was created with the process (start_new_session)
        if self.process.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(pgid, signal.SIGKILL)  # workers that ignored SIGTERM, or outlived the leader
        if self.process.poll() is None:
            self.process.wait(timeout=grace)
        self._log.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _http_ok(url: str, method: str = "GET", timeout: float = 1.0) -> bool:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False
    except urllib.error.URLError:
        return False


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARIABLES}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # never probe the instance metadata address
    env.update(extra)
    return env


# ---------------------------------------------------------------------------- S3 (moto)


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the credentials of a user with full rights on it."""

    endpoint_url: str
    key: str
    secret: str
    region: str = REGION

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for this endpoint (``overrides`` replace the credentials)."""
        import boto3

        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.key,
            "aws_secret_access_key": self.secret,
            "region_name": self.region,
        }
        kwargs.update(overrides)
        return boto3.client("s3", **kwargs)

    def environment(self) -> dict[str, str]:
        """The variables that point boto3, s3fs and MLflow at this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }


def start_moto(log_path: Path, timeout: float = 30.0, host: str = "127.0.0.1") -> tuple[ServerProcess, str]:
    """Start ``moto_server`` on a free port of ``host``; returns the process and its endpoint URL."""
    port = free_port(host)
    server = ServerProcess(
        "moto_server", [str(BIN / "moto_server"), "-H", host, "-p", str(port)], log_path, env=_clean_env()
    )
    endpoint = f"http://{host}:{port}"
    server.wait_ready(lambda: _http_ok(f"{endpoint}/moto-api/data.json"), timeout)
    return server, endpoint


def _create_admin(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed everything, created while moto still accepts any request."""
    import boto3

    iam = boto3.client(
        "iam", endpoint_url=endpoint, aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap", region_name=REGION
    )
    iam.create_user(UserName="jmk-tests")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="jmk-tests", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="jmk-tests")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def _require_authentication(endpoint: str) -> None:
    """From now on moto checks every request's signature and the user's policy."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def s3_endpoint(log_path: Path, host: str = "127.0.0.1") -> Iterator[S3Server]:
    """moto on ``host`` with one admin user and authentication required; stopped when the generator ends."""
    server, endpoint = start_moto(log_path, host=host)
    try:
        key, secret = _create_admin(endpoint)
        _require_authentication(endpoint)
        yield S3Server(endpoint, key, secret)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 HTTP endpoint (moto's server mode) on 127.0.0.1 that checks credentials."""
    yield from s3_endpoint(tmp_path_factory.mktemp("moto") / "moto.log")


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A new, empty bucket; this process's AWS variables point at it (undone after the test)."""
    return new_bucket(s3_server, monkeypatch, tmp_path)


def new_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A new, empty bucket on ``s3_server``; this process's AWS variables point at it (through ``monkeypatch``)."""
    bucket = f"jmk-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # A developer's ~/.aws must not leak into tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return bucket


# ---------------------------------------------------------------------------- MLflow


@dataclass(frozen=True)
class MlflowS3Server:
    """An ``mlflow server`` that stores artifacts under ``destination`` in an S3 bucket."""

    url: str
    bucket: str
    prefix: str

    @property
    def destination(self) -> str:
        """The ``--artifacts-destination`` it was given."""
        return f"s3://{self.bucket}/{self.prefix}"


def start_mlflow(
    root: Path, extra_args: list[str], env: dict[str, str], timeout: float = 90.0, host: str = "127.0.0.1",
    port: int | None = None,
) -> tuple[ServerProcess, str]:
    """``mlflow server`` with one worker and no job runner on a SQLite store under ``root``, on ``host``.

    ``port`` starts it again where it was (the same store: a restart).
    """
    port = port or free_port(host)
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        *extra_args,
    ]
    server = ServerProcess("mlflow server", argv, root / "server.log", env=env)
    url = f"http://{host}:{port}"
    server.wait_ready(lambda: _http_ok(f"{url}/health"), timeout)
    return server, url


def _mlflow_env(**extra: str) -> dict[str, str]:
    return _clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **extra)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real ``mlflow server`` (SQLite store, artifacts in a local folder)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    server, url = start_mlflow(root, ["--default-artifact-root", str(root / "artifacts")], _mlflow_env())
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server_s3(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[MlflowS3Server]:
    """A real ``mlflow server`` proxying artifacts into its own bucket on ``s3_server``.

    Clients talk to the server only (``mlflow-artifacts:/``); the S3 credentials and endpoint
    are in the server's environment, not in the tests'.
    """
    yield from mlflow_with_s3_artifacts(tmp_path_factory, s3_server)


def mlflow_with_s3_artifacts(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, host: str = "127.0.0.1"
) -> Iterator[MlflowS3Server]:
    """``mlflow server`` on ``host`` proxying artifacts into a new bucket of ``s3_server``; stopped at the end."""
    bucket = f"jmk-mlflow-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("mlflow-server-s3")
    prefix = "mlartifacts"
    server, url = start_mlflow(
        root,
        ["--serve-artifacts", "--artifacts-destination", f"s3://{bucket}/{prefix}"],
        _mlflow_env(**s3_server.environment()),
        host=host,
    )
    try:
        yield MlflowS3Server(url, bucket, prefix)
    finally:
        server.stop()
