"""docs/jupyterhub.md's files, held to the code: valid manifests, Helm values the chart reads, Roles that grant
what the package asks for, and (on the test control plane) a service account that passes the package's own
access check with exactly those manifests applied.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import pkgutil
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_manifests import validate_manifest
from traitlets.config import Config

from jupyter_mlflow_k8s.backends import kubernetes as backend_module
from jupyter_mlflow_k8s.backends.kubernetes import NEEDED_ACCESS, KubernetesBackend
from jupyter_mlflow_k8s.backends.local import LocalBackend
from jupyter_mlflow_k8s.config import JMKSettings
from jupyter_mlflow_k8s.exceptions import JMKUsageError
from jupyter_mlflow_k8s.k8s.objects import KINDS
from jupyter_mlflow_k8s.k8s.pods import PodSettings
from jupyter_mlflow_k8s.models import JobSpec
from jupyter_mlflow_k8s.pipelines import schedule as schedule_module
from jupyter_mlflow_k8s.serving import kubernetes as serving_module
from jupyter_mlflow_k8s.serving import targets as targets_module

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "docs" / "jupyterhub"
VALUES = FOLDER / "values.yaml"
DOC = ROOT / "docs" / "jupyterhub.md"
DOCKERFILE = ROOT / "docker" / "singleuser" / "Dockerfile"
MLFLOW_DOCKERFILE = ROOT / "docker" / "mlflow" / "Dockerfile"
# The users' Role, in both layouts (rbac-hub-user-namespaces.yaml is the hub's, for the per-user layout).
RBAC_FILES = [FOLDER / "rbac-per-user-namespace.yaml", FOLDER / "rbac-shared-namespace.yaml"]

Request = tuple[str, str, str]  # (apiGroup, resource, verb), as RBAC sees a request; "update|patch": either will do

# The resource each method name of the official client acts on: {verb}_namespaced_{resource}.
RESOURCES = {
    "job": ("batch", "jobs"),
    "cron_job": ("batch", "cronjobs"),
    "pod": ("", "pods"),
    "pod_log": ("", "pods/log"),
    "secret": ("", "secrets"),
    "config_map": ("", "configmaps"),
    "event": ("", "events"),
    "service": ("", "services"),
    "deployment": ("apps", "deployments"),
    "horizontal_pod_autoscaler": ("autoscaling", "horizontalpodautoscalers"),
}
VERBS = {"create": "create", "read": "get", "replace": "update", "patch": "patch", "delete": "delete", "list": "list"}
# A request through the API server's proxy (/api/v1/namespaces/NS/services/NAME/proxy/PATH): RBAC sees the
# subresource ``proxy`` of the object, and a POST as create.
PROXY_VERBS = {"GET": "get", "POST": "create"}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object in docs/jupyterhub/*.yaml except the Helm values."""
    found = []
    for path in sorted(FOLDER.glob("*.yaml")):
        if not path.name.startswith("values"):
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return found


