"""Manifest checks without a cluster: the strict OpenAPI schemas of Kubernetes 1.27-1.37 and our own rules."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
from k8s_manifests import SUPPORTED_VERSIONS, as_manifest, schema_problems, validate_manifest
from kubernetes import client as k8s
from kubernetes_validate.utils import VersionNotSupportedError

from jupyter_mlflow_k8s.exceptions import InvalidManifest, JMKUsageError
from jupyter_mlflow_k8s.k8s.validation import (
    check_cron,
    check_dns1035_label,
    check_dns1123_label,
    check_dns1123_subdomain,
    check_manifest,
    check_quantity,
    ensure_valid,
    json_path,
)

LABELS = {"app.kubernetes.io/name": "jupyter-mlflow-k8s", "jmk/job-id": "3f9a2c"}


# -- valid manifests, built with the client's models as the backend will build them ---------


def gpu_pod_template(restart_policy: str = "Never") -> k8s.V1PodTemplateSpec:
    container = k8s.V1Container(
        name="cell",
        image="ghcr.io/example/jmk-runner:0.4.1",
        image_pull_policy="IfNotPresent",
        command=["python", "-m", "jupyter_mlflow_k8s.runner"],
        args=["--job", "3f9a2c"],
        env=[
            k8s.V1EnvVar(name="MLFLOW_TRACKING_URI", value="http://mlflow.mlflow:5000"),
            k8s.V1EnvVar(name="JMK_JOB_ID", value="3f9a2c"),
            k8s.V1EnvVar(
                name="POD_NAME",
                value_from=k8s.V1EnvVarSource(field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.name")),
            ),
        ],
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "2", "memory": "8Gi"},
            limits={"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"},
        ),
        volume_mounts=[k8s.V1VolumeMount(name="cell", mount_path="/jmk/cell", read_only=True)],
    )
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=LABELS),
        spec=k8s.V1PodSpec(
            restart_policy=restart_policy,
            containers=[container],
            volumes=[k8s.V1Volume(name="cell", config_map=k8s.V1ConfigMapVolumeSource(name="train-3f9a2c-cell"))],
            tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        ),
    )


def gpu_job_spec() -> k8s.V1JobSpec:
    return k8s.V1JobSpec(
        backoff_limit=0,
        active_deadline_seconds=3600,
        ttl_seconds_after_finished=86400,
        template=gpu_pod_template(),
    )


def job() -> k8s.V1Job:
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(name="train-3f9a2c", namespace="ml-team", labels=LABELS),
        spec=gpu_job_spec(),
    )


def cron_job() -> k8s.V1CronJob:
    return k8s.V1CronJob(
        api_version="batch/v1",
        kind="CronJob",
        metadata=k8s.V1ObjectMeta(name="nightly-retrain", namespace="ml-team"),
        spec=k8s.V1CronJobSpec(
            schedule="30 2 * * mon-fri",
            time_zone="Etc/UTC",
            concurrency_policy="Forbid",
            starting_deadline_seconds=600,
            successful_jobs_history_limit=3,
            failed_jobs_history_limit=1,
            job_template=k8s.V1JobTemplateSpec(metadata=k8s.V1ObjectMeta(labels=LABELS), spec=gpu_job_spec()),
        ),
    )


def deployment() -> k8s.V1Deployment:
    labels = {"app.kubernetes.io/name": "model-server"}
    container = k8s.V1Container(
        name="server",
        image="ghcr.io/example/model-server:1.2.0",
        ports=[k8s.V1ContainerPort(name="http", container_port=8080)],
        readiness_probe=k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path="/ping", port="http")),
        resources=k8s.V1ResourceRequirements(limits={"memory": "2Gi", "nvidia.com/gpu": "1"}),
    )
    return k8s.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=k8s.V1ObjectMeta(name="model-server", namespace="ml-team"),
        spec=k8s.V1DeploymentSpec(
            replicas=2,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels={**labels, "jmk/model-version": "7"}),
                spec=k8s.V1PodSpec(containers=[container]),
            ),
        ),
    )


def service() -> k8s.V1Service:
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=k8s.V1ObjectMeta(name="model-server", namespace="ml-team"),
        spec=k8s.V1ServiceSpec(
            selector={"app.kubernetes.io/name": "model-server"},
            ports=[k8s.V1ServicePort(name="http", port=80, target_port="http", protocol="TCP")],
        ),
    )


def pod() -> k8s.V1Pod:
    template = gpu_pod_template(restart_policy="OnFailure")
    return k8s.V1Pod(
        api_version="v1", kind="Pod", metadata=k8s.V1ObjectMeta(name="debug-3f9a2c", labels=LABELS), spec=template.spec
    )


def config_map() -> k8s.V1ConfigMap:
    return k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=k8s.V1ObjectMeta(name="train-3f9a2c-cell", namespace="ml-team"),
        data={"cell.py": "model.fit(x, y)\n"},
        binary_data={"inputs.pkl": base64.b64encode(b"\x80\x04K\x01.").decode()},
    )


def secret() -> k8s.V1Secret:
    return k8s.V1Secret(
        api_version="v1",
        kind="Secret",
        metadata=k8s.V1ObjectMeta(name="storage-credentials", namespace="ml-team"),
        type="Opaque",
        data={"AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIAEXAMPLE").decode()},
        string_data={"AWS_SECRET_ACCESS_KEY": "example-secret"},
    )


def namespace() -> k8s.V1Namespace:
    return k8s.V1Namespace(api_version="v1", kind="Namespace", metadata=k8s.V1ObjectMeta(name="ml-team"))


def claim() -> k8s.V1PersistentVolumeClaim:
    return k8s.V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=k8s.V1ObjectMeta(name="datasets", namespace="ml-team"),
        spec=k8s.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=k8s.V1VolumeResourceRequirements(requests={"storage": "50Gi"}),
        ),
    )


def service_account() -> k8s.V1ServiceAccount:
    return k8s.V1ServiceAccount(
        api_version="v1", kind="ServiceAccount", metadata=k8s.V1ObjectMeta(name="jmk-runner", namespace="ml-team")
    )


def role() -> k8s.V1Role:
    return k8s.V1Role(
        api_version="rbac.authorization.k8s.io/v1",
        kind="Role",
        metadata=k8s.V1ObjectMeta(name="jmk:job-reader", namespace="ml-team"),
        rules=[k8s.V1PolicyRule(api_groups=["batch"], resources=["jobs"], verbs=["get", "list", "watch"])],
    )


def role_binding() -> k8s.V1RoleBinding:
    return k8s.V1RoleBinding(
        api_version="rbac.authorization.k8s.io/v1",
        kind="RoleBinding",
        metadata=k8s.V1ObjectMeta(name="jmk:job-reader", namespace="ml-team"),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="jmk:job-reader"),
        subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name="jmk-runner", namespace="ml-team")],
    )


BUILDERS: dict[str, Callable[[], Any]] = {
    "Job": job,
    "CronJob": cron_job,
    "Deployment": deployment,
    "Service": service,
    "Pod": pod,
    "ConfigMap": config_map,
    "Secret": secret,
    "Namespace": namespace,
    "PersistentVolumeClaim": claim,
    "ServiceAccount": service_account,
    "Role": role,
    "RoleBinding": role_binding,
}


@pytest.mark.parametrize("kind", BUILDERS)
def test_valid_manifest_passes_every_supported_version(kind: str) -> None:
    model = BUILDERS[kind]()
    assert as_manifest(model)["kind"] == kind
    validate_manifest(model)


# -- the schemas: unknown fields, wrong types, versions --------------------------------------


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    if manifest["kind"] != "Pod":
        spec = spec["template"]["spec"]
    return spec


def first_container(manifest: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(manifest)["containers"][0]


def invalid(builder: Callable[[], Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    manifest = as_manifest(builder())
    change(manifest)
    return manifest


def assertion_message(manifest: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(AssertionError) as caught:
        validate_manifest(manifest, **kwargs)
    return str(caught.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda m: first_container(m).update(gpu=1),
            "1.27-1.37: spec.template.spec.containers[0]: Additional properties are not allowed ('gpu' was unexpected)",
        ),
        (
            lambda m: m["spec"].update(backoffLimt=3),
            "1.27-1.37: spec: Additional properties are not allowed ('backoffLimt' was unexpected)",
        ),
        (
            lambda m: m["spec"].update(backoffLimit="3"),
            "1.27-1.37: spec.backoffLimit: '3' is not of type 'integer', 'null'",
        ),
        (
            lambda m: first_container(m)["resources"]["limits"].update(cpu=[4]),
            "1.27-1.37: spec.template.spec.containers[0].resources.limits.cpu: [4] is not valid under any of the given schemas",
        ),
    ],
    ids=["unknown-container-field", "misspelt-field", "wrong-type", "quantity-not-scalar"],
)
def test_strict_schemas_catch(change: Callable[[dict[str, Any]], object], expected: str) -> None:
    assert expected in assertion_message(invalid(job, change))


def test_every_schema_error_is_reported_not_just_the_first() -> None:
    def two_mistakes(manifest: dict[str, Any]) -> None:
        manifest["spec"]["backoffLimt"] = 3
        first_container(manifest)["gpu"] = 1

    message = assertion_message(invalid(job, two_mistakes))
    assert "('backoffLimt' was unexpected)" in message
    assert "('gpu' was unexpected)" in message


def test_field_added_later_fails_only_older_versions() -> None:
    manifest = invalid(job, lambda m: m["spec"].update(podReplacementPolicy="Failed"))
    message = assertion_message(manifest)
    assert "  1.27: spec: Additional properties are not allowed ('podReplacementPolicy' was unexpected)" in message
    validate_manifest(manifest, versions=SUPPORTED_VERSIONS[1:])


def test_field_removed_fails_only_newer_versions() -> None:
    # PodResourceClaim.source was replaced by resourceClaimName in 1.31.
    claim_ref = {"name": "gpu", "source": {"resourceClaimTemplateName": "one-gpu"}}
    manifest = invalid(job, lambda m: pod_spec(m).update(resourceClaims=[claim_ref]))
    message = assertion_message(manifest)
    assert (
        "  1.31-1.37: spec.template.spec.resourceClaims[0]: Additional properties are not allowed ('source'" in message
    )
    assert "1.30" not in message
    validate_manifest(manifest, versions=("1.27", "1.28", "1.29", "1.30"))


def test_removed_api_version_has_no_schema() -> None:
    message = assertion_message(invalid(cron_job, lambda m: m.update(apiVersion="batch/v1beta1")))
    assert "  1.27-1.37: apiVersion: no schema for kind CronJob in apiVersion batch/v1beta1" in message


def test_unsupported_version_is_an_error_not_a_pass() -> None:
    with pytest.raises(VersionNotSupportedError):
        validate_manifest(job(), versions=("1.99",))


@pytest.mark.parametrize("version", ["1.27", "1.32", "1.37"])
def test_schemas_agree_with_kubernetes_validate(version: str) -> None:
    manifest = as_manifest(job())
    assert kubernetes_validate.validate(manifest, version, strict=True) == version
    assert schema_problems(manifest, version) == []
    first_container(manifest)["gpu"] = 1
    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(manifest, version, strict=True)
    assert schema_problems(manifest, version) == [f"{json_path(caught.value.path)}: {caught.value.message}"]


def test_our_checks_are_part_of_validate_manifest() -> None:
    manifest = invalid(job, lambda m: pod_spec(m).update(restartPolicy="Always"))
    assert schema_problems(manifest, "1.37") == []
    assert (
        "  1.27-1.37: spec.template.spec.restartPolicy: unsupported value 'Always': supported values: 'OnFailure', 'Never'"
        in assertion_message(manifest)
    )


# -- our own checks, one broken rule at a time ---------------------------------------------


def set_gpu(limit: str | None = None, request: str | None = None) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        resources = first_container(manifest)["resources"]
        resources["limits"].pop("nvidia.com/gpu")
        if limit is not None:
            resources["limits"]["nvidia.com/gpu"] = limit
        if request is not None:
            resources["requests"]["nvidia.com/gpu"] = request

    return change


def add_container(manifest: dict[str, Any], section: str = "containers") -> None:
    pod_spec(manifest).setdefault(section, []).append({"name": "cell", "image": "busybox:1.36"})


CONTAINER = "spec.template.spec.containers[0]"
RESOURCES = f"{CONTAINER}.resources"
TOO_LONG = "x" * 64

# fmt: off
CASES = [
    # metadata
    (job, lambda m: m["metadata"].update(name="My_Job"), "metadata.name", "a lowercase RFC 1123 subdomain must"),
    (job, lambda m: m["metadata"].update(name="a" * 64), "metadata.name", "no more than 63 characters: a Job's name"),
    (job, lambda m: m["metadata"].pop("name"), "metadata.name", "name or generateName is required"),
    (job, lambda m: m["metadata"].update(name=None, generateName="Train-"), "metadata.generateName", "RFC 1123"),
    (job, lambda m: m["metadata"].update(namespace="ML_Team"), "metadata.namespace", "RFC 1123 label"),
    (job, lambda m: m["metadata"]["labels"].update({"jmk/job-id": TOO_LONG}), "metadata.labels['jmk/job-id']", "no more than 63"),
    (job, lambda m: m["metadata"]["labels"].update({"team name": "a"}), "metadata.labels", "name part must consist of"),
    (job, lambda m: m["spec"]["template"]["metadata"]["labels"].update(run="a b"), "spec.template.metadata.labels.run", "a valid label"),
    (job, lambda m: m["metadata"].update(annotations={"a/b/c": "y"}), "metadata.annotations", "optional DNS subdomain prefix"),
    (cron_job, lambda m: m["metadata"].update(name="n" * 53), "metadata.name", "no more than 52 characters"),
    (service, lambda m: m["metadata"].update(name="1-model"), "metadata.name", "a DNS-1035 label must"),
    (namespace, lambda m: m["metadata"].update(name="ml.team"), "metadata.name", "must not contain dots"),
    (role, lambda m: m["metadata"].update(name="jobs/reader"), "metadata.name", "may not contain '/'"),
    # containers
    (job, lambda m: first_container(m).update(name="Main"), f"{CONTAINER}.name", "RFC 1123 label"),
    (job, add_container, "spec.template.spec.containers[1].name", "duplicate value 'cell'"),
    (job, lambda m: add_container(m, "initContainers"), "spec.template.spec.initContainers[0].name", "duplicate value"),
    (job, lambda m: first_container(m).pop("image"), f"{CONTAINER}.image", "required value"),
    (job, lambda m: first_container(m).update(imagePullPolicy="always"), f"{CONTAINER}.imagePullPolicy", "'IfNotPresent'"),
    (job, lambda m: first_container(m)["env"][0].update(name="1_URI"), f"{CONTAINER}.env[0].name", "must not start with a digit"),
    (deployment, lambda m: first_container(m)["ports"][0].update(containerPort=70000), f"{CONTAINER}.ports[0].containerPort", "between 1 and 65535"),
    # resources
    (job, lambda m: first_container(m)["resources"]["limits"].update(cpu="1.5.0"), f"{RESOURCES}.limits.cpu", "must be a number with"),
    (job, lambda m: first_container(m)["resources"]["requests"].update(memory="-1"), f"{RESOURCES}.requests.memory", "greater than or equal to 0"),
    (job, lambda m: first_container(m)["resources"]["limits"].update(cpu=4), f"{RESOURCES}.limits.cpu", "invalid value 4: must be a string"),
    (job, set_gpu(limit="0.5"), f"{RESOURCES}.limits['nvidia.com/gpu']", "must be an integer"),
    (job, set_gpu(limit="2", request="1"), f"{RESOURCES}.requests['nvidia.com/gpu']", "must be equal to the nvidia.com/gpu limit of '2'"),
    (job, set_gpu(request="1"), f"{RESOURCES}.limits['nvidia.com/gpu']", "required value: nvidia.com/gpu cannot be overcommitted"),
    (job, lambda m: first_container(m)["resources"]["requests"].update(cpu="4500m"), f"{RESOURCES}.requests.cpu", "less than or equal to the cpu limit of '4'"),
    (job, lambda m: first_container(m)["resources"]["limits"].update(gpu="1"), f"{RESOURCES}.limits.gpu", "e.g. 'nvidia.com/gpu'"),
    # restart policies
    (job, lambda m: pod_spec(m).update(restartPolicy="Always"), "spec.template.spec.restartPolicy", "supported values: 'OnFailure', 'Never'"),
    (job, lambda m: pod_spec(m).pop("restartPolicy"), "spec.template.spec.restartPolicy", "the default, 'Always', is not allowed"),
    (pod, lambda m: pod_spec(m).update(restartPolicy="Sometimes"), "spec.restartPolicy", "'Always', 'OnFailure', 'Never'"),
    (deployment, lambda m: pod_spec(m).update(restartPolicy="Never"), "spec.template.spec.restartPolicy", "supported values: 'Always'"),
    (cron_job, lambda m: pod_spec(m).update(restartPolicy="Always"), "spec.jobTemplate.spec.template.spec.restartPolicy", "'OnFailure', 'Never'"),
    # volumes
    (job, lambda m: pod_spec(m).pop("volumes"), f"{CONTAINER}.volumeMounts[0].name", "not found 'cell'"),
    (job, lambda m: pod_spec(m)["volumes"].append({"name": "cell", "emptyDir": {}}), "spec.template.spec.volumes[1].name", "duplicate value 'cell'"),
    (job, lambda m: pod_spec(m)["volumes"].append({"name": "scratch"}), "spec.template.spec.volumes[1]", "must specify a volume type"),
    (job, lambda m: pod_spec(m)["volumes"][0].update(emptyDir={}), "spec.template.spec.volumes[0]", "may not specify more than 1 volume type"),
    (job, lambda m: first_container(m)["volumeMounts"].append({"name": "cell", "mountPath": "/jmk/cell"}), f"{CONTAINER}.volumeMounts[1].mountPath", "must be unique"),
    # Job and CronJob specs
    (job, lambda m: m["spec"].update(backoffLimit=-1), "spec.backoffLimit", "greater than or equal to 0"),
    (cron_job, lambda m: m["spec"].update(schedule="61 * * * *"), "spec.schedule", "61 is above the maximum (minute: 0-59)"),
    (cron_job, lambda m: m["spec"].update(concurrencyPolicy="Sometimes"), "spec.concurrencyPolicy", "'Allow', 'Forbid', 'Replace'"),
    (cron_job, lambda m: m["spec"].update(timeZone="Local"), "spec.timeZone", "explicit IANA time zone"),
    (cron_job, lambda m: m["spec"].update(timeZone="Europe/../Paris"), "spec.timeZone", "unknown time zone"),
    (cron_job, lambda m: m["spec"].update(failedJobsHistoryLimit=-1), "spec.failedJobsHistoryLimit", "greater than or equal to 0"),
    # Deployment and Service
    (deployment, lambda m: m["spec"]["selector"]["matchLabels"].update(tier="gpu"), "spec.template.metadata.labels", "must include every label"),
    (service, lambda m: m["spec"]["ports"][0].update(port=0), "spec.ports[0].port", "between 1 and 65535"),
    (service, lambda m: m["spec"]["ports"][0].update(targetPort="http_port"), "spec.ports[0].targetPort", "alpha-numeric characters"),
    (service, lambda m: m["spec"]["ports"].append({"port": 9090}), "spec.ports[1].name", "must name each of them"),
    (service, lambda m: m["spec"].update(type="Internal"), "spec.type", "'ClusterIP', 'NodePort', 'LoadBalancer'"),
    # ConfigMap, Secret, PersistentVolumeClaim
    (config_map, lambda m: m["data"].update({"my cell.py": ""}), "data['my cell.py']", "a valid config key"),
    (config_map, lambda m: m["data"].update({"big.txt": "x" * 1024 * 1024}), "data, binaryData", "at most 1048576 bytes"),
    (secret, lambda m: m["data"].update(TOKEN="not base64!"), "data.TOKEN", "must be base64-encoded"),
    (claim, lambda m: m["spec"]["resources"].pop("requests"), "spec.resources.requests.storage", "required value"),
    (claim, lambda m: m["spec"].update(accessModes=["ReadWriteAlways"]), "spec.accessModes[0]", "unsupported value"),
    (claim, lambda m: m["spec"]["resources"]["requests"].update(storage="0"), "spec.resources.requests.storage", "greater than zero"),
]
# fmt: on


@pytest.mark.parametrize(("builder", "change", "path", "fragment"), CASES)
def test_check_manifest_reports_the_broken_rule_at_its_path(
    builder: Callable[[], Any], change: Callable[[dict[str, Any]], object], path: str, fragment: str
) -> None:
    manifest = as_manifest(builder())
    assert check_manifest(manifest) == []
    change(manifest)
    problems = check_manifest(manifest)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems
    assert fragment in problems[0]


@pytest.mark.parametrize(
    ("request_", "limit", "within"),
    [
        ("4000m", "4", True),
        ("0.5", "500m", True),
        ("1Gi", "1024Mi", True),
        ("1e3", "1k", True),
        ("1Gi", "1000Mi", False),
        ("1Ei", "1E", False),
        ("1001m", "1", False),
    ],
)
def test_requests_and_limits_compare_by_amount(request_: str, limit: str, within: bool) -> None:
    def change(manifest: dict[str, Any]) -> None:
        first_container(manifest)["resources"]["requests"]["memory"] = request_
        first_container(manifest)["resources"]["limits"]["memory"] = limit

    problems = check_manifest(invalid(job, change))
    assert problems == (
        []
        if within
        else [
            f"{RESOURCES}.requests.memory: invalid value {request_!r}: must be less than or equal to the memory limit of {limit!r}"
        ]
    )


def test_generate_name_may_end_with_a_dash() -> None:
    manifest = invalid(job, lambda m: m["metadata"].update(name=None, generateName="train-"))
    assert check_manifest(manifest) == []
    validate_manifest(manifest)


def test_secret_values_are_never_quoted_back() -> None:
    manifest = invalid(secret, lambda m: m["data"].update(TOKEN="hunter2 is my password"))
    assert "hunter2" not in "\n".join(check_manifest(manifest))


def test_unknown_time_zone() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        zoneinfo.ZoneInfo("Etc/UTC")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database on this machine")
    manifest = invalid(cron_job, lambda m: m["spec"].update(timeZone="Europe/Berln"))
    assert check_manifest(manifest) == [
        "spec.timeZone: invalid value 'Europe/Berln': unknown time zone: use an IANA name such as 'Europe/Berlin' or 'Etc/UTC'"
    ]


def test_unknown_kinds_get_their_metadata_checked() -> None:
    manifest = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "Big_Widget"}, "spec": {}}
    assert [problem.split(":")[0] for problem in check_manifest(manifest)] == ["metadata.name"]


def test_ensure_valid_raises_a_usage_error_listing_every_problem() -> None:
    ensure_valid(as_manifest(job()))

    def two_mistakes(manifest: dict[str, Any]) -> None:
        manifest["metadata"]["name"] = "My_Job"
        first_container(manifest)["resources"]["limits"]["nvidia.com/gpu"] = "0.5"

    manifest = invalid(job, two_mistakes)
    with pytest.raises(InvalidManifest) as caught:
        ensure_valid(manifest)
    error = caught.value
    assert isinstance(error, JMKUsageError)
    assert isinstance(error, ValueError)
    assert error.problems == check_manifest(manifest)
    assert len(error.problems) == 2
    assert str(error).splitlines() == ["Job 'My_Job' is invalid:", *(f"  {problem}" for problem in error.problems)]


# -- the checks on single values -----------------------------------------------------------


@pytest.mark.parametrize("name", ["my-name", "123-abc", "a", "a" * 63])
def test_dns1123_label_accepts(name: str) -> None:
    assert check_dns1123_label(name, "metadata.name") == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "My_Job",
            "metadata.name: invalid value 'My_Job': a lowercase RFC 1123 label must consist of lower case alphanumeric "
            "characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc', "
            "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        ),
        ("my.name", "metadata.name: invalid value 'my.name': must not contain dots"),
        ("a" * 64, f"metadata.name: invalid value '{'a' * 64}': must be no more than 63 characters"),
    ],
)
def test_dns1123_label_rejects(name: str, expected: str) -> None:
    assert check_dns1123_label(name, "metadata.name") == [expected]


@pytest.mark.parametrize("name", ["-job", "job-", "", "jób"])
def test_dns1123_label_rejects_edges(name: str) -> None:
    assert len(check_dns1123_label(name, "x")) == 1


@pytest.mark.parametrize(
    ("name", "valid"), [("model-server", True), ("m1", True), ("1-model", False), ("model.v1", False)]
)
def test_dns1035_label_must_start_with_a_letter(name: str, valid: bool) -> None:
    assert (check_dns1035_label(name, "metadata.name") == []) is valid


@pytest.mark.parametrize("name", ["example.com", "train-3f9a2c", "a.b-c.d", "a" * 253])
def test_dns1123_subdomain_accepts(name: str) -> None:
    assert check_dns1123_subdomain(name, "metadata.name") == []


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("a..b", "a lowercase RFC 1123 subdomain must"),
        (".a", "a lowercase RFC 1123 subdomain must"),
        ("Example.com", "a lowercase RFC 1123 subdomain must"),
        ("a" * 254, "must be no more than 253 characters"),
    ],
)
def test_dns1123_subdomain_rejects(name: str, fragment: str) -> None:
    (problem,) = check_dns1123_subdomain(name, "metadata.name")
    assert problem.startswith(f"metadata.name: invalid value '{name}': ")
    assert fragment in problem


@pytest.mark.parametrize(
    "quantity",
    [
        "1",
        "0",
        "500m",
        "1.5",
        ".5",
        "1.",
        "+2",
        "16Gi",
        "1Ki",
        "2Ei",
        "100n",
        "10u",
        "3k",
        "1E",
        "1e3",
        "2E-2",
        "0.5Gi",
    ],
)
def test_quantity_accepts(quantity: str) -> None:
    assert check_quantity(quantity, "limits.cpu") == []


@pytest.mark.parametrize(
    ("quantity", "fragment"),
    [
        ("1.5.0", "must be a number with an optional suffix"),
        ("", "must be a number with an optional suffix"),
        (".", "must be a number with an optional suffix"),
        ("1 Gi", "must be a number with an optional suffix"),
        ("1gi", "must be a number with an optional suffix"),
        ("1KiB", "must be a number with an optional suffix"),
        ("1e", "must be a number with an optional suffix"),
        ("1e1.5", "must be a number with an optional suffix"),
        ("-1", "must be greater than or equal to 0"),
        ("-0.5Gi", "must be greater than or equal to 0"),
        (1, "must be a string"),
        (0.5, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_quantity_rejects(quantity: object, fragment: str) -> None:
    (problem,) = check_quantity(quantity, "limits.cpu")
    assert problem.startswith(f"limits.cpu: invalid value {quantity!r}: ")
    assert fragment in problem


@pytest.mark.parametrize(
    "schedule",
    [
        "@hourly",
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@every 1h30m",
        "@every 90s",
        "@every 1.5h",
        "*/5 1-3 * JAN-MAR mon-fri",
        "0 0 * * *",
        "59 23 31 12 6",
        "0 0 1 1 0",
        "0,15,30,45 * * * *",
        "0 9-17/2 * * MON,wed,Fri",
        "0 0 ? * SUN",
        "5/15 * * * *",
        "0 0 1-7 * 1",
        "  0  0  *  *  *  ",
    ],
)
def test_cron_accepts(schedule: str) -> None:
    assert check_cron(schedule, "spec.schedule") == []


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        ("61 * * * *", "minute field '61': 61 is above the maximum (minute: 0-59)"),
        ("* 24 * * *", "hour field '24': 24 is above the maximum"),
        ("* * 0 * *", "day of month field '0': 0 is below the minimum (day of month: 1-31)"),
        ("* * * 13 *", "month field '13': 13 is above the maximum"),
        ("* * * * 7", "day of week field '7': 7 is above the maximum (day of week: 0-6 or SUN-SAT, Sunday is 0)"),
        ("* * *", "expected exactly 5 fields (minute hour day-of-month month day-of-week), found 3"),
        ("0 0 * * * *", "expected exactly 5 fields"),
        ("30 5-1 * * *", "hour field '5-1': the range '5-1' starts after it ends"),
        ("*/0 * * * *", "the step in '*/0' must be a positive number"),
        ("1-2-3 * * * *", "too many hyphens"),
        ("*/2/3 * * * *", "too many slashes"),
        ("x * * * *", "minute field 'x': 'x' is not a number"),
        ("* * * JANUARY *", "'JANUARY' is neither a number nor a month name (1-12 or JAN-DEC)"),
        ("* * * * MON-FRY", "'FRY' is neither a number nor a day of week name"),
        ("@Hourly", "unrecognized descriptor '@Hourly'"),
        ("@every 1h30", "@every needs a duration"),
        ("@every", "unrecognized descriptor '@every'"),
        ("", "empty schedule"),
    ],
)
def test_cron_rejects(schedule: str, fragment: str) -> None:
    (problem,) = check_cron(schedule, "spec.schedule")
    assert problem.startswith(f"spec.schedule: invalid value {schedule!r}: ")
    assert fragment in problem


@pytest.mark.parametrize("schedule", ["CRON_TZ=UTC 0 * * * *", "TZ=Europe/Berlin 30 2 * * *"])
def test_cron_refuses_a_time_zone_in_the_schedule(schedule: str) -> None:
    assert check_cron(schedule, "spec.schedule") == [
        f"spec.schedule: invalid value {schedule!r}: cannot use TZ or CRON_TZ in schedule, use the CronJob's "
        "timeZone field instead (e.g. schedule '0 3 * * *' with timeZone 'Europe/Berlin')"
    ]


def test_cron_checks_every_field() -> None:
    problems = check_cron("60 24 * * *", "--schedule")
    assert [problem.split(": ")[2] for problem in problems] == ["minute field '60'", "hour field '24'"]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (["metadata", "name"], "metadata.name"),
        (
            ["spec", "containers", 0, "resources", "limits", "nvidia.com/gpu"],
            "spec.containers[0].resources.limits['nvidia.com/gpu']",
        ),
        (["metadata", "labels", "app.kubernetes.io/name"], "metadata.labels['app.kubernetes.io/name']"),
        ([], ""),
    ],
)
def test_json_path(parts: list[str | int], expected: str) -> None:
    assert json_path(parts) == expected
