"""The shards of a batch prediction as one Indexed Job, without a cluster: the manifest, the choice of form.

The manifest is checked against the strict schemas of Kubernetes 1.27-1.37 (kubernetes-validate, as
tests/test_kubernetes_manifests.py does); the choice reads what a dry run's answer kept, as an API
server of each version answers it (one that drops a field it does not know returns the rest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from k8s_manifests import SUPPORTED_VERSIONS, schema_problems, validate_manifest

from jupyter_mlflow_k8s.backends.kubernetes import JobFeatures, KubernetesBackend
from jupyter_mlflow_k8s.backends.kubernetes.manifests import (
    BATCH_SHARDS_ENV,
    INDEXED,
    JOBS,
    RUNNER_MODULE,
    build_batch_job,
    build_job,
    indexed_job_probe,
    shard_of_index,
)
from jupyter_mlflow_k8s.batch.service import FORM_INDEXED, FORM_JOBS, BatchService, indexed_shard_code
from jupyter_mlflow_k8s.k8s import check_manifest
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.models import JobRecord, JobSpec
from jupyter_mlflow_k8s.records import JobStore

USER = "Ada Lovelace"
PAYLOAD = "s3://bucket/jobs/1a2b3c4d/payload.json"
# Where backoffLimitPerIndex is used: kept by the API server from 1.29 (beta, on by default; GA in 1.33).
PER_INDEX_VERSIONS = tuple(v for v in SUPPORTED_VERSIONS if int(v.split(".")[1]) >= 29)


def record(retries: int = 2) -> JobRecord:
    code = indexed_shard_code("s3://bucket/out/")
    return JobRecord(
        job_id="1a2b3c4d", created=1_700_000_000.0, spec=JobSpec(code=code, backend="kubernetes", retries=retries)
    )


def settings(retries: int = 2, gpus: int = 0) -> PodSettings:
    return PodSettings(
        namespace="team-a",
        image="ghcr.io/example/batch:1.0",
        cpu="1",
        memory="2Gi",
        gpus=gpus,
        retries=retries,
        env={"HF_HOME": "/data/hf"},
        labels={"team": "vision"},
    )


def batch_job(shards: list[int], per_index: bool, retries: int = 2, gpus: int = 0) -> dict[str, Any]:
    return build_batch_job(
        record(retries),
        settings(retries, gpus),
        user=USER,
        payload_url=PAYLOAD,
        shards=shards,
        per_index=per_index,
        env_secret="jmk-ada-lovelace-1a2b3c4d-env",
    )


@pytest.mark.parametrize("gpus", [0, 1])
def test_with_per_index_retries_the_job_is_valid_where_the_api_keeps_them(gpus: int) -> None:
    job = batch_job([1, 3], per_index=True, gpus=gpus)
    validate_manifest(job, PER_INDEX_VERSIONS)
    # 1.27 has no backoffLimitPerIndex at all: there the job must be the other one (see the next test)
    assert any("backoffLimitPerIndex" in problem for problem in schema_problems(job, "1.27"))


@pytest.mark.parametrize("gpus", [0, 1])
def test_without_per_index_retries_the_job_is_valid_for_1_27_to_1_37(gpus: int) -> None:
    validate_manifest(batch_job([0, 1, 2], per_index=False, gpus=gpus))


def test_the_unfinished_shards_are_one_indexed_job_each_retried_on_its_own() -> None:
    job = batch_job([1, 3], per_index=True, retries=2)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimitPerIndex"]) == (
        "Indexed",
        2,
        2,
        2,
    )
    assert "backoffLimit" not in spec  # left to the API server (no limit on the whole Job with per-index retries)
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", RUNNER_MODULE, PAYLOAD]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env[BATCH_SHARDS_ENV] == "1,3" and env["HF_HOME"] == "/data/hf"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # backoffLimitPerIndex needs it


def test_without_per_index_retries_the_whole_job_gets_each_shards_retries() -> None:
    spec = batch_job([0, 1, 2], per_index=False, retries=2)["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed",
        3,
        3,
        6,
    )
    assert "backoffLimitPerIndex" not in spec


def test_the_batch_job_is_the_one_job_form_but_for_its_indexes() -> None:
    single = build_job(record(), settings(), user=USER, payload_url=PAYLOAD, env_secret="jmk-ada-lovelace-1a2b3c4d-env")
    indexed = batch_job([0], per_index=True)
    assert indexed["metadata"] == single["metadata"]
    for key in ("activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert indexed["spec"].get(key) == single["spec"].get(key)
    pod, single_pod = indexed["spec"]["template"]["spec"], single["spec"]["template"]["spec"]
    assert {k: v for k, v in pod.items() if k != "containers"} == {
        k: v for k, v in single_pod.items() if k != "containers"
    }


@pytest.mark.parametrize("shards", [[], [1, 1], [-1]])
def test_a_shard_list_that_names_no_shard_or_one_twice_is_refused(shards: list[int]) -> None:
    with pytest.raises(ValueError, match="give each shard to run once"):
        batch_job(shards, per_index=True)


def test_per_index_retries_without_the_indexed_mode_are_refused_before_submitting() -> None:
    job = batch_job([0, 1], per_index=True)
    job["spec"].pop("completionMode")
    assert check_manifest(job) == ["spec.backoffLimitPerIndex: invalid value 2: requires completionMode Indexed"]


@pytest.mark.parametrize(("index", "shards", "shard"), [("0", "1,3", 1), ("1", "1,3", 3), ("0", "7", 7)])
def test_each_pod_runs_the_shard_at_its_completion_index(index: str, shards: str, shard: int) -> None:
    assert shard_of_index(index, shards) == shard


@pytest.mark.parametrize(("index", "shards"), [(None, "1,3"), ("2", "1,3"), ("-1", "1,3"), ("0", None), ("x", "1")])
def test_a_pod_outside_an_indexed_batch_job_is_told_so(index: str | None, shards: str | None) -> None:
    with pytest.raises(ValueError, match="name no shard: this pod is not one of a batch prediction's Indexed Job"):
        shard_of_index(index, shards)


def test_the_probe_with_per_index_retries_is_valid_where_they_exist() -> None:
    validate_manifest(indexed_job_probe(settings(), per_index=True), PER_INDEX_VERSIONS)
    validate_manifest(indexed_job_probe(settings()))


# -- the choice: what the API server keeps of the probe -----------------------------------------------


def answer(version: str, body: dict[str, Any]) -> dict[str, Any]:
    """The dry run's answer of an API server of ``version``: the fields it does not know (or gates off) dropped."""
    minor = int(version.split(".")[1])
    spec = dict(body["spec"])
    if minor < 21:
        spec.pop("completionMode", None)
    if minor < 29:
        spec.pop("backoffLimitPerIndex", None)
    return {**body, "spec": spec}


