"""S3 storage through s3fs against a real S3 endpoint (moto's server mode, credentials checked).

Unit tests drive :class:`S3Storage` directly; end-to-end tests run ``%%train`` with
``JMK_STORAGE_URL=s3://...`` in the in-process IPython shell, with MLflow artifacts in the same
bucket (embedded SQLite store) or proxied by a real ``mlflow server`` into its own bucket.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import numpy as np
import pytest
from helpers import wait_for
from IPython.core.error import UsageError
from mlflow.tracking import MlflowClient
from servers import S3Server

from jupyter_mlflow_k8s import payload
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.magics.common import service_for
from jupyter_mlflow_k8s.models import JobState
from jupyter_mlflow_k8s.payload import load_value, stage_value
from jupyter_mlflow_k8s.storage import get_storage, read_url
from jupyter_mlflow_k8s.storage.s3 import S3Storage

pytestmark = pytest.mark.slow
MIB = 2**20
SMALL_PARTS = {"default_block_size": 5 * MIB, "max_concurrency": 3}  # S3's smallest part: multipart at 5 MiB


def _keys(s3_server: S3Server, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object under ``prefix`` and its size, listed with boto3 (not through our code)."""
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def _object(s3_server: S3Server, bucket: str, key: str) -> bytes:
    return bytes(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


# ---------------------------------------------------------------------------- the storage itself


def test_scheme_is_registered_and_s3fs_imported_only_when_used(s3_bucket: str) -> None:
    assert isinstance(get_storage(f"s3://{s3_bucket}/jmk"), S3Storage)
    code = "import sys, jupyter_mlflow_k8s.storage as s; assert 's3fs' not in sys.modules and 'fsspec' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_put_get_exists_open(s3_server: S3Server, s3_bucket: str) -> None:
    storage = get_storage(f"s3://{s3_bucket}/jmk")
    assert not storage.exists("a/one")
    storage.put_bytes("a/one", b"first value")
    assert storage.exists("a/one") and storage.get_bytes("a/one") == b"first value"
    with storage.open("a/two", "wb") as handle:
        handle.write(b"second ")
        handle.write(b"value")
    with storage.open("a/two", "rb") as handle:
        assert handle.read(7) == b"second " and handle.read() == b"value" and handle.read() == b""
    storage.put_bytes("a/empty", b"")
    assert storage.get_bytes("a/empty") == b"" and storage.open("a/empty").read() == b""
    assert _keys(s3_server, s3_bucket) == {"jmk/a/one": 11, "jmk/a/two": 12, "jmk/a/empty": 0}
    assert read_url(storage.url_of("a/one")) == b"first value"
    with pytest.raises(FileNotFoundError, match=f"s3://{s3_bucket}/jmk/a/missing"):
        storage.get_bytes("a/missing")
    with pytest.raises(FileNotFoundError):
        storage.open("a/missing").read()


def test_big_values_go_in_parts_and_come_back_whole(s3_server: S3Server, s3_bucket: str) -> None:
    storage = get_storage(f"s3://{s3_bucket}/jmk", **SMALL_PARTS)
    data = os.urandom(17 * MIB + 123)
    storage.put_bytes("big/bytes", data)
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="jmk/big/bytes")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-4"')  # four parts, one object
    assert _object(s3_server, s3_bucket, "jmk/big/bytes") == data
    assert storage.get_bytes("big/bytes") == data
    with storage.open("big/bytes", "rb") as handle:  # small reads, a seek, then one large read
        assert handle.read(10) == data[:10]
        handle.seek(6 * MIB)
        assert handle.read() == data[6 * MIB :]
    single = get_storage(f"s3://{s3_bucket}/jmk", default_block_size=5 * MIB, max_concurrency=1)
    assert single.get_bytes("big/bytes") == data  # one GET, no ranges
    with single.open("big/bytes", "rb") as handle:
        assert handle.read(3) == data[:3] and handle.read() == data[3:]
    with storage.open("big/streamed", "wb") as handle:  # many small writes, as a pickler does
        for start in range(0, len(data), 100_000):
            handle.write(data[start : start + 100_000])
    assert _object(s3_server, s3_bucket, "jmk/big/streamed") == data
    assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_a_failed_write_leaves_no_object(s3_server: S3Server, s3_bucket: str) -> None:
    storage = get_storage(f"s3://{s3_bucket}/jmk", **SMALL_PARTS)
    with pytest.raises(RuntimeError, match="pickling broke"), storage.open("half/written", "wb") as handle:
        handle.write(os.urandom(12 * MIB))  # two parts already uploaded
        raise RuntimeError("pickling broke")
    assert _keys(s3_server, s3_bucket) == {}
    assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


