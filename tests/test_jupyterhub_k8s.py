"""A real JupyterHub on the test cluster, configured as docs/jupyterhub.md says, with users' notebooks sending jobs.

JupyterHub (``jupyterhub``), KubeSpawner (``jupyterhub-kubespawner``) and configurable-http-proxy (npm) run on
this machine, where z2jh would run them in the hub's pod; the hub talks to the API server with the token of
its own ServiceAccount (``hub`` in ``jhub``) and the rights the chart gives it (shared layout) or those of
docs/jupyterhub/rbac-hub-user-namespaces.yaml (per-user layout). KubeSpawner spawns the single-user image
built from docker/singleuser/Dockerfile on the real node, configured from docs/jupyterhub/values.yaml as
the chart would (``z2jh.py``); the MLflow server of docs/jupyterhub/mlflow.yaml runs in the cluster with
the image of docker/mlflow/Dockerfile; the bucket ``team-bucket`` is a real S3 endpoint (moto, on this
machine) that the manifests' ``minio.storage.svc.cluster.local:9000`` reaches through a Service.

Users' kernels are reached as a browser reaches them: the hub's REST API, then the kernel's websocket
through the proxy, with the user's own token. What differs from a real cluster, and why:

- the hub is not in a pod, so ``{hubnamespace}`` would expand to ``user``: the per-user template is given
  as ``jhub-{username}``, and the hook reads the hub's namespace from ``POD_NAMESPACE`` (the chart sets it);
- the test API server runs without the ServiceAccount admission plugin, which on a real cluster mounts the
  pod's token: the hub adds the same projected volume (token, ``kube-root-ca.crt``, namespace) to user pods;
- no storage provisioner: a hostPath PersistentVolume per user, bound in advance to ``claim-<user>``.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import wait_for
from jupyterhub_server import Hub, KernelSession, Unavailable, chp_binary, request
from z2jh import HubSettings, hub_settings, merge

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "jupyterhub"
VALUES = DOCS / "values.yaml"
HUB_NAMESPACE = "jhub"
NAMESPACES = ("jhub", "jmk-jobs", "mlflow", "storage", "jhub-a", "jhub-b")
# The chart's Role for the hub in its own namespace (z2jh templates/hub/rbac.yaml).
CHART_HUB_RULES = [
    {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
     "verbs": ["get", "watch", "list", "create", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]},
]
# What the ServiceAccount admission plugin mounts on a real cluster (1.21+: a bound, projected token).
SERVICE_ACCOUNT_VOLUME = {"name": "kube-api-access", "projected": {"sources": [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
]}}
SERVICE_ACCOUNT_MOUNT = {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                         "readOnly": True}


@dataclass
class Site:
    """What both layouts share: the cluster, the images, MLflow and S3 in the cluster, the users' volumes."""

    api: Any
    cluster: Any  # the KubeTarget
    singleuser_image: str
    s3: Any
    folder: Path

    def core(self) -> Any:
        import kubernetes

        return kubernetes.client.CoreV1Api(self.api)

    def batch(self) -> Any:
        import kubernetes

        return kubernetes.client.BatchV1Api(self.api)


def _apply(api: Any, docs: list[dict[str, Any]]) -> None:
    import kubernetes

    for doc in docs:
        try:
            kubernetes.utils.create_from_dict(api, doc)
        except kubernetes.utils.FailToCreateError as exc:
            if any(e.status != 409 for e in exc.api_exceptions):
                raise


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _namespace(api: Any, name: str) -> None:
    """Create (or label) a namespace so the session's cleanup check counts it."""
    core = _core(api)
    body = {"metadata": {"name": name, "labels": {"jmk.io/test": "true"}}}
    try:
        core.create_namespace(body)
    except Exception as exc:
        if getattr(exc, "status", None) != 409:
            raise
        core.patch_namespace(name, body)


def _core(api: Any) -> Any:
    import kubernetes

    return kubernetes.client.CoreV1Api(api)


