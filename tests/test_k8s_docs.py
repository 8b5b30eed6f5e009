"""The Kubernetes docs and files for platform teams, held to the code they describe (no cluster, no Docker).

- ``docs/kubernetes-rbac.yaml``: valid for Kubernetes 1.27-1.37, and its Role grants every request
  the ``jupyter_mlflow_k8s/backends/kubernetes/`` package makes;
- ``docker/runner/Dockerfile``: torch pinned as in ``constraints.txt``, this package installed with
  ``-c constraints.txt``, a non-root user, a build context that keeps what it copies;
- ``docs/kubernetes.md``: every setting, credential variable and preset key named, the storage errors
  quoted as the backend words them, and its configuration example building valid Jobs.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_manifests import validate_manifest
from traitlets.config import Config

from jupyter_mlflow_k8s.backends import kubernetes as backend_module
from jupyter_mlflow_k8s.backends.kubernetes import CREDENTIAL_VARIABLES, KubernetesBackend
from jupyter_mlflow_k8s.backends.kubernetes.manifests import (
    PAYLOAD_LIMIT,
    build_env_secret,
    build_job,
    build_payload_secret,
    job_name,
)
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.k8s.presets import PRESET_KEYS
from jupyter_mlflow_k8s.k8s.validation import check_manifest
from jupyter_mlflow_k8s.models import JobRecord, JobSpec

ROOT = Path(__file__).resolve().parent.parent
RBAC = ROOT / "docs" / "kubernetes-rbac.yaml"
DOC = ROOT / "docs" / "kubernetes.md"
INDEX = ROOT / "docs" / "index.md"
DOCKERFILE = ROOT / "docker" / "runner" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

Request = tuple[str, str, str]  # (apiGroup, resource, verb), as RBAC sees a request

# Every method of the Kubernetes client that jupyter_mlflow_k8s/backends/kubernetes/__init__.py calls, and the
# requests it makes, read from the code:
#   KubernetesBackend.check_cluster: read_namespace (a 403 is ignored), create_self_subject_access_review
#       (may I create jobs / secrets here?)
#   KubernetesBackend.most_gpus_on_a_node: list_node (an ApiException skips the GPU warning)
#   KubernetesBackend.launch: create_namespaced_secret (<job>-env), create_namespaced_job,
#       delete_namespaced_secret (when the Job is refused), patch_namespaced_secret (the Job becomes its owner);
#       for a distributed job create_namespaced_service (its headless Service) and create_namespaced_job (each
#       rank's Job; once per namespace a dry run, to ask whether the cluster has Indexed Jobs)
#   KubernetesBackend.cancel and delete_job: delete_namespaced_job, delete_namespaced_service (a gang's)
#   ClusterWatch._list: list_namespaced_job and list_namespaced_pod, each also with watch=True
#   KubernetesBackend.read_pod_log (LogPump._copy, the gang's failure scan): GET of the pod's log through
#       k8s.raw_request (the generated read_namespaced_pod_log has no sinceTime)
# test_the_request_list_is_the_backends_own fails when the backend calls a method or a raw path not listed here.
API_CALLS: dict[str, set[Request]] = {
    "read_namespace": {("", "namespaces", "get")},
    "create_self_subject_access_review": {("authorization.k8s.io", "selfsubjectaccessreviews", "create")},
    "list_node": {("", "nodes", "list")},
    "create_namespaced_secret": {("", "secrets", "create")},
    "patch_namespaced_secret": {("", "secrets", "patch")},
    "delete_namespaced_secret": {("", "secrets", "delete")},
    "create_namespaced_job": {("batch", "jobs", "create")},
    "delete_namespaced_job": {("batch", "jobs", "delete")},
    "create_namespaced_service": {("", "services", "create")},
    "delete_namespaced_service": {("", "services", "delete")},
    "list_namespaced_job": {("batch", "jobs", "list"), ("batch", "jobs", "watch")},
    "list_namespaced_pod": {("", "pods", "list"), ("", "pods", "watch")},
    "list_namespaced_event": {("", "events", "list")},
}
# The backend's raw_request calls (method, path as written in the code) and the requests they make.
RAW_CALLS: dict[tuple[str, str], set[Request]] = {
    ("GET", "/api/v1/namespaces/{namespace}/pods/{pod}/log"): {("", "pods/log", "get")},
}
# Requests the namespaced Role does not grant: every authenticated user may create selfsubjectaccessreviews
# (ClusterRole system:basic-user); a 403 on reading the namespace is ignored; nodes are cluster-scoped,
# for the optional ClusterRole.
NOT_FROM_THE_ROLE: set[Request] = {
    ("authorization.k8s.io", "selfsubjectaccessreviews", "create"),
    ("", "namespaces", "get"),
    ("", "nodes", "list"),
}
FROM_THE_CLUSTER_ROLE: set[Request] = {("", "nodes", "list")}


# -- RBAC ------------------------------------------------------------------------------------


def rbac_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc is not None]


def the(kind: str) -> dict[str, Any]:
    (doc,) = [doc for doc in rbac_documents() if doc["kind"] == kind]
    return doc


def granted(rules: list[dict[str, Any]], request: Request) -> bool:
    """Whether one of ``rules`` allows ``request`` on any object, as the RBAC authorizer decides."""
    group, resource, verb = request
    for rule in rules:
        if rule.get("resourceNames") or rule.get("nonResourceURLs"):
            continue  # limited to named objects (no create, list or watch of any), or not about resources
        if (
            any(g in ("*", group) for g in rule.get("apiGroups", []))
            and any(r in ("*", resource) for r in rule.get("resources", []))
            and any(v in ("*", verb) for v in rule.get("verbs", []))
        ):
            return True
    return False


def backend_requests() -> set[Request]:
    return set().union(*API_CALLS.values(), *RAW_CALLS.values())


def test_the_request_list_is_the_backends_own() -> None:
    source = inspect.getsource(backend_module)
    classes = set(re.findall(r"kubernetes\.client\.(\w+Api)\(", source))
    assert classes, "the backend makes no API client any more: read it again and update API_CALLS"
    import kubernetes

    api_classes = [getattr(kubernetes.client, name) for name in classes]
    # The generated client's API operations, each with its *_with_http_info twin (not close, api_client ...).
    methods = {name for cls in api_classes for name in dir(cls) if hasattr(cls, f"{name}_with_http_info")}
    called = set(re.findall(r"\.(\w+)\(", source)) & methods
    assert called == set(API_CALLS), (
        f"kubernetes.py now calls {sorted(called - set(API_CALLS))} and no longer {sorted(set(API_CALLS) - called)}: "
        "update API_CALLS and docs/kubernetes-rbac.yaml"
    )
    raw = set(re.findall(r'raw_request\(self\.api, "(\w+)", f?"([^"]+)"', source))
    assert raw == set(RAW_CALLS), f"the backend's raw requests are now {sorted(raw)}: update RAW_CALLS and the Role"


def test_every_rbac_document_is_valid_for_kubernetes_1_27_to_1_37() -> None:
    documents = rbac_documents()
    assert [doc["kind"] for doc in documents] == ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]
    for doc in documents:
        validate_manifest(doc)
        assert check_manifest(doc) == []


def test_the_role_grants_every_request_the_backend_makes_in_a_namespace() -> None:
    role = the("Role")
    assert role["metadata"]["namespace"] == "team-a"
    needed = backend_requests() - NOT_FROM_THE_ROLE
    assert ("", "pods/log", "get") in needed
    missing = sorted(request for request in needed if not granted(role["rules"], request))
    assert not missing, f"the Role lacks {missing}"


def test_the_role_grants_no_more_than_the_page_explains() -> None:
    role = the("Role")
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
    resources = {
        (group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
    }
    assert resources == {("batch", "jobs"), ("", "pods"), ("", "pods/log"), ("", "secrets"), ("", "events"),
                         ("", "services"), ("", "services/proxy"), ("", "pods/proxy")}


def test_the_optional_cluster_role_only_reads_nodes() -> None:
    rules = the("ClusterRole")["rules"]
    assert all(granted(rules, request) for request in FROM_THE_CLUSTER_ROLE)
    assert {verb for rule in rules for verb in rule["verbs"]} <= {"get", "list", "watch"}
    assert {resource for rule in rules for resource in rule["resources"]} == {"nodes"}


def test_the_bindings_bind_those_roles_to_the_same_service_account() -> None:
    role, cluster_role = the("Role"), the("ClusterRole")
    binding, cluster_binding = the("RoleBinding"), the("ClusterRoleBinding")
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert cluster_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    assert binding["subjects"] == cluster_binding["subjects"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "jupyterhub-user", "namespace": "team-a"}]


@pytest.mark.parametrize(
    ("rule", "request_"),
    [
        ({"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "list"]}, ("batch", "jobs", "watch")),
        ({"apiGroups": [""], "resources": ["jobs"], "verbs": ["create"]}, ("batch", "jobs", "create")),
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, ("", "pods/log", "get")),
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"], "resourceNames": ["p"]}, ("", "pods", "list")),
    ],
)
def test_granted_refuses_what_a_rule_does_not_allow(rule: dict[str, Any], request_: Request) -> None:
    assert not granted([rule], request_)
    assert granted([{**rule, "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "resourceNames": []}], request_)


# -- the runner image ------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            keyword, _, arguments = current.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_args() -> dict[str, str]:
    return dict(
        arguments.partition("=")[::2]
        for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text())
        if keyword == "ARG"
    )


def constraint_pin(package: str) -> str:
    pins = re.findall(rf"^{package}==(\S+)\s*$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert len(pins) == 1, f"constraints.txt pins {package} {len(pins)} times"
    return pins[0]


def test_the_image_pins_torch_as_constraints_txt_does() -> None:
    assert dockerfile_args()["TORCH_VERSION"] == constraint_pin("torch")
    examples_pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert examples_pin is not None and examples_pin.group(1) == constraint_pin("torch")


def test_the_image_installs_torch_and_this_package_with_the_constraints() -> None:
    runs = [arguments for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text()) if keyword == "RUN"]
    pip_installs = [run for run in runs if "pip install" in run]
    torch_installs = [run for run in pip_installs if '"torch==${TORCH_VERSION}"' in run]
    package_installs = [run for run in pip_installs if '".[s3,gpu]"' in run]  # gpu: nvidia-ml-py, GPU metrics
    assert len(torch_installs) == 1 and len(package_installs) == 1, pip_installs
    for run in torch_installs + package_installs:
        assert "pip install -c constraints.txt" in run, run
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_installs[0]
    assert dockerfile_args()["TORCH_INDEX_URL"] == "", "no index is built in: the builder passes TORCH_INDEX_URL"


def test_the_image_is_a_pinned_cuda_runtime_running_as_a_user_without_an_entrypoint() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    keywords = [keyword for keyword, _ in instructions]
    args = dockerfile_args()
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", args["CUDA_IMAGE"])
    assert [arguments for keyword, arguments in instructions if keyword == "FROM"] == ["${CUDA_IMAGE}"]
    assert "ENTRYPOINT" not in keywords and "CMD" not in keywords
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users == ["${NB_UID}:${NB_GID}"] and keywords[-1] == "USER"
    assert args["NB_UID"] == "1000" and args["NB_USER"] == "jovyan"
    env = " ".join(arguments for keyword, arguments in instructions if keyword == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    assert re.search(r"\bHOME=/home/\$\{NB_USER\}", env)
    assert "python3.11" in " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")


def test_every_run_step_is_valid_shell() -> None:
    runs = [arguments for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text()) if keyword == "RUN"]
    assert runs
    for run in runs:
        checked = subprocess.run(["sh", "-n", "-c", run], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"{run}\n{checked.stderr}"


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``path`` (relative to the context) out; '!' lines re-include."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(prefix, pattern.removeprefix("**/"))
            for prefix in prefixes
        ):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_build_context_keeps_what_the_image_copies_and_drops_the_rest() -> None:
    patterns = dockerignore_patterns()
    copies = [
        arguments.split()[:-1]
        for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text())
        if keyword == "COPY"
    ]
    sources = [source for sources in copies for source in sources]
    readme = re.search(r'^readme = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert readme is not None
    assert {"constraints.txt", "pyproject.toml", readme.group(1), "jupyter_mlflow_k8s"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f".dockerignore leaves out {source}, which the Dockerfile copies"
    assert not ignored("jupyter_mlflow_k8s/backends/kubernetes/__init__.py", patterns)
    for path in (
        ".venv",
        "build",
        ".git",
        "node_modules",
        "jupyter_mlflow_k8s/__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
    ):
        assert ignored(path, patterns), f".dockerignore sends {path} to the Docker daemon"


def test_ignored_reads_patterns_as_docker_does() -> None:
    assert ignored("a/__pycache__/x.pyc", ["**/__pycache__"])
    assert not ignored("README.md", ["*.db", ".git"])
    assert not ignored("keep.db", ["*.db", "!keep.db"])


# -- docs/kubernetes.md ----------------------------------------------------------------------


def doc_text() -> str:
    return DOC.read_text()


def collapsed(text: str) -> str:
    return " ".join(text.split())


def test_the_page_names_every_setting_with_an_example() -> None:
    settings = sorted(KubernetesBackend.class_own_traits(config=True))
    assert "pods_share_filesystem" in settings
    missing = [name for name in settings if f"c.KubernetesBackend.{name} = " not in doc_text()]
    assert not missing, f"docs/kubernetes.md has no example for {missing}"


def test_the_page_names_every_credential_variable_and_preset_key() -> None:
    text = doc_text()
    assert not [name for name in CREDENTIAL_VARIABLES if f"`{name}`" not in text]
    assert not [key for key in sorted(PRESET_KEYS) if f"`{key}`" not in text]


# (storage URL, tracking URI) pairs a user may have; the page quotes what check_environment says to each.
ENVIRONMENTS = [
    ("file:///home/jovyan/.local/share/jupyter_mlflow_k8s/storage", "http://mlflow.team-a.svc:5000"),
    ("s3://team-bucket/jmk", "sqlite:////home/jovyan/.local/share/jupyter_mlflow_k8s/mlflow.db"),
    (
        "file:///home/jovyan/.local/share/jupyter_mlflow_k8s/storage",
        "sqlite:////home/jovyan/.local/share/jupyter_mlflow_k8s/mlflow.db",
    ),
]


def quoted_errors(start: str) -> set[str]:
    blocks = re.findall(r"```text\n(.*?)```", doc_text(), re.DOTALL)
    return {collapsed(block) for block in blocks if block.startswith(start)}


def backend_sends_payloads_in_secrets() -> bool:
    return "build_payload_secret(" in inspect.getsource(backend_module)


def test_the_page_quotes_exactly_the_errors_the_backend_gives_for_unreachable_stores() -> None:
    backend = KubernetesBackend(None, config=Config({"KubernetesBackend": {"namespace": "team-a"}}))
    given = set()
    for storage_url, tracking_uri in ENVIRONMENTS:
        try:
            backend.check_environment(storage_url, tracking_uri)
        except JMKUsageError as refused:
            given.add(collapsed(str(refused)))
    assert given, "check_environment refuses nothing: read it again and update the page"
    assert quoted_errors("Kubernetes pods cannot") == given


def test_the_page_says_how_payloads_travel_without_object_storage() -> None:
    text = doc_text()
    if backend_sends_payloads_in_secrets():
        assert "`<job>-payload`" in text and f"{PAYLOAD_LIMIT // 1024} KiB" in text
        record = JobRecord(job_id="1a2b3c4d", spec=JobSpec(code="x = 1", backend="kubernetes"), created=0.0)
        with pytest.raises(JMKUsageError) as refused:
            build_payload_secret(
                record, PodSettings(), "jmk-1a2b3c4d-payload", {"big": b"x" * 2 * 1024 * 1024}, user="jane"
            )
        assert quoted_errors("The job's inputs take") == {collapsed(str(refused.value))}
    else:
        assert "`<job>-payload`" not in text and not quoted_errors("The job's inputs take")


def config_example() -> Config:
    blocks = re.findall(r"```python\n(.*?)```", doc_text(), re.DOTALL)
    (example,) = [block for block in blocks if "c.KubernetesBackend.presets = {" in block]
    config = Config()
    exec(example, {"get_config": lambda: config})
    return config


def test_the_configuration_example_builds_valid_jobs_for_each_preset() -> None:
    config = config_example()
    backend = KubernetesBackend(None, config=config)
    assert backend.namespace == "team-a" and backend.image == "registry.example.com/team/jmk-runner:0.1"
    assert set(backend.presets) == {"a100", "h100"}
    for preset in backend.presets:
        record = JobRecord(
            job_id="1a2b3c4d", spec=JobSpec(code="x = 1", backend="kubernetes", preset=preset), created=1_700_000_000.0
        )
        settings = backend.pod_settings(record.spec)
        assert settings.gpus >= 1 and settings.node_selector and settings.tolerations
        name = job_name(record.job_id, "jane")
        job = build_job(
            record,
            settings,
            user="jane",
            payload_url="s3://team-bucket/jmk/jobs/1a2b3c4d/payload.json",
            env_secret=f"{name}-env",
        )
        validate_manifest(job)
        validate_manifest(build_env_secret(record, settings, f"{name}-env", {"AWS_ACCESS_KEY_ID": "x"}, user="jane"))


def test_the_index_links_the_page() -> None:
    assert "(kubernetes.md)" in INDEX.read_text()


def test_the_page_and_the_dockerfile_name_no_package_index_host() -> None:
    for path in (DOC, DOCKERFILE, RBAC):
        urls = re.findall(r"https?://([^/\s`\"')]+)", path.read_text())
        assert set(urls) <= {"mlflow.team-a.svc:5000", "mlflow.example:5000", "...:"}, (path, urls)
