"""The manifests of a Kubernetes job, without a cluster: valid for Kubernetes 1.27-1.37, exact, free of secrets."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from typing import Any

import pytest
from k8s_manifests import validate_manifest

from jupyter_mlflow_k8s.backends.kubernetes.manifests import (
    PAYLOAD_LIMIT,
    RECORD_ANNOTATION,
    RECORD_OMITTED_ANNOTATION,
    RUNNER_MODULE,
    build_env_secret,
    build_job,
    build_payload_secret,
    job_labels,
    job_name,
)
from jupyter_mlflow_k8s.exceptions import InvalidManifest, JMKUsageError
from jupyter_mlflow_k8s.k8s.names import MANAGED_BY, payload_key
from jupyter_mlflow_k8s.k8s.pods import PAYLOAD_MOUNT, PodSettings, PVCMount
from jupyter_mlflow_k8s.k8s.presets import PRESET_KEYS, apply_preset, check_image, parse_secret, parse_volume
from jupyter_mlflow_k8s.k8s.validation import check_manifest
from jupyter_mlflow_k8s.models import JobRecord, JobSpec
from jupyter_mlflow_k8s.util.names import label_value

USER = "Jane Doe"
PAYLOAD_URL = "s3://jmk-bucket/jobs/1a2b3c4d/payload.json"
ENV = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-aws-key-value", "MLFLOW_TRACKING_PASSWORD": "tracking-pa55word"}
FILES = {
    "jobs/1a2b3c4d/payload.json": b'{"payload": "marker-0xC0FFEE"}',
    "blobs/sha256/ab/ab12cd": b"\x80pickled-bytes",
}
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def make_record(**spec: Any) -> JobRecord:
    spec = {"code": "x = 1", "backend": "kubernetes", **spec}
    return JobRecord(job_id="1a2b3c4d", spec=JobSpec(**spec), created=1_700_000_000.0)


def cpu_settings() -> PodSettings:
    return PodSettings(namespace="ml-team", image="ghcr.io/example/train:1.2", cpu="500m", memory="1Gi")


def gpu_settings() -> PodSettings:
    """Every field set."""
    return PodSettings(
        namespace="ml-team",
        image="ghcr.io/example/train-cuda:1.2",
        image_pull_policy="IfNotPresent",
        python="/opt/conda/bin/python",
        gpu_resource="nvidia.com/gpu",
        cpu="8",
        memory="64Gi",
        gpus=2,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        tolerations=({"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},),
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
                            ]
                        }
                    ]
                }
            }
        },
        priority_class_name="ml-high",
        service_account_name="trainer",
        image_pull_secrets=("ghcr-pull",),
        runtime_class_name="nvidia",
        shm_size="16Gi",
        ttl_seconds_after_finished=3600,
        retries=2,
        labels={"team": "vision"},
        annotations={"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        env={"HF_HOME": "/data/hf"},
        secrets=("hf-token", "wandb"),
        volumes=(PVCMount("datasets", "/data", read_only=True), PVCMount("checkpoints", "/ckpt")),
    )


def gpu_record() -> JobRecord:
    record = make_record(
        code="import torch\nmodel = train()",
        env={"EPOCHS": "3"},
        timeout=3599.5,
        notebook="/home/jane/projects/Vision Training.ipynb",
        experiment="vision",
    )
    return dataclasses.replace(record, run_id="0123456789abcdef0123456789abcdef", tracking_uri="http://mlflow:5000")


def cpu_job() -> dict[str, Any]:
    return build_job(make_record(), cpu_settings(), user=USER, payload_url=PAYLOAD_URL)


def gpu_job() -> dict[str, Any]:
    return build_job(
        gpu_record(),
        gpu_settings(),
        user=USER,
        payload_url=f"file://{PAYLOAD_MOUNT}/jobs/1a2b3c4d/payload.json",
        env_secret="jmk-jane-doe-1a2b3c4d-env",
        payload_secret="jmk-jane-doe-1a2b3c4d-payload",
        payload_files=FILES,
    )


def env_secret() -> dict[str, Any]:
    return build_env_secret(gpu_record(), gpu_settings(), "jmk-jane-doe-1a2b3c4d-env", ENV, user=USER)


def payload_secret() -> dict[str, Any]:
    return build_payload_secret(gpu_record(), gpu_settings(), "jmk-jane-doe-1a2b3c4d-payload", FILES, user=USER)


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# -- every manifest is valid -------------------------------------------------------------------


@pytest.mark.parametrize("build", [cpu_job, gpu_job, env_secret, payload_secret])
def test_manifests_are_valid_for_every_supported_kubernetes(build: Any) -> None:
    manifest = build()
    assert check_manifest(manifest) == []
    validate_manifest(manifest)


@pytest.mark.parametrize("build", [cpu_job, gpu_job, env_secret, payload_secret])
def test_manifests_are_plain_json_without_empty_fields(build: Any) -> None:
    manifest = build()
    assert json.loads(json.dumps(manifest)) == manifest  # plain JSON data: no tuples, no mapping proxies
    assert list(empty_fields(manifest)) == []


def empty_fields(value: Any, path: str = "") -> Any:
    if value is None or value == {} or value == []:
        yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from empty_fields(child, f"{path}.{key}")


def test_the_same_inputs_build_the_same_manifests() -> None:
    assert json.dumps(gpu_job()) == json.dumps(gpu_job())
    assert json.dumps(payload_secret()) == json.dumps(payload_secret())


# -- the Job, field by field -------------------------------------------------------------------


def test_cpu_job() -> None:
    job = cpu_job()
    assert job["metadata"]["name"] == "jmk-jane-doe-1a2b3c4d"
    assert job["metadata"]["namespace"] == "ml-team"
    assert job["spec"] == {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": 86400,
        "template": {
            "metadata": {"labels": job_labels(make_record(), USER)},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 30,
                "containers": [
                    {
                        "name": "train",
                        "image": "ghcr.io/example/train:1.2",
                        "command": ["python", "-m", RUNNER_MODULE, PAYLOAD_URL],
                        "env": [
                            {"name": "JMK_JOB_ID", "value": "1a2b3c4d"},
                            {"name": "PYTHONUNBUFFERED", "value": "1"},
                        ],
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "1Gi"},
                            "limits": {"cpu": "500m", "memory": "1Gi"},
                        },
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }
                ],
                "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
            },
        },
    }


def test_gpu_job_container() -> None:
    train = container(gpu_job())
    assert train["image"] == "ghcr.io/example/train-cuda:1.2"
    assert train["imagePullPolicy"] == "IfNotPresent"
    assert train["command"] == [
        "/opt/conda/bin/python",
        "-m",
        RUNNER_MODULE,
        f"file://{PAYLOAD_MOUNT}/jobs/1a2b3c4d/payload.json",
    ]
    assert train["env"] == [
        {"name": "HF_HOME", "value": "/data/hf"},
        {"name": "EPOCHS", "value": "3"},
        {"name": "JMK_JOB_ID", "value": "1a2b3c4d"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    # The job's own credentials come last, so that they win a clash of keys.
    assert train["envFrom"] == [
        {"secretRef": {"name": "hf-token"}},
        {"secretRef": {"name": "wandb"}},
        {"secretRef": {"name": "jmk-jane-doe-1a2b3c4d-env"}},
    ]
    assert train["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
    }
    assert train["volumeMounts"] == [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "pvc-0", "mountPath": "/data", "readOnly": True},
        {"name": "pvc-1", "mountPath": "/ckpt"},
        {"name": "payload", "mountPath": PAYLOAD_MOUNT, "readOnly": True},
    ]


def test_gpu_job_pod() -> None:
    settings = gpu_settings()
    pod = gpu_job()["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}},
        {"name": "pvc-1", "persistentVolumeClaim": {"claimName": "checkpoints"}},
        {
            "name": "payload",
            "secret": {
                "secretName": "jmk-jane-doe-1a2b3c4d-payload",
                "items": [
                    {"key": "blobs_2fsha256_2fab_2fab12cd", "path": "blobs/sha256/ab/ab12cd"},
                    {"key": "jobs_2f1a2b3c4d_2fpayload.json", "path": "jobs/1a2b3c4d/payload.json"},
                ],
            },
        },
    ]
    assert pod["nodeSelector"] == settings.node_selector
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert pod["affinity"] == settings.affinity
    assert pod["priorityClassName"] == "ml-high"
    assert pod["serviceAccountName"] == "trainer"
    assert pod["imagePullSecrets"] == [{"name": "ghcr-pull"}]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["restartPolicy"] == "Never"


def test_gpu_job_spec_and_metadata() -> None:
    job = gpu_job()
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 3600  # 3599.5 s, rounded up
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    labels = {"team": "vision", **job_labels(gpu_record(), USER)}
    assert job["metadata"]["labels"] == labels
    assert job["spec"]["template"]["metadata"] == {
        "labels": labels,
        "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
    }
    annotations = job["metadata"]["annotations"]
    assert annotations["jmk.io/notebook"] == "/home/jane/projects/Vision Training.ipynb"
    assert annotations["jmk.io/experiment"] == "vision"
    assert annotations["jmk.io/tracking-uri"] == "http://mlflow:5000"
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert JobRecord.from_dict(json.loads(annotations[RECORD_ANNOTATION])) == gpu_record()


@pytest.mark.parametrize(
    ("timeout", "deadline"), [(0.2, 1), (60, 60), (60.01, 61)], ids=["under-a-second", "whole", "rounded-up"]
)
def test_timeout_is_the_active_deadline_in_whole_seconds(timeout: float, deadline: int) -> None:
    job = build_job(make_record(timeout=timeout), PodSettings(), user=USER, payload_url=PAYLOAD_URL)
    assert job["spec"]["activeDeadlineSeconds"] == deadline


def test_optional_pod_parts_are_left_out() -> None:
    settings = PodSettings(shm_size=None, ttl_seconds_after_finished=None)
    job = build_job(make_record(), settings, user=USER, payload_url=PAYLOAD_URL)
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert "volumes" not in job["spec"]["template"]["spec"]
    assert set(container(job)) == {"name", "image", "command", "env", "terminationMessagePolicy"}


@pytest.mark.parametrize(
    ("gpus", "gpu_resource", "tolerations", "added"),
    [
        (0, "nvidia.com/gpu", (), False),
        (1, "nvidia.com/gpu", (), True),
        (1, "amd.com/gpu", (), True),
        (1, "nvidia.com/gpu", ({"key": "nvidia.com/gpu", "operator": "Exists"},), False),
        (1, "nvidia.com/gpu", ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"},), False),
        (1, "nvidia.com/gpu", ({"operator": "Exists"},), False),
        (1, "nvidia.com/gpu", ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"},), True),
        (1, "amd.com/gpu", ({"key": "nvidia.com/gpu", "operator": "Exists"},), True),
    ],
    ids=["cpu", "gpu", "other-vendor", "tolerated", "tolerated-equal", "tolerates-all", "other-effect", "other-key"],
)
def test_gpu_toleration_is_added_only_when_needed(
    gpus: int, gpu_resource: str, tolerations: tuple[dict[str, str], ...], added: bool
) -> None:
    settings = PodSettings(gpus=gpus, gpu_resource=gpu_resource, tolerations=tolerations)
    job = build_job(make_record(), settings, user=USER, payload_url=PAYLOAD_URL)
    gpu_toleration = {"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
    expected = [*tolerations, gpu_toleration] if added else list(tolerations)
    assert job["spec"]["template"]["spec"].get("tolerations", []) == expected


def test_configured_labels_cannot_replace_ours() -> None:
    settings = PodSettings(labels={"jmk.io/job-id": "forged", "app.kubernetes.io/managed-by": "helm", "team": "a"})
    labels = build_job(make_record(), settings, user=USER, payload_url=PAYLOAD_URL)["metadata"]["labels"]
    assert labels["jmk.io/job-id"] == "1a2b3c4d"
    assert labels["app.kubernetes.io/managed-by"] == MANAGED_BY
    assert labels["team"] == "a"


def test_bad_configured_values_are_refused_before_submitting() -> None:
    with pytest.raises(InvalidManifest) as caught:
        build_job(make_record(), PodSettings(memory="lots", env={"1BAD": "x"}), user=USER, payload_url=PAYLOAD_URL)
    assert any(
        problem.startswith("spec.template.spec.containers[0].resources.limits.memory")
        for problem in caught.value.problems
    )
    assert any(problem.startswith("spec.template.spec.containers[0].env[0].name") for problem in caught.value.problems)


def test_a_huge_record_is_left_out_of_the_annotations() -> None:
    record = make_record(code="x = 1\n" * 50_000)
    job = build_job(record, PodSettings(), user=USER, payload_url=PAYLOAD_URL)
    annotations = job["metadata"]["annotations"]
    assert RECORD_ANNOTATION not in annotations
    omitted = re.fullmatch(r"(\d+) bytes, over (\d+)", annotations[RECORD_OMITTED_ANNOTATION])
    assert omitted is not None
    assert int(omitted[1]) > int(omitted[2]) == 200 * 1024
    assert check_manifest(job) == []


# -- names and labels --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "name"),
    [
        ("jane", "jmk-jane-1a2b3c4d"),
        ("Jane.Doe@Example.com", "jmk-jane-doe-example-com-1a2b3c4d"),
        ("  Zoë Ünal  ", "jmk-zoe-unal-1a2b3c4d"),
        ("李", "jmk-1a2b3c4d"),
        ("", "jmk-1a2b3c4d"),
    ],
)
def test_job_name(user: str, name: str) -> None:
    assert job_name("1a2b3c4d", user) == name


def test_job_name_of_a_long_user_name_fits_a_label() -> None:
    name = job_name("1a2b3c4d", "Jane-" + "x" * 95)
    assert len(name) == 63
    assert DNS1123_LABEL.fullmatch(name)
    assert name.startswith("jmk-jane-xxx") and name.endswith("-1a2b3c4d")
    assert job_name("1a2b3c4d", "x" * 49 + "-yyy") == "jmk-" + "x" * 49 + "-1a2b3c4d"  # no '--' left by the cut


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("jane", "jane"),
        ("Vision Training (v2).ipynb", "Vision-Training-v2-.ipynb"),
        ("__init__.py", "init__.py"),
        ("Zoë", "Zoe"),
        ("李", ""),
        ("a" * 63, "a" * 63),
    ],
)
def test_label_value(text: str, value: str) -> None:
    assert label_value(text) == value


def test_long_label_values_are_shortened_and_stay_distinct() -> None:
    first, second = label_value("n" * 80 + "-first"), label_value("n" * 80 + "-second")
    assert first != second
    for value in (first, second, label_value("x" * 62 + "_" + "y")):
        assert len(value) <= 63 and LABEL_VALUE.fullmatch(value)
        assert value.startswith(("nnnnnnnn", "xxxxxxxx"))


def test_job_labels() -> None:
    assert job_labels(gpu_record(), "jane.doe@example.com") == {
        "app.kubernetes.io/name": "jupyter-mlflow-k8s",
        "app.kubernetes.io/managed-by": "jupyter-mlflow-k8s",
        "app.kubernetes.io/component": "train",
        "jmk.io/job-id": "1a2b3c4d",
        "jmk.io/user": "jane.doe-example.com",
        "jmk.io/cell-hash": "6274f374ad8a7b49",
        "jmk.io/notebook": "Vision-Training.ipynb",
        "jmk.io/mlflow-run-id": "0123456789abcdef0123456789abcdef",
    }
    assert "jmk.io/notebook" not in job_labels(make_record(), USER)
    assert "jmk.io/mlflow-run-id" not in job_labels(make_record(), USER)


def test_cell_hash_follows_the_code() -> None:
    first = job_labels(make_record(code="x = 1"), USER)["jmk.io/cell-hash"]
    second = job_labels(make_record(code="x = 2"), USER)["jmk.io/cell-hash"]
    assert first != second and len(first) == 16


# -- the Secrets -------------------------------------------------------------------------------


def test_env_secret() -> None:
    secret = env_secret()
    assert secret["metadata"] == {
        "name": "jmk-jane-doe-1a2b3c4d-env",
        "namespace": "ml-team",
        "labels": {"team": "vision", **job_labels(gpu_record(), USER)},
    }
    assert (secret["type"], secret["immutable"], secret["stringData"]) == ("Opaque", True, ENV)


def test_payload_secret_carries_each_file_under_its_key() -> None:
    secret = payload_secret()
    assert (secret["type"], secret["immutable"]) == ("Opaque", True)
    assert {key: base64.b64decode(value) for key, value in secret["data"].items()} == {
        payload_key(path): content for path, content in FILES.items()
    }
    items = gpu_job()["spec"]["template"]["spec"]["volumes"][-1]["secret"]["items"]
    assert {item["key"] for item in items} == set(secret["data"])
    assert {item["path"] for item in items} == set(FILES)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("payload.json", "payload.json"),
        ("jobs/1a2b3c4d/payload.json", "jobs_2f1a2b3c4d_2fpayload.json"),
        ("a_b", "a_5fb"),
        ("a/b", "a_2fb"),
        ("é", "_c3_a9"),
    ],
)
def test_payload_key(path: str, key: str) -> None:
    assert payload_key(path) == key


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../b", "a//b", "./a", "", ".", "..a"])
def test_payload_key_refuses_paths_outside_the_mount(path: str) -> None:
    with pytest.raises(ValueError, match="relative and normalized"):
        payload_key(path)


def test_a_payload_over_the_limit_asks_for_object_storage() -> None:
    files = {"jobs/1a2b3c4d/payload.json": b"{}", "blobs/sha256/ab/ab": bytes(PAYLOAD_LIMIT)}
    with pytest.raises(JMKUsageError, match=r"Configure object storage \(JMK_STORAGE_URL=s3://bucket/prefix\)"):
        build_payload_secret(make_record(), PodSettings(), "p", files, user=USER)
    build_payload_secret(make_record(), PodSettings(), "p", {"a": bytes(PAYLOAD_LIMIT)}, user=USER)


def test_secret_values_never_appear_in_the_job() -> None:
    job = json.dumps(gpu_job())
    for value in ENV.values():
        assert value not in job
    for content in FILES.values():
        assert base64.b64encode(content).decode() not in job
    assert "marker-0xC0FFEE" not in job and "pickled-bytes" not in job
    assert ENV["AWS_SECRET_ACCESS_KEY"] in json.dumps(env_secret())  # the search would find them


def test_a_password_in_the_tracking_uri_is_not_written() -> None:
    record = dataclasses.replace(make_record(), tracking_uri="https://jane:hunter2@mlflow.example:5000/x")
    job = build_job(record, PodSettings(), user=USER, payload_url=PAYLOAD_URL)
    assert "hunter2" not in json.dumps(job)
    assert job["metadata"]["annotations"]["jmk.io/tracking-uri"] == "https://jane:***@mlflow.example:5000/x"


# -- flags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mount"),
    [
        ("pvc:datasets:/data", PVCMount("datasets", "/data")),
        ("pvc:datasets:/data:ro", PVCMount("datasets", "/data", read_only=True)),
        ("pvc:team.models-v2:/mnt/models/v2", PVCMount("team.models-v2", "/mnt/models/v2")),
        ("pvc:x:/var/run/jmk/payloads", PVCMount("x", "/var/run/jmk/payloads")),
    ],
)
def test_parse_volume(text: str, mount: PVCMount) -> None:
    assert parse_volume(text) == mount


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data:/x", "--volume 'data:/x' is not pvc:CLAIM:/path[:ro]. Write --volume pvc:datasets:/data"),
        ("pvc:data:/x:rw", "is not pvc:CLAIM:/path[:ro]"),
        ("pvc:data", "is not pvc:CLAIM:/path[:ro]"),
        (
            "pvc:Data:/x",
            "'Data' is not a PersistentVolumeClaim name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit). Write --volume pvc:data:/x",
        ),
        ("pvc::/x", "'' is not a PersistentVolumeClaim name"),
        (
            "pvc:data:relative",
            "--volume 'pvc:data:relative': the mount path 'relative' must be absolute, e.g. --volume pvc:data:/data",
        ),
        ("pvc:data:/my data", "must not contain whitespace"),
        ("pvc:data:/data/../etc", "must be normalized ('/etc')"),
        ("pvc:data:/", "would hide the whole image"),
        ("pvc:data:/dev/shm", "is the job's shared memory"),
        ("pvc:data:/var/run/jmk/payload/x", "is where the job's inputs are mounted"),
    ],
)
def test_parse_volume_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(JMKUsageError, match=re.escape(message)):
        parse_volume(text)


@pytest.mark.parametrize("name", ["hf-token", "team.wandb", "a"])
def test_parse_secret(name: str) -> None:
    assert parse_secret(name) == name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "My Creds",
            "--secret 'My Creds' is not a Secret name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters, e.g. --secret my-creds",
        ),
        ("creds-", "e.g. --secret creds"),
        ("x" * 254, "at most 253 characters"),
        ("", "e.g. --secret my-credentials"),
    ],
)
def test_parse_secret_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(JMKUsageError, match=re.escape(message)):
        parse_secret(text)


@pytest.mark.parametrize(
    "image",
    [
        "python",
        "python:3.11-slim",
        "library/python:3.11",
        "ghcr.io/org/train:1.2",
        "Registry.Example.com/team/train",
        "localhost/train",
        "localhost:5000/team/train:latest",
        "[::1]:5000/train:1",
        "registry:5000/a__b/c-d.e_f",
        "python@sha256:" + "a" * 64,
        "ghcr.io/org/train:1.2@sha256:" + "0" * 64,
    ],
)
def test_check_image_accepts(image: str) -> None:
    check_image(image)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("", "Image '' is empty"),
        (
            "my image:1",
            "Image 'my image:1' contains whitespace. An image reference is [registry[:port]/]repository[:tag][@digest]",
        ),
        (
            "Repo/Upper:1",
            "has uppercase letters in its repository 'Repo/Upper': repositories are lowercase, 'repo/upper'",
        ),
        ("ghcr.io/Org/train", "has uppercase letters in its repository 'Org/train'"),
        ("python:3.11:slim", "has an invalid repository 'python:3.11'"),
        ("python:-slim", "has an invalid tag '-slim'"),
        ("python@sha256:abc", "has an invalid digest 'sha256:abc'"),
        ("ghcr.io:port/train", "has an invalid registry 'ghcr.io:port'"),
        ("org//train", "has an invalid repository 'org//train'"),
        ("train-", "has an invalid repository 'train-'"),
        ("a" * 256, "has a name longer than 255 characters"),
    ],
)
def test_check_image_says_what_is_wrong(image: str, message: str) -> None:
    with pytest.raises(JMKUsageError, match=re.escape(message)):
        check_image(image)


# -- presets -----------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "a100": {
        "gpus": 1,
        "cpu": 8,
        "memory": "64Gi",
        "node_selector": {"gpu": "a100"},
        "tolerations": [{"key": "a100", "operator": "Exists"}],
        "secrets": ["hf-token"],
        "volumes": ["pvc:datasets:/data:ro"],
        "shm_size": None,
    },
    "small": {"cpu": "500m"},
}


def test_apply_preset_replaces_what_it_sets() -> None:
    configured = PodSettings(namespace="ml-team", cpu="1", memory="2Gi", node_selector={"pool": "cpu"}, secrets=("s",))
    settings = apply_preset(configured, "a100", PRESETS)
    assert settings == dataclasses.replace(
        configured,
        gpus=1,
        cpu="8",
        memory="64Gi",
        node_selector={"gpu": "a100"},
        tolerations=({"key": "a100", "operator": "Exists"},),
        secrets=("hf-token",),
        volumes=(PVCMount("datasets", "/data", read_only=True),),
        shm_size=None,
    )
    validate_manifest(build_job(make_record(), settings, user=USER, payload_url=PAYLOAD_URL))


def test_preset_keys_are_the_pod_settings_but_the_namespace() -> None:
    assert {f.name for f in dataclasses.fields(PodSettings)} - PRESET_KEYS == {"namespace"}
    assert {f.name for f in dataclasses.fields(PodSettings)} >= PRESET_KEYS


@pytest.mark.parametrize(
    ("name", "presets", "message"),
    [
        ("huge", PRESETS, "Unknown preset 'huge'. Configured presets: a100, small."),
        ("huge", {}, "Unknown preset 'huge'. Configured presets: none."),
        (
            "p",
            {"p": {"cpus": 4}},
            "Preset 'p' sets unknown key 'cpus' (did you mean 'cpu'?). A preset may set affinity, annotations, cpu,",
        ),
        ("p", {"p": {"namespace": "x"}}, "Preset 'p' sets unknown key 'namespace'"),
        (
            "p",
            {"p": {"memory": "lots"}},
            "Preset 'p' is invalid: memory: invalid value 'lots': must be a number with an optional suffix",
        ),
        (
            "p",
            {"p": {"cpu": "-1"}},
            "Preset 'p' is invalid: cpu: invalid value '-1': must be greater than or equal to 0",
        ),
        (
            "p",
            {"p": {"gpus": "1"}},
            "Preset 'p' is invalid: gpus: invalid value '1': must be a whole number, 0 or more",
        ),
        ("p", {"p": {"gpus": -1}}, "gpus: invalid value -1"),
        ("p", {"p": {"retries": True}}, "retries: invalid value True"),
        ("p", {"p": {"image": "Repo/Upper:1"}}, "Preset 'p' is invalid: Image 'Repo/Upper:1' has uppercase letters"),
        (
            "p",
            {"p": {"image_pull_policy": "always"}},
            "image_pull_policy: invalid value 'always': must be one of Always, IfNotPresent, Never",
        ),
        (
            "p",
            {"p": {"node_selector": {"gpu": 1}}},
            "node_selector: invalid value {'gpu': 1}: must map strings to strings",
        ),
        ("p", {"p": {"tolerations": {"key": "x"}}}, "tolerations: invalid value {'key': 'x'}: must be a list"),
        ("p", {"p": {"service_account_name": "Trainer"}}, "service_account_name: invalid value 'Trainer'"),
        ("p", {"p": {"image_pull_secrets": ["ok", "Not OK"]}}, "image_pull_secrets: invalid value 'Not OK'"),
        ("p", {"p": {"secrets": ["My Creds"]}}, "Preset 'p' is invalid: --secret 'My Creds' is not a Secret name"),
        ("p", {"p": {"volumes": ["data:/x"]}}, "Preset 'p' is invalid: --volume 'data:/x' is not pvc:CLAIM:/path[:ro]"),
        ("p", {"p": {"python": ""}}, "python: invalid value '': must be a non-empty string"),
    ],
)
def test_apply_preset_says_what_is_wrong(name: str, presets: dict[str, dict[str, Any]], message: str) -> None:
    with pytest.raises(JMKUsageError, match=re.escape(message)):
        apply_preset(PodSettings(), name, presets)