def _sources(package: Any) -> list[tuple[str, str]]:
    """(module name, source) of a module and, for a package, of every module in it."""
    names = [package.__name__]
    if hasattr(package, "__path__"):
        names += [info.name for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    return [(name, inspect.getsource(importlib.import_module(name))) for name in names]


def code_requests() -> set[Request]:
    """What the serving, scheduling and job code asks the API for, read from their source.

    Direct client calls (``create_namespaced_job``) and raw GETs of a subresource (``k8s.raw_request``
    of ``.../pods/{pod}/log``), and for every kind of object the code builds and
    hands to the shared layer (``k8s.apply`` / ``delete_owned``), what that layer may ask: read it,
    create it, replace or patch it (whichever it was told: ``"update|patch"`` asks for one of them), delete it.
    And what the endpoint targets send through the API server's service and pod proxies.
    """
    requests: set[Request] = set()
    for module in (backend_module, serving_module, schedule_module):
        for name, source in _sources(module):
            for verb, resource in re.findall(r"\.(create|read|replace|patch|delete|list)_namespaced_(\w+)\b", source):
                assert resource in RESOURCES, f"{name} calls {verb}_namespaced_{resource}: add it to RESOURCES"
                group, plural = RESOURCES[resource]
                requests.add((group, plural, VERBS[verb]))
            for method, plural, sub in re.findall(
                    r'raw_request\([\w.]+, "(GET)", f"/api/v1/namespaces/\{\w+\}/(\w+)/\{\w+\}/(\w+)"', source):
                requests.add(("", f"{plural}/{sub}", PROXY_VERBS[method]))
            if re.search(r"\b(apply|delete_owned|ensure_owned)\(", source):
                built = set(re.findall(r"\"kind\": \"(\w+)\"", "".join(text for _, text in _sources(module))))
                for kind in built & set(KINDS):
                    group, plural = RESOURCES[KINDS[kind][1]]
                    requests |= {(group, plural, verb) for verb in ("get", "create", "update|patch", "delete")}
    for name, source in _sources(targets_module):
        proxied = re.findall(r"_through_proxy\(f\"(services|pods)/[^\"]*\", \"(GET|POST)\"", source)
        assert proxied or "/proxy/" not in source, f"{name} uses the API server's proxy in a way this test cannot read"
        requests |= {("", f"{plural}/proxy", PROXY_VERBS[method]) for plural, method in proxied}
    requests |= {(group, f"{resource}/{sub}" if sub else resource, verb) for verb, group, resource, sub in NEEDED_ACCESS}
    return requests


def granted(rules: list[dict[str, Any]], request: Request) -> bool:
    group, resource, verb = request
    return any(
        not rule.get("resourceNames")
        and any(g in ("*", group) for g in rule.get("apiGroups", []))
        and any(r in ("*", resource) for r in rule.get("resources", []))
        and any(v in ("*", *verb.split("|")) for v in rule.get("verbs", []))
        for rule in rules
    )


def values() -> dict[str, Any]:
    loaded = yaml.safe_load(VALUES.read_text())
    assert isinstance(loaded, dict)
    return loaded


# -- offline ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name_and_doc", manifests(), ids=lambda d: f"{d[0]}:{d[1]['kind']}")
def test_every_manifest_is_valid(name_and_doc: tuple[str, dict[str, Any]]) -> None:
    validate_manifest(name_and_doc[1])


def test_the_values_set_what_zero_to_jupyterhub_reads() -> None:
    chart = values()
    assert set(chart) <= {"hub", "singleuser", "cull", "proxy", "scheduling", "prePuller", "ingress"}
    assert isinstance(chart["hub"], dict)
    single = chart["singleuser"]
    assert single["image"]["name"] and single["image"]["tag"]
    assert single["serviceAccountName"] == "jupyterhub-user"
    env = single["extraEnv"]
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "JMK_STORAGE_URL", "JMK_BACKEND", "JMK_STATE_DIR"):
        assert isinstance(env[name], str) and env[name], name
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # credentials come from a Secret, not the values
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "jmk-s3", name
    assert env["JMK_STATE_DIR"].startswith(single["storage"]["homeMountPath"])  # on the user's PVC
    assert single["networkPolicy"]["egressAllowRules"]["privateIPs"] is True
    assert {"enabled", "timeout", "every"} <= set(chart["cull"])
    mounts = {f["mountPath"] for f in single["extraFiles"].values()}
    assert mounts == {"/etc/ipython/ipython_config.py", "/etc/jupyter/jupyter_server_config.py"}


def test_the_configuration_file_sets_only_settings_that_exist() -> None:
    files = list(values()["singleuser"]["extraFiles"].values())
    assert files[0]["stringData"] == files[1]["stringData"]  # one file for the kernels and the server
    config = Config()
    exec(compile(files[0]["stringData"], "ipython_config.py", "exec"), {"get_config": lambda: config})
    assert config, "the configuration file sets nothing"
    known: dict[str, Any] = {"KubernetesBackend": KubernetesBackend, "JMKSettings": JMKSettings}
    for section, settings in config.items():
        assert section in known, section
        traits = known[section].class_traits(config=True)
        for name in settings:
            assert name in traits, f"c.{section}.{name} is not a setting"
    backend = KubernetesBackend(None, config=config)
    settings = backend.pod_settings(JobSpec(code="pass", backend="kubernetes", preset="a100"))
    assert settings.gpus == 1 and settings.labels == {"team": "ml-platform"}