def _secret(api: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    core = _core(api)
    body = {"metadata": {"name": name, "namespace": namespace}, "stringData": data}
    try:
        core.create_namespaced_secret(namespace, body)
    except Exception as exc:
        if getattr(exc, "status", None) != 409:
            raise
        core.replace_namespaced_secret(name, namespace, body)


def _token_kubeconfig(site: Site, namespace: str, account: str) -> Path:
    """A kubeconfig with only a token of ``namespace/account`` (a TokenRequest), as the hub's pod would have."""
    core = site.core()
    answer = core.create_namespaced_service_account_token(account, namespace, {"spec": {"expirationSeconds": 3600}},
                                                          _preload_content=False)
    token = json.loads(answer.data)["status"]["token"]
    admin = yaml.safe_load(Path(site.cluster.kubeconfig).read_text())  # a KubeTarget
    cluster = admin["clusters"][0]
    path = site.folder / f"kubeconfig-{namespace}-{account}"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "hub", "context": {"cluster": cluster["name"], "user": account, "namespace": namespace}}],
        "current-context": "hub",
    }))
    return path


@pytest.fixture(scope="module")
def site(k8s_cluster: Any, k8s_api: Any, k8s_s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The shared part: namespaces, S3 behind ``minio.storage``, MLflow from mlflow.yaml, the users' volumes."""
    import kubernetes
    from cluster import images
    from cluster.node import RealNode

    try:
        chp_binary()
    except Unavailable as exc:
        pytest.skip(f"configurable-http-proxy cannot be installed here: {exc}")
    if not k8s_cluster.real_node:
        pytest.skip(f"needs a real node; pods run under the node agent: {k8s_cluster.cluster.node_fallback_reason}")
    cluster = k8s_cluster.cluster
    pool, pulling = ThreadPoolExecutor(1), None
    if cluster is None:  # a given cluster (docs/jupyterhub.md: "To run the same test on a real cluster")
        refs = {name: os.environ.get(f"JMK_TEST_{name.upper()}_IMAGE", "") for name in ("singleuser", "mlflow")}
        if not all(refs.values()):
            pytest.skip("on a given cluster, set JMK_TEST_SINGLEUSER_IMAGE and JMK_TEST_MLFLOW_IMAGE")
    else:
        registry = f"127.0.0.1:{cluster.ports['registry']}"
        built = images.build(("singleuser", "mlflow"))  # cached by `cluster prepare`
        refs = {name: images.push(ref, registry) for name, ref in built.items()}
        # The node pulls the single-user image once, now (as it does the runner image at start), while the
        # MLflow Deployment below pulls its own: two gigabytes to unpack, in parallel.
        pulling = pool.submit(RealNode(cluster).ctr, "images", "pull", "--plain-http", refs["singleuser"], timeout=900)
    folder = tmp_path_factory.mktemp("jupyterhub")
    site = Site(k8s_api, k8s_cluster, refs["singleuser"], k8s_s3_server, folder)
    core = site.core()
    created_volumes: list[str] = []
    try:
        for name in ("jmk-jobs", "mlflow", "storage", HUB_NAMESPACE):
            _namespace(k8s_api, name)
        # S3: the manifests' minio.storage.svc.cluster.local:9000 is moto on this machine.
        host, port = re.match(r"http://([^:/]+):(\d+)", k8s_s3_server.endpoint_url).groups()  # type: ignore[union-attr]
        core.create_namespaced_service("storage", {"metadata": {"name": "minio"}, "spec": {
            "ports": [{"name": "s3", "port": 9000, "targetPort": int(port)}]}})
        core.create_namespaced_endpoints("storage", {"metadata": {"name": "minio"}, "subsets": [
            {"addresses": [{"ip": host}], "ports": [{"name": "s3", "port": int(port)}]}]})
        s3 = k8s_s3_server.client()
        if "team-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            s3.create_bucket(Bucket="team-bucket")
        # MLflow, from the guide's manifest: only the image, and the Secret the guide says to create first.
        _secret(k8s_api, "mlflow", "mlflow-store", {
            "MLFLOW_BACKEND_STORE_URI": "sqlite:////home/mlflow/mlflow.db",
            "AWS_ACCESS_KEY_ID": k8s_s3_server.key, "AWS_SECRET_ACCESS_KEY": k8s_s3_server.secret})
        manifests = _load(DOCS / "mlflow.yaml")
        for doc in manifests:
            if doc["kind"] == "Deployment":
                doc["spec"]["template"]["spec"]["containers"][0]["image"] = refs["mlflow"]
        _apply(k8s_api, [d for d in manifests if d["kind"] != "Namespace"])
        apps = kubernetes.client.AppsV1Api(k8s_api)
        wait_for(lambda: (apps.read_namespaced_deployment("mlflow", "mlflow").status.ready_replicas or 0) >= 1,
                 timeout=180, interval=1)
        if pulling is not None:
            pulled = pulling.result()
            assert pulled.returncode == 0, pulled.stderr
        # The users' home volumes (no provisioner on the test node): bound in advance to each claim.
        for namespace, user in ((HUB_NAMESPACE, "a"), ("jhub-a", "a"), ("jhub-b", "b")) if cluster else ():
            home = folder / f"home-{namespace}-{user}"
            home.mkdir()
            os.chown(home, 1000, 100)
            name = f"jmk-test-{namespace}-{user}-{uuid.uuid4().hex[:6]}"
            core.create_persistent_volume({"metadata": {"name": name, "labels": {"jmk.io/test": "true"}}, "spec": {
                "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": str(home), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": f"claim-{user}"},
                "persistentVolumeReclaimPolicy": "Retain"}})
            created_volumes.append(name)
        yield site
    finally:
        pool.shutdown(wait=True)
        for name in NAMESPACES:
            try:
                core.delete_collection_namespaced_pod(name, grace_period_seconds=0)  # MLflow: no 30 s grace
                core.delete_namespace(name)
            except Exception as exc:
                if getattr(exc, "status", None) != 404:
                    raise
        for name in created_volumes:
            core.delete_persistent_volume(name)
        rbac = kubernetes.client.RbacAuthorizationV1Api(k8s_api)
        for kind in ("cluster_role_binding", "cluster_role"):
            try:
                getattr(rbac, f"delete_{kind}")("jupyterhub-user-namespaces")
            except Exception as exc:
                if getattr(exc, "status", None) != 404:
                    raise
        wait_for(lambda: not [n for n in core.list_namespace().items if n.metadata.name in NAMESPACES],
                 timeout=120, interval=1)


def _hub(site: Site, values: dict[str, Any], name: str, extra: str = "", env: dict[str, str] | None = None) -> Hub:
    """A hub for these values: KubeSpawner configured as the chart would, the test cluster's stand-ins added."""
    settings: HubSettings = hub_settings(values)
    settings.set("KubeSpawner", "namespace", HUB_NAMESPACE)
    settings.set("KubeSpawner", "image", site.singleuser_image)  # the guide's registry.example.com/team/notebook
    settings.add("KubeSpawner", "volumes", [SERVICE_ACCOUNT_VOLUME])
    settings.add("KubeSpawner", "volume_mounts", [SERVICE_ACCOUNT_MOUNT])
    settings.set("KubeSpawner", "start_timeout", 240)
    settings.set("KubeSpawner", "http_timeout", 120)
    for secret, files in settings.secrets.items():  # the chart's objects in the hub's namespace
        _secret(site.api, HUB_NAMESPACE, secret, files)
    _secret(site.api, HUB_NAMESPACE, "jmk-s3", {
        "AWS_ACCESS_KEY_ID": site.s3.key, "AWS_SECRET_ACCESS_KEY": site.s3.secret})
    process_env = {**os.environ, "KUBECONFIG": str(_token_kubeconfig(site, HUB_NAMESPACE, "hub")),
                   "POD_NAMESPACE": HUB_NAMESPACE, **(env or {})}
    return Hub(settings.config_text() + extra, site.folder / name, ip=site.cluster.host_ip, env=process_env)


def _hub_account(site: Site, rules: list[dict[str, Any]] | None) -> None:
    """The hub's ServiceAccount; with ``rules``, the chart's Role for it in its namespace."""
    _apply(site.api, [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "hub", "namespace": HUB_NAMESPACE}}])
    if rules:
        _apply(site.api, [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "hub", "namespace": HUB_NAMESPACE}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "hub", "namespace": HUB_NAMESPACE},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hub"},
             "subjects": [{"kind": "ServiceAccount", "name": "hub", "namespace": HUB_NAMESPACE}]}])