class _CountingStorage:
    """Wraps a storage and counts the writes that reach it."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.writes += 1
        self.storage.put_bytes(key, data)

    def open(self, key: str, mode: str = "rb") -> Any:
        if "w" in mode:
            self.writes += 1
        return self.storage.open(key, mode)


def test_same_value_staged_twice_is_one_object(s3_server: S3Server, s3_bucket: str) -> None:
    storage = _CountingStorage(get_storage(f"s3://{s3_bucket}/jmk"))
    value = {"weights": list(range(1000)), "name": "model"}
    first = stage_value(storage, "a", value)  # type: ignore[arg-type]
    second = stage_value(storage, "b", dict(value))  # type: ignore[arg-type]
    assert first.key == second.key and storage.writes == 1  # exists, so the second upload is skipped
    assert _keys(s3_server, s3_bucket) == {f"jmk/{first.key}": first.size}
    assert load_value(storage, first.__dict__) == value  # type: ignore[arg-type]


def test_large_value_path_lands_in_the_bucket(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payload, "INLINE_LIMIT", 1024)  # hash first, then pickle again into the store
    storage = _CountingStorage(get_storage(f"s3://{s3_bucket}/jmk", **SMALL_PARTS))
    array = np.random.default_rng(0).random(12 * MIB // 8)
    entry = stage_value(storage, "array", array)  # type: ignore[arg-type]
    again = stage_value(storage, "array", array)  # type: ignore[arg-type]
    assert again.key == entry.key and storage.writes == 1
    assert _keys(s3_server, s3_bucket) == {f"jmk/{entry.key}": entry.size}
    assert entry.size > 12 * MIB
    assert np.array_equal(load_value(storage, entry.__dict__), array)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- check()


def test_check_passes_for_a_usable_bucket(s3_bucket: str) -> None:
    get_storage(f"s3://{s3_bucket}/jmk").check()
    get_storage(f"s3://{s3_bucket}").check()


def test_check_names_wrong_credentials(s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(JMKUsageError, match="refused the credentials") as info:
        get_storage(f"s3://{s3_bucket}/jmk").check()
    assert f"s3://{s3_bucket}/jmk" in str(info.value) and s3_server.endpoint_url in str(info.value)
    assert "AWS_SECRET_ACCESS_KEY" in str(info.value)


def test_check_names_missing_credentials(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(JMKUsageError, match="no AWS credentials") as info:
        get_storage(f"s3://{s3_bucket}/jmk").check()
    assert "AWS_ACCESS_KEY_ID" in str(info.value) and "c.JMKSettings.storage_options" in str(info.value)


def test_check_names_a_missing_bucket(s3_bucket: str) -> None:
    with pytest.raises(JMKUsageError, match="the bucket 'no-such-bucket-here' does not exist"):
        get_storage("s3://no-such-bucket-here/jmk").check()


def test_check_names_an_unreachable_endpoint(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with pytest.raises(JMKUsageError, match="does not answer") as info:
        get_storage(f"s3://{s3_bucket}/jmk").check()
    assert dead in str(info.value) and "AWS_ENDPOINT_URL" in str(info.value)


def test_storage_options_reach_s3fs_and_map_to_job_variables(s3_server: S3Server, s3_bucket: str) -> None:
    storage = get_storage(
        f"s3://{s3_bucket}/jmk",
        key=s3_server.key,
        secret=s3_server.secret,
        client_kwargs={"endpoint_url": s3_server.endpoint_url, "region_name": "us-east-1"},
    )
    storage.check()
    assert storage.job_environment() == {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert get_storage(f"s3://{s3_bucket}/jmk").job_environment() == {}


# ---------------------------------------------------------------------------- %%train end to end


def _use_storage(shell: Any, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("JMK_STORAGE_URL", url)
    shell.__dict__.pop("_jmk_service", None)  # the next magic builds its service from the new settings


def _train_sum(shell: Any, experiment: str) -> Any:
    shell.run_cell("data = list(range(100))")
    shell.run_cell_magic("train", f"--experiment {experiment}", "print('summing')\ntotal = sum(data)")
    assert shell.user_ns["total"] == 4950
    (record,) = service_for(shell).list()
    assert record.state is JobState.SUCCEEDED
    return wait_for(lambda: (r := service_for(shell).get(record.job_id)).tracking_final and r)


def test_train_stages_in_the_bucket_and_logs_artifacts_there(
    shell: Any, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_storage(shell, monkeypatch, f"s3://{s3_bucket}/jmk")
    record = _train_sum(shell, f"s3-{uuid.uuid4().hex[:8]}")
    assert record.payload_uri == f"s3://{s3_bucket}/jmk/jobs/{record.job_id}/payload.json"
    keys = _keys(s3_server, s3_bucket, "jmk/")
    assert f"jmk/jobs/{record.job_id}/payload.json" in keys and f"jmk/jobs/{record.job_id}/result.json" in keys
    assert len([k for k in keys if k.startswith("jmk/blobs/sha256/")]) == 2  # `data` in, `total` out
    experiment = MlflowClient(record.tracking_uri).get_experiment(record.experiment_id)
    assert experiment.artifact_location.startswith(f"s3://{s3_bucket}/jmk/mlartifacts/")
    location = experiment.artifact_location.removeprefix(f"s3://{s3_bucket}/")
    log_key = f"{location}/{record.run_id}/artifacts/jmk/output.log"
    assert log_key in keys and _object(s3_server, s3_bucket, log_key) == b"summing\n"


def test_train_with_a_tracking_server_that_proxies_artifacts_to_s3(
    shell: Any, s3_server: S3Server, s3_bucket: str, mlflow_server_s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_s3.url)
    _use_storage(shell, monkeypatch, f"s3://{s3_bucket}/jmk")
    record = _train_sum(shell, f"proxied-{uuid.uuid4().hex[:8]}")
    assert record.tracking_uri == mlflow_server_s3.url
    experiment = MlflowClient(record.tracking_uri).get_experiment(record.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server, not the client, writes
    logs = [k for k in _keys(s3_server, mlflow_server_s3.bucket, f"{mlflow_server_s3.prefix}/") if record.run_id in k]
    assert [k for k in logs if k.endswith("/artifacts/jmk/output.log")], logs
    assert f"jmk/jobs/{record.job_id}/result.json" in _keys(s3_server, s3_bucket, "jmk/")


def test_wrong_secret_is_refused_before_anything_is_created(
    shell: Any, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    _use_storage(shell, monkeypatch, f"s3://{s3_bucket}/jmk")
    shell.run_cell("x = 1")
    with pytest.raises(UsageError, match="credentials") as info:
        shell.run_cell_magic("train", "", "y = x + 1")
    assert f"s3://{s3_bucket}/jmk" in str(info.value) and "Nothing was submitted" in str(info.value)
    assert service_for(shell).list() == []
    assert _keys(s3_server, s3_bucket) == {}
    assert "y" not in shell.user_ns


def test_missing_bucket_is_refused_before_anything_is_created(
    shell: Any, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = f"jmk-missing-{uuid.uuid4().hex[:8]}"
    _use_storage(shell, monkeypatch, f"s3://{missing}/jmk")
    shell.run_cell("x = 1")
    with pytest.raises(UsageError, match=f"the bucket '{missing}' does not exist"):
        shell.run_cell_magic("train", "", "y = x + 1")
    assert service_for(shell).list() == []
    buckets = {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}
    assert missing not in buckets and _keys(s3_server, s3_bucket) == {}


def test_storage_options_alone_reach_the_job(
    shell: Any, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No AWS variables in the notebook's environment: the endpoint and keys are only in config.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    shell.config.JMKSettings.storage_options = {
        "key": s3_server.key,
        "secret": s3_server.secret,
        "client_kwargs": {"endpoint_url": s3_server.endpoint_url, "region_name": "us-east-1"},
    }
    try:
        _use_storage(shell, monkeypatch, f"s3://{s3_bucket}/opts")
        shell.run_cell("numbers = list(range(10))")
        shell.run_cell_magic("train", "--experiment s3-options", "total = sum(numbers)")
    finally:
        del shell.config.JMKSettings["storage_options"]
    assert shell.user_ns["total"] == 45
    (record,) = service_for(shell).list()
    assert f"opts/jobs/{record.job_id}/result.json" in _keys(s3_server, s3_bucket, "opts/")
    assert "AWS_SECRET_ACCESS_KEY" not in (service_for(shell).store.job_dir(record.job_id) / "record.json").read_text()