class FakeBatchApi:
    """``BatchV1Api`` for the dry runs: answers as a server of one version, counting the questions."""

    version = "1.20"
    refuse = False
    asked: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, api: object) -> None:
        pass

    def create_namespaced_job(self, namespace: str, body: dict[str, Any], **options: Any) -> Any:
        import kubernetes

        assert options["dry_run"] == "All" and namespace == "team-a"
        FakeBatchApi.asked.append(body)
        if FakeBatchApi.refuse:
            raise kubernetes.client.ApiException(status=403, reason="Forbidden")
        return type("Response", (), {"data": json.dumps(answer(FakeBatchApi.version, body)).encode()})()


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KubernetesBackend:
    import kubernetes

    monkeypatch.setattr(kubernetes.client, "BatchV1Api", FakeBatchApi)
    monkeypatch.setattr(FakeBatchApi, "asked", [])
    monkeypatch.setattr(FakeBatchApi, "refuse", False)
    made = KubernetesBackend(JobStore(tmp_path), namespace="team-a", image="ghcr.io/example/batch:1.0")
    made._api = object()  # never used: the fake API stands in for every request
    return made


@pytest.mark.parametrize(
    ("version", "form", "per_index"),
    [
        ("1.20", JOBS, False),
        ("1.27", INDEXED, False),
        ("1.28", INDEXED, False),
        ("1.29", INDEXED, True),
        ("1.33", INDEXED, True),
        ("1.37", INDEXED, True),
    ],
)
def test_the_batch_form_follows_what_the_api_server_keeps(
    backend: KubernetesBackend, monkeypatch: pytest.MonkeyPatch, version: str, form: str, per_index: bool
) -> None:
    monkeypatch.setattr(FakeBatchApi, "version", version)
    spec = JobSpec(code="", backend="kubernetes", retries=2)
    assert backend.batch_form(spec) == (form, per_index)
    assert backend.batch_form(spec) == (form, per_index)
    assert len(FakeBatchApi.asked) == 1, "asked once per namespace"
    assert FakeBatchApi.asked[0]["spec"]["backoffLimitPerIndex"] == 0
    # a gang asks the same question, without per-index retries, through the same detection
    assert backend.gang_form(backend.configured_settings()) == form
    assert backend.job_features(backend.configured_settings()) == JobFeatures(form == INDEXED, False)


def test_a_refused_probe_or_jobs_configured_means_one_job_per_shard(
    backend: KubernetesBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeBatchApi, "version", "1.33")
    monkeypatch.setattr(FakeBatchApi, "refuse", True)
    spec = JobSpec(code="", backend="kubernetes")
    assert backend.batch_form(spec) == (JOBS, False)
    backend.distributed_form = JOBS
    backend._features.clear()
    monkeypatch.setattr(FakeBatchApi, "refuse", False)
    assert backend.batch_form(spec) == (JOBS, False)
    assert len(FakeBatchApi.asked) == 1, "'jobs' configured: nothing asked"


def test_the_service_runs_one_indexed_job_where_the_backend_says_it_can() -> None:
    class Target:
        def __init__(self, form: tuple[str, bool]) -> None:
            self.form = form

        def batch_form(self, spec: JobSpec) -> tuple[str, bool]:
            return self.form

    said: list[str] = []
    service = BatchService.__new__(BatchService)
    base = JobSpec(code="", backend="kubernetes")
    assert service.form(Target((INDEXED, True)), base, said.append) == FORM_INDEXED
    assert service.form(Target((INDEXED, False)), base, said.append) == FORM_INDEXED
    assert said == [
        "batch: the unfinished shards run as one Indexed Job (each index retried on its own)",
        "batch: the unfinished shards run as one Indexed Job (retried within the Job's backoffLimit)",
    ]
    assert service.form(Target((JOBS, False)), base, said.append) == FORM_JOBS
    assert service.form(object(), base, said.append) == FORM_JOBS  # the local backend: one job per shard
    assert len(said) == 2
