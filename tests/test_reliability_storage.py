"""The job storage's S3 endpoint goes down while a job writes its results (issue 16): nothing is lost.

Each test has its own moto server on a fixed port (no authentication, so that a server started
again on that port takes the same credentials) and stops it for real in the middle of a job: the
cell waits for a file the test creates after the server is gone, so the outage falls exactly on
the writing of the results. A moto server keeps its buckets in memory: the one started again
gets the job's bucket created anew, as a real endpoint coming back would still have it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from IPython.core.error import UsageError
from servers import AWS_VARIABLES, BIN, REGION, ServerProcess, _clean_env, _http_ok, free_port

from jupyter_mlflow_k8s.jobs import ResultsKeptWarning
from jupyter_mlflow_k8s.logchannel import MARK, FrameCollector
from jupyter_mlflow_k8s.magics.common import service_for
from jupyter_mlflow_k8s.models import JobState
from jupyter_mlflow_k8s.payload import Payload, load_value, stage_inputs, write_payload
from jupyter_mlflow_k8s.storage import LocalStorage, get_storage
from jupyter_mlflow_k8s.storage.kept import KEEP_DIR_ENV, KEPT_FOLDER, RETRY_SECONDS_ENV

pytestmark = pytest.mark.slow

# The cell: says it runs, waits for the test to take S3 down, then makes what it returns.
CELL = """\
import pathlib, time
pathlib.Path({started!r}).touch()
while not pathlib.Path({go!r}).exists():
    time.sleep(0.02)
