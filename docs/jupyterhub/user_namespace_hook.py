r"""A KubeSpawner pre_spawn_hook for one namespace per user (docs/jupyterhub.md, "One namespace per user").

Before each spawn it makes what the user's namespace needs, from the template
docs/jupyterhub/rbac-per-user-namespace.yaml (written for the user jane in jhub-jane): the Namespace,
the ServiceAccount jupyterhub-user, the Role and its RoleBinding, the ResourceQuota; and it copies
into the namespace the hub namespace's Secrets that user pods read (the S3 key pair jmk-s3 and the
chart's Secret `singleuser`, which holds singleuser.extraFiles), since a pod reads Secrets of its own
namespace only (copies are replaced on every spawn, so a rotated key reaches them). Other objects that
exist already are left as they are.

With Zero to JupyterHub, in values-user-namespaces.yaml's terms:
  helm upgrade --install jhub jupyterhub/jupyterhub --namespace jhub \
    --values docs/jupyterhub/values.yaml --values docs/jupyterhub/values-user-namespaces.yaml \
    --set-file hub.extraConfig.jmkUserNamespaces=docs/jupyterhub/user_namespace_hook.py \
    --set-file hub.extraFiles.jmk-user-namespace.stringData=docs/jupyterhub/rbac-per-user-namespace.yaml
The hub's service account needs docs/jupyterhub/rbac-hub-user-namespaces.yaml.
It runs in the hub's configuration, where `c` is defined; it uses KubeSpawner's own asyncio client.
"""

import copy
import os

import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio.client.rest import ApiException

JMK_USER_NAMESPACE_TEMPLATE = os.environ.get(
    "JMK_USER_NAMESPACE_TEMPLATE", "/usr/local/etc/jupyterhub/jmk/rbac-per-user-namespace.yaml"
)
JMK_USER_NAMESPACE_SECRETS = ("jmk-s3", "singleuser")
JMK_USERNAME_LABEL = "hub.jupyter.org/username"


def jmk_hub_namespace():
    """The hub's namespace: POD_NAMESPACE (the chart sets it on the hub), else the hub pod's own."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
        return f.read().strip()


def jmk_user_namespace_objects(template_text, namespace, username):
    """The template's objects moved from the example user's namespace into ``namespace``."""
    objects = []
    for doc in yaml.safe_load_all(template_text):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        meta = doc["metadata"]
        if doc["kind"] == "Namespace":
            meta["name"] = namespace
            meta.setdefault("labels", {})[JMK_USERNAME_LABEL] = username
        else:
            meta["namespace"] = namespace
        for subject in doc.get("subjects", []):
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
        objects.append(doc)
    return objects


async def _jmk_create(call, namespace, body, replace=None):
    """Create ``body``; if it exists, leave it (or, given ``replace``, replace it: a rotated key reaches the copy)."""
    try:
        await (call(body) if namespace is None else call(namespace, body))
    except ApiException as exc:
        if exc.status != 409:  # AlreadyExists: made by an earlier spawn
            raise
        if replace is not None:
            await replace(body["metadata"]["name"], namespace, body)


async def jmk_user_namespace(spawner):
    """KubeSpawner's pre_spawn_hook: the user's namespace, its account, rights and quota, the Secrets pods read."""
    namespace = spawner.namespace
    hub_namespace = jmk_hub_namespace()
    core = spawner.api
    rbac = k8s_client.RbacAuthorizationV1Api(core.api_client)
    with open(JMK_USER_NAMESPACE_TEMPLATE) as f:
        template = f.read()
    username = spawner._expand_user_properties("{username}")  # escaped, as KubeSpawner labels the pod
    spawner.log.info("jupyter-mlflow-k8s: preparing namespace %s for %s", namespace, username)
    for doc in jmk_user_namespace_objects(template, namespace, username):
        kind = doc["kind"]
        if kind == "Namespace":
            await _jmk_create(core.create_namespace, None, doc)
        elif kind == "ServiceAccount":
            await _jmk_create(core.create_namespaced_service_account, namespace, doc)
        elif kind == "ResourceQuota":
            await _jmk_create(core.create_namespaced_resource_quota, namespace, doc)
        elif kind == "Role":
            await _jmk_create(rbac.create_namespaced_role, namespace, doc)
        elif kind == "RoleBinding":
            await _jmk_create(rbac.create_namespaced_role_binding, namespace, doc)
        else:
            raise ValueError(f"{JMK_USER_NAMESPACE_TEMPLATE}: no rule for kind {kind}")
    if namespace == hub_namespace:
        return
    for name in JMK_USER_NAMESPACE_SECRETS:
        try:
            secret = await core.read_namespaced_secret(name, hub_namespace)
        except ApiException as exc:
            if exc.status == 404:
                continue
            raise
        copied = {
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "jupyter-mlflow-k8s"}},
            "type": secret.type,
            "data": secret.data,
        }
        await _jmk_create(core.create_namespaced_secret, namespace, copied, core.replace_namespaced_secret)


c.KubeSpawner.pre_spawn_hook = jmk_user_namespace  # type: ignore[name-defined]  # noqa: F821