def _kernel(hub: Hub, user: str, token: str) -> KernelSession:
    kernel = KernelSession(hub.user_url(user), token, timeout=120)
    loaded = kernel.execute("%load_ext jupyter_mlflow_k8s", timeout=120)
    assert loaded.status == "ok", (loaded.error, loaded.stderr)
    return kernel


def _ok(result: Any) -> Any:
    assert result.status == "ok", f"{result.error}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _identity(kernel: KernelSession) -> dict[str, Any]:
    """Whose token the user's pod holds (the JWT's claims) and what the package's client is configured with."""
    code = (
        "import base64, json, os\n"
        "from jupyter_mlflow_k8s.k8s import in_cluster, api_client\n"
        "t = open('/var/run/secrets/kubernetes.io/serviceaccount/token').read().split('.')[1]\n"
        "claims = json.loads(base64.urlsafe_b64decode(t + '=' * (-len(t) % 4)))\n"
        "print(json.dumps({'sub': claims['sub'], 'in_cluster': in_cluster(None), "
        "'host': api_client(None).configuration.host, 'kubeconfig': os.environ.get('KUBECONFIG')}))\n"
    )
    return json.loads(_ok(kernel.execute(code, timeout=60)).stdout.strip().splitlines()[-1])


def _run(kernel: KernelSession, run_id: str) -> dict[str, Any]:
    """The run as the in-cluster MLflow server has it, asked from the user's kernel (MLFLOW_TRACKING_URI of the
    values; the server's ``--allowed-hosts`` admits only its Service's names)."""
    code = (
        "import json, mlflow\n"
        f"run = mlflow.MlflowClient().get_run({run_id!r})\n"
        "print(json.dumps({'status': run.info.status, 'user': run.data.tags.get('mlflow.user'),\n"
        "                  'job': run.data.tags.get('jmk.job_id')}))\n"
    )
    return json.loads(_ok(kernel.execute(code, timeout=60)).stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _job(site: Site, namespace: str, user: str) -> Any:
    jobs = site.batch().list_namespaced_job(namespace, label_selector=f"jmk.io/user={user}").items
    return jobs[0] if len(jobs) == 1 else None


TRAIN = """%%train --backend kubernetes --memory 1Gi
import os
pod = os.environ["HOSTNAME"]
answer = base * 6
"""


def test_shared_namespace(site: Site) -> None:
    """One jobs namespace: A's cell runs as a Job in jmk-jobs under A's pod's service account, records into
    the in-cluster MLflow as A, and its values come back into A's kernel."""
    _apply(site.api, [d for d in _load(DOCS / "rbac-shared-namespace.yaml") if d["kind"] != "Namespace"])
    _hub_account(site, CHART_HUB_RULES)
    hub = _hub(site, yaml.safe_load(VALUES.read_text()), "shared")
    with hub.start(timeout=120):
        hub.add_user("a")
        hub.start_server("a", timeout=240)
        kernel = _kernel(hub, "a", hub.user_token("a"))
        identity = _identity(kernel)
        assert identity["sub"] == "system:serviceaccount:jhub:jupyterhub-user", identity
        assert identity["in_cluster"] and identity["kubeconfig"] is None, identity
        _ok(kernel.execute("base = 7", timeout=30))
        cell = _ok(kernel.execute(TRAIN, timeout=300))
        assert re.search(r"job \w+ succeeded .*returned pod, answer", cell.stdout), cell.stdout + cell.stderr
        answer, pod = _ok(kernel.execute("print(answer, pod)", timeout=30)).stdout.split()
        assert answer == "42" and pod.startswith("jmk-a-"), (answer, pod)  # from the Job's pod
        job = _job(site, "jmk-jobs", "a")
        assert job is not None and job.metadata.name.startswith("jmk-a-")
        run = _run(kernel, job.metadata.labels["jmk.io/mlflow-run-id"])
        assert run == {"status": "FINISHED", "user": "a", "job": job.metadata.labels["jmk.io/job-id"]}, run
        kernel.close()
        hub.stop_server("a", timeout=120)


def test_namespace_per_user(site: Site) -> None:
    """One namespace per user, made by the guide's pre_spawn_hook: B's rights end at B's namespace and B's token
    at B's server; A's server is stopped as the culler stops it while A's job runs, and A's next server finds it."""
    _apply(site.api, _load(DOCS / "rbac-hub-user-namespaces.yaml"))
    _hub_account(site, None)
    values = merge(yaml.safe_load(VALUES.read_text()), yaml.safe_load((DOCS / "values-user-namespaces.yaml").read_text()))
    hook = (DOCS / "user_namespace_hook.py").read_text()
    # The hub is not in a pod here: {hubnamespace} would be "user" (see the module's docstring).
    extra = f"\n{hook}\nc.KubeSpawner.user_namespace_template = 'jhub-{{username}}'\n"
    hub = _hub(site, values, "per-user", extra,
               env={"JMK_USER_NAMESPACE_TEMPLATE": str(DOCS / "rbac-per-user-namespace.yaml")})
    with hub.start(timeout=120):
        for user in ("a", "b"):
            hub.add_user(user)
        tokens = {user: hub.user_token(user) for user in ("a", "b")}
        for user in ("a", "b"):  # both spawn at once
            hub.spawn(user)
        for user in ("a", "b"):
            hub.wait_ready(user, timeout=240)
        core = site.core()
        assert core.read_namespace("jhub-a").metadata.labels["hub.jupyter.org/username"] == "a"
        assert core.read_namespaced_secret("jmk-s3", "jhub-a").data  # copied by the hook
        kernel_a = _kernel(hub, "a", tokens["a"])
        assert _identity(kernel_a)["sub"] == "system:serviceaccount:jhub-a:jupyterhub-user"
        _ok(kernel_a.execute("base = 7", timeout=30))
        # A long cell: it runs while A's server is stopped under it.
        slow = TRAIN.replace("answer = base * 6", "import time\nprint('training', flush=True)\ntime.sleep(45)\nanswer = base * 6")
        kernel_a.execute_async(slow)
        job = wait_for(lambda: _job(site, "jhub-a", "a"), timeout=120, interval=1)
        job_id = job.metadata.labels["jmk.io/job-id"]
        wait_for(lambda: [p for p in core.list_namespaced_pod("jhub-a", label_selector=f"jmk.io/job-id={job_id}").items
                          if p.status.phase == "Running"], timeout=180, interval=1)

        # B: B's service account may neither list nor cancel A's jobs; the package says so before trying.
        kernel_b = _kernel(hub, "b", tokens["b"])
        refused = _ok(kernel_b.execute(
            "from kubernetes import client\n"
            "from kubernetes.client.rest import ApiException\n"
            "from jupyter_mlflow_k8s.k8s import api_client\n"
            "batch = client.BatchV1Api(api_client(None))\n"
            "for call in (lambda: batch.list_namespaced_job('jhub-a'),\n"
            f"             lambda: batch.delete_namespaced_job({job.metadata.name!r}, 'jhub-a')):\n"
            "    try:\n        call(); print('allowed')\n"
            "    except ApiException as e:\n        print(e.status)\n"
            "print(len(batch.list_namespaced_job('jhub-b').items))\n", timeout=60)).stdout.split()
        assert refused == ["403", "403", "0"], refused
        check = kernel_b.execute("from jupyter_mlflow_k8s.backends.kubernetes import KubernetesBackend\n"
                                 "from jupyter_mlflow_k8s.k8s.pods import PodSettings\n"
                                 "KubernetesBackend(None).check_access(PodSettings(namespace='jhub-a'))", timeout=60)
        assert check.error and "may not" in str(check.error["evalue"]), check.error
        # B's token on A's server: the sidebar's API answers A only.
        sidebar = f"{hub.user_url('a')}jmk/api/jobs"
        assert request("GET", sidebar, tokens["b"]).status == 403
        listed = request("GET", sidebar, tokens["a"])
        assert listed.status == 200 and job_id in listed.body.decode(), listed.body[:2000]
        kernel_b.close()

        # Culling: the hub stops A's server (the idle culler's DELETE); the Job runs on.
        hub.stop_server("a", timeout=120)
        assert not core.list_namespaced_pod("jhub-a", label_selector="component=singleuser-server").items
        still = site.batch().read_namespaced_job(job.metadata.name, "jhub-a")
        assert (still.status.active or 0) == 1 and not still.status.succeeded, still.status
        hub.start_server("a", timeout=240)
        kernel_a = _kernel(hub, "a", tokens["a"])
        jobs = _ok(kernel_a.execute("%jobs", timeout=120))
        assert job_id in jobs.stdout + jobs.text, jobs.stdout + jobs.text
        listed = request("GET", sidebar, tokens["a"])
        assert listed.status == 200 and job_id in listed.body.decode(), listed.body[:2000]
        _ok(kernel_a.execute(f"%job attach {job_id}", timeout=300))
        answer, pod = _ok(kernel_a.execute("print(answer, pod)", timeout=30)).stdout.split()
        assert answer == "42" and pod.startswith(job.metadata.name), (answer, pod)
        run = _run(kernel_a, job.metadata.labels["jmk.io/mlflow-run-id"])
        assert run == {"status": "FINISHED", "user": "a", "job": job_id}, run
        kernel_a.close()
        for user in ("a", "b"):
            hub.stop_server(user, timeout=120)