squares = [i * i for i in range(n)]
sum(squares)
"""


class S3Endpoint:
    """A moto S3 server on one port, which a test stops and starts again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.starts = folder, free_port(), 0
        self.url = f"http://127.0.0.1:{self.port}"
        self.bucket = f"jmk-outage-{uuid.uuid4().hex[:10]}"
        self.server: ServerProcess | None = None

    def start(self) -> None:
        """Start moto on the port and create the bucket."""
        self.starts += 1
        argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.server = ServerProcess("moto_server", argv, self.folder / f"moto-{self.starts}.log", env=_clean_env())
        self.server.wait_ready(lambda: _http_ok(f"{self.url}/moto-api/data.json"), 30)
        self.client().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        """Take the endpoint down: every request is refused until :meth:`start`."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id="jmk", aws_secret_access_key="jmk",
                            region_name=REGION)

    def objects(self) -> list[str]:
        """Every object in the bucket, listed with boto3 (not through the code under test)."""
        return [o["Key"] for o in self.client().list_objects_v2(Bucket=self.bucket).get("Contents", [])]


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Endpoint]:
    """A running endpoint of this test's own; the AWS variables of this process (and its jobs) point at it."""
    endpoint = S3Endpoint(tmp_path)
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    variables = {"AWS_ACCESS_KEY_ID": "jmk", "AWS_SECRET_ACCESS_KEY": "jmk", "AWS_DEFAULT_REGION": REGION,
                 "AWS_ENDPOINT_URL": endpoint.url, "AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}
    # MLflow caches its S3 client for artifacts by MLFLOW_S3_ENDPOINT_URL, not by the AWS variables, and
    # boto3's default session keeps the credentials it first read: both are reset below, so that this
    # endpoint's credentials do not follow the next test to its own endpoint.
    variables["MLFLOW_S3_ENDPOINT_URL"] = endpoint.url
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    endpoint.start()
    yield endpoint
    endpoint.stop()
    import boto3
    from mlflow.store.artifact.s3_artifact_repo import _cached_get_s3_client

    _cached_get_s3_client.cache_clear()
    boto3.DEFAULT_SESSION = None


def _submit(shell: Any, s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, retry: float) -> Any:
    """``%%train --async`` of :data:`CELL` with S3 storage; returns the handle once the cell runs."""
    monkeypatch.setenv("JMK_STORAGE_URL", f"s3://{s3.bucket}/jmk")
    monkeypatch.setenv(RETRY_SECONDS_ENV, str(retry))
    shell.__dict__.pop("_jmk_service", None)  # the next magic builds its service from these settings
    shell.run_cell("n = 300")
    code = CELL.format(started=str(tmp_path / "started"), go=str(tmp_path / "go"))
    handle = shell.run_cell_magic("train", "--async --experiment s3-outage", code)
    wait_for(lambda: (tmp_path / "started").exists(), timeout=30)
    return handle


def test_s3_down_while_results_are_written_then_back_within_the_bound(
    shell: Any, s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    handle = _submit(shell, s3, monkeypatch, tmp_path, retry=40)
    s3.stop()
    (tmp_path / "go").touch()
    service = service_for(shell)
    wait_for(lambda: "could not write" in service.read_log(handle.job_id), timeout=30)  # it failed, and retries
    s3.start()
    assert handle.result() == sum(i * i for i in range(300))
    assert shell.user_ns["squares"] == [i * i for i in range(300)]
    record = service.get(handle.job_id)
    assert record.state is JobState.SUCCEEDED, record.message
    assert f"jmk/jobs/{record.job_id}/result.json" in s3.objects()  # written to the endpoint once it was back
    assert not (service.store.job_dir(record.job_id) / KEPT_FOLDER).exists()
    assert "retrying for up to" in service.read_log(record.job_id)


def test_s3_down_until_the_bound_passes_keeps_the_results_in_the_job_folder(
    shell: Any, s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handle = _submit(shell, s3, monkeypatch, tmp_path, retry=2)
    s3.stop()  # and never started again
    (tmp_path / "go").touch()
    service = service_for(shell)
    kept = service.store.job_dir(handle.job_id) / KEPT_FOLDER
    with pytest.warns(ResultsKeptWarning, match=f"kept in {kept}"):
        value = handle.result()
    assert value == sum(i * i for i in range(300))
    assert shell.user_ns["squares"] == [i * i for i in range(300)]  # the cell's variables are back
    record = service.get(handle.job_id)
    assert record.state is JobState.FAILED
    assert "job storage was unreachable" in record.message and str(kept) in record.message
    log = service.read_log(record.job_id)
    assert f"the job storage s3://{s3.bucket}/jmk was unreachable for 2 s" in log and f"kept in {kept}" in log
    document = json.loads((kept / "jobs" / record.job_id / "result.json").read_text())
    assert document["ok"] and [e["name"] for e in document["outputs"]] == ["squares"]
    assert "failed" in capsys.readouterr().out  # the cell says how the job ended


def test_s3_down_in_a_pod_sends_the_results_through_the_log(
    s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A pod has no folder the notebook can read: the runner prints its results as log frames."""
    storage = get_storage(f"s3://{s3.bucket}/pod")
    inputs = stage_inputs(storage, {"n": 50})
    job_id = uuid.uuid4().hex[:12]
    code = CELL.format(started=str(tmp_path / "started"), go=str(tmp_path / "go"))
    payload_url = write_payload(storage, Payload(job_id, code, storage.url, inputs, outputs=["squares"]))
    env = {k: v for k, v in os.environ.items() if k != KEEP_DIR_ENV}
    env[RETRY_SECONDS_ENV] = "1"
    runner = subprocess.Popen([sys.executable, "-m", "jupyter_mlflow_k8s.runner", payload_url], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "started").exists() or runner.poll() is not None, timeout=30)
        s3.stop()
        (tmp_path / "go").touch()
        out, err = runner.communicate(timeout=40)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 4, err
    assert "the results are kept in this job's log" in err
    # The notebook side reads the log while S3 is still down: it keeps what the store will not take.
    job_folder = tmp_path / "state" / "jobs" / job_id
    collector = FrameCollector(storage, job_folder / "frames")
    lines = out.split("\n")  # not splitlines(): the frame mark starts with \x1e, a line break to it
    shown = [line for line in lines if not collector.feed(line)]
    assert len(shown) < len(lines) and not any(MARK in line for line in shown)
    kept = LocalStorage(str(job_folder / KEPT_FOLDER))
    document = json.loads(kept.get_bytes(f"jobs/{job_id}/result.json"))
    assert "unreachable" in document["kept"]
    (entry,) = document["outputs"]
    assert load_value(kept, entry) == [i * i for i in range(50)]
    assert load_value(kept, document["display"]) == sum(i * i for i in range(50))


def test_s3_down_at_submit_fails_before_anything_is_submitted(
    shell: Any, s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JMK_STORAGE_URL", f"s3://{s3.bucket}/jmk")
    shell.__dict__.pop("_jmk_service", None)
    s3.stop()
    shell.run_cell("x = 1")
    with pytest.raises(UsageError, match="the endpoint does not answer") as info:
        shell.run_cell_magic("train", "", "y = x + 1")
    assert "Nothing was submitted" in str(info.value) and s3.url in str(info.value)
    assert service_for(shell).list() == []
    assert "y" not in shell.user_ns