def test_the_namespaces_and_subjects_agree_with_the_values() -> None:
    for path in RBAC_FILES:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
        (role,) = [d for d in docs if d["kind"] == "Role"]
        (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
        assert account["metadata"]["name"] == values()["singleuser"]["serviceAccountName"]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                        "namespace": account["metadata"]["namespace"]}]
    shared = [d for d in yaml.safe_load_all((FOLDER / "rbac-shared-namespace.yaml").read_text()) if d]
    (role,) = [d for d in shared if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == values()["singleuser"]["extraEnv"]["JMK_K8S_NAMESPACE"]


@pytest.mark.parametrize("path", RBAC_FILES, ids=lambda p: p.name)
def test_the_role_grants_what_the_package_asks_for(path: Path) -> None:
    (role,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Role"]
    wanted = code_requests()
    assert len(wanted) > len(NEEDED_ACCESS)  # the source was read
    missing = sorted(r for r in wanted if not granted(role["rules"], r))
    assert not missing, f"{path.name}'s Role does not grant {missing}"


def test_the_guide_names_every_file_and_request() -> None:
    text = DOC.read_text()
    for path in FOLDER.glob("*.yaml"):
        assert f"docs/jupyterhub/{path.name}" in text or f"jupyterhub/{path.name}" in text, path.name
    rows = dict(re.findall(r"^\| `([\w./]+)` \| ([^|]+) \|", text, re.M))  # the Role's table: resource -> verbs
    for group, resource, verb in code_requests():
        name = f"{resource}.{group}" if group else resource
        said = rows.get(name, "")
        assert any(one in said for one in verb.split("|")), f"the table of docs/jupyterhub.md does not say {name}: {verb}"
    assert "the job's supervisor process exited without recording an end (killed?)" in " ".join(text.split())
    assert "the job's supervisor process exited without recording an end (killed?)" in inspect.getsource(
        LocalBackend.refresh)


HOOK = FOLDER / "user_namespace_hook.py"


def _hook() -> dict[str, Any]:
    """The hook file run as the hub's configuration runs it (``c`` defined): its names."""
    names: dict[str, Any] = {"c": Config(), "__name__": "jupyterhub_config"}
    exec(compile(HOOK.read_text(), str(HOOK), "exec"), names)
    return names


def test_the_hook_moves_the_template_into_the_users_namespace() -> None:
    names = _hook()
    assert names["c"].KubeSpawner.pre_spawn_hook is names["jmk_user_namespace"]
    template = (FOLDER / "rbac-per-user-namespace.yaml").read_text()
    objects = names["jmk_user_namespace_objects"](template, "jhub-bob", "bob")
    assert sorted(o["kind"] for o in objects) == ["Namespace", "ResourceQuota", "Role", "RoleBinding", "ServiceAccount"]
    assert "jane" not in yaml.safe_dump_all(objects)
    for doc in objects:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "jhub-bob"
            assert doc["metadata"]["labels"]["hub.jupyter.org/username"] == "bob"
        else:
            assert doc["metadata"]["namespace"] == "jhub-bob"
    assert all(s["namespace"] == "jhub-bob" for o in objects for s in o.get("subjects", []))
    assert yaml.safe_load_all(template) and "jane" in template  # the template itself is unchanged


def test_the_hubs_cluster_role_grants_what_the_hook_and_kubespawner_ask() -> None:
    rules = next(d for d in yaml.safe_load_all((FOLDER / "rbac-hub-user-namespaces.yaml").read_text())
                 if d["kind"] == "ClusterRole")["rules"]  # fmt: skip
    source = HOOK.read_text()
    plural = {"service_account": "serviceaccounts", "resource_quota": "resourcequotas", "secret": "secrets",
              "role": "roles", "role_binding": "rolebindings"}
    group = {"roles": "rbac.authorization.k8s.io", "rolebindings": "rbac.authorization.k8s.io"}
    asked = {("", "namespaces", "create")}
    for verb, kind in re.findall(r"\b(create|read|replace)_namespaced_(\w+)\b", source):
        resource = plural[kind]
        asked.add((group.get(resource, ""), resource, VERBS[verb]))
    # KubeSpawner with enable_user_namespaces: the namespace, the pod and PVC, watches in every namespace.
    asked |= {("", "namespaces", "get"), ("", "pods", "create"), ("", "pods", "delete"), ("", "pods", "watch"),
              ("", "persistentvolumeclaims", "create"), ("", "events", "watch")}
    assert not [request for request in asked if not granted(rules, request)]
    assert granted(rules, ("rbac.authorization.k8s.io", "roles", "escalate"))


def test_the_values_as_the_chart_applies_them_to_kubespawner() -> None:
    """tests/z2jh.py, which the real hub's test configures KubeSpawner with: both layouts."""
    from z2jh import hub_settings, merge

    shared = hub_settings(values())
    spawner = shared.settings["KubeSpawner"]
    assert spawner["service_account"] == "jupyterhub-user" and spawner["environment"]["JMK_K8S_NAMESPACE"] == "jmk-jobs"
    assert spawner["environment"]["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "jmk-s3"
    mounts = {m["mountPath"]: m for m in spawner["volume_mounts"]}
    assert mounts["/home/jovyan"]["name"] == "home" and mounts["/etc/ipython/ipython_config.py"]["subPath"]
    assert set(shared.secrets["singleuser"]) == set(values()["singleuser"]["extraFiles"])
    assert "c.JupyterHub.authenticator_class = 'dummy'" in shared.config_text()
    overlay = yaml.safe_load((FOLDER / "values-user-namespaces.yaml").read_text())
    per_user = hub_settings(merge(values(), overlay)).settings["KubeSpawner"]
    assert per_user["enable_user_namespaces"] is True and "JMK_K8S_NAMESPACE" not in per_user["environment"]
    assert per_user["environment"]["JMK_BACKEND"] == "kubernetes"


def test_the_dockerfile_pins_torch_and_installs_the_s3_extra() -> None:
    text = DOCKERFILE.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "constraints.txt").read_text(), re.M))
    assert re.search(rf"ARG TORCH_VERSION={re.escape(pins['torch'])}\n", text)
    assert re.search(r'pip install [^\n]*-c /tmp/jmk/constraints.txt "\$\{wheel\}\[s3\]"', text)
    assert "FROM ${BASE_IMAGE}" in text and "USER ${NB_UID}" in text


def test_the_mlflow_server_image_pins_mlflow_as_the_clients_do() -> None:
    text = MLFLOW_DOCKERFILE.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "constraints.txt").read_text(), re.M))
    assert re.search(rf"ARG MLFLOW_VERSION={re.escape(pins['mlflow'])}\n", text)
    assert re.search(r'pip install -c /tmp/jmk/constraints.txt[\s\\]+"mlflow==\$\{MLFLOW_VERSION\}"', text)
    assert "USER 1000\n" in text
    # The manifest's image and the guide's build command carry the same version as their tag.
    deployment = next(doc for doc in yaml.safe_load_all((FOLDER / "mlflow.yaml").read_text())
                      if doc["kind"] == "Deployment")  # fmt: skip
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f"/mlflow:{pins['mlflow']}")
    build_command = f"docker build -f docker/mlflow/Dockerfile -t registry.example.com/team/mlflow:{pins['mlflow']} ."
    assert build_command in DOC.read_text()


# -- on the test control plane ------------------------------------------------------------------


def _in_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    """A copy of ``doc`` moved into ``namespace`` (its subjects too)."""
    doc = json.loads(json.dumps(doc))
    doc["metadata"]["namespace"] = namespace
    for subject in doc.get("subjects", []):
        subject["namespace"] = namespace
    return doc


def _token(core: Any, namespace: str, account: str) -> str:
    """A token of the service account from a TokenRequest (served since 1.20 when the API server has a
    service-account signing key and issuer, as tests/cluster's has; every later version serves it)."""
    answer = core.create_namespaced_service_account_token(account, namespace, {"spec": {}}, _preload_content=False)
    token: str = json.loads(answer.data)["status"]["token"]
    return token


def _kubeconfig(path: Path, admin: Any, token: str, namespace: str) -> Path:
    cfg = admin.configuration
    ca = Path(cfg.ssl_ca_cert).read_bytes()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": cfg.host,
                                                "certificate-authority-data": base64.b64encode(ca).decode()}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": namespace}}],
    }))
    return path


@pytest.mark.k8s
@pytest.mark.parametrize("path", RBAC_FILES, ids=lambda p: p.name)
def test_the_service_account_passes_the_access_check(path: Path, k8s_api: Any, k8s_namespace: str,
                                                     tmp_path: Path) -> None:
    import kubernetes

    docs = {d["kind"]: _in_namespace(d, k8s_namespace) for d in yaml.safe_load_all(path.read_text())
            if d and d["kind"] in ("ServiceAccount", "Role", "RoleBinding")}
    core = kubernetes.client.CoreV1Api(k8s_api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(k8s_api)
    account = docs["ServiceAccount"]["metadata"]["name"]
    core.create_namespaced_service_account(k8s_namespace, docs["ServiceAccount"])
    token = _token(core, k8s_namespace, account)
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", k8s_api, token, k8s_namespace)

    def backend() -> KubernetesBackend:  # a new one each time: the access check is cached per backend
        return KubernetesBackend(None, config=Config({"KubernetesBackend": {
            "kubeconfig": str(kubeconfig), "namespace": k8s_namespace}}))

    settings = PodSettings(namespace=k8s_namespace)
    with pytest.raises(JMKUsageError, match=rf"You may not create jobs in namespace '{k8s_namespace}'"):
        backend().check_access(settings)

    rbac.create_namespaced_role(k8s_namespace, docs["Role"])
    rbac.create_namespaced_role_binding(k8s_namespace, docs["RoleBinding"])
    checker = backend()
    deadline = time.monotonic() + 30  # the authorizer's informers see the new binding within moments
    while True:
        try:
            checker.check_access(settings)
            break
        except JMKUsageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            checker = backend()

    authz = kubernetes.client.AuthorizationV1Api(checker.api)
    refused = []
    for group, resource, verbs in sorted(code_requests()):
        plural, _, sub = resource.partition("/")
        allowed = []
        for verb in verbs.split("|"):
            review = {"spec": {"resourceAttributes": {"namespace": k8s_namespace, "verb": verb, "group": group,
                                                      "resource": plural, "subresource": sub}}}
            answer = json.loads(authz.create_self_subject_access_review(review, _preload_content=False).data)
            allowed.append(bool(answer["status"].get("allowed")))
        if not any(allowed):
            refused.append((group, resource, verbs))
    assert not refused, f"the service account may not {refused}"
    # and nothing outside its namespace
    elsewhere = {"spec": {"resourceAttributes": {"namespace": "default", "verb": "create", "group": "batch",
                                                 "resource": "jobs"}}}
    answer = json.loads(authz.create_self_subject_access_review(elsewhere, _preload_content=False).data)
    assert not answer["status"].get("allowed")


@pytest.mark.k8s
@pytest.mark.parametrize("path", RBAC_FILES, ids=lambda p: p.name)
def test_a_cell_runs_as_a_job_with_only_the_documented_rights(
        path: Path, shell: Any, state_dir: Path, k8s_api: Any, k8s_cluster: Any, k8s_namespace: str,
        k8s_mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The notebook user's service account, with exactly the guide's Role, runs a ``%%train`` cell end to end
    on the node: the payload Secret, the Job, the pod watch, the log stream and the cleanup."""
    import kubernetes
    from helpers import stop_jobs

    docs = {d["kind"]: _in_namespace(d, k8s_namespace) for d in yaml.safe_load_all(path.read_text())
            if d and d["kind"] in ("ServiceAccount", "Role", "RoleBinding")}
    core = kubernetes.client.CoreV1Api(k8s_api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(k8s_api)
    core.create_namespaced_service_account(k8s_namespace, docs["ServiceAccount"])
    rbac.create_namespaced_role(k8s_namespace, docs["Role"])
    rbac.create_namespaced_role_binding(k8s_namespace, docs["RoleBinding"])
    token = _token(core, k8s_namespace, docs["ServiceAccount"]["metadata"]["name"])
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", k8s_api, token, k8s_namespace)
    settings = PodSettings(namespace=k8s_namespace)
    deadline = time.monotonic() + 30  # the authorizer's informers see the new binding within moments
    while True:
        try:
            KubernetesBackend(None, config=Config({"KubernetesBackend": {
                "kubeconfig": str(kubeconfig), "namespace": k8s_namespace}})).check_access(settings)
            break
        except JMKUsageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)

    config = shell.config.KubernetesBackend
    config.kubeconfig, config.namespace = str(kubeconfig), k8s_namespace
    config.image, config.pods_share_filesystem = k8s_cluster.pod_image, False
    monkeypatch.setenv("MLFLOW_TRACKING_URI", k8s_mlflow_server)
    shell.__dict__.pop("_jmk_service", None)
    try:
        shell.user_ns["base"] = 5
        shell.run_cell_magic("train", "--backend kubernetes --cpu 1 --memory 512Mi",
                             "print('as the notebook user', flush=True)\ntotal = base + 2")
        assert shell.user_ns.get("total") == 7
    finally:
        stop_jobs(state_dir, shell.config)
        for key in ("kubeconfig", "namespace", "image", "pods_share_filesystem"):
            config.pop(key, None)
        shell.__dict__.pop("_jmk_service", None)
        from jupyter_mlflow_k8s.backends.kubernetes import ClusterWatch

        ClusterWatch.stop_all()
