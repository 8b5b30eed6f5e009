"""Zero to JupyterHub's values as the chart's hub applies them: KubeSpawner settings and the chart's objects.

The tests run a real JupyterHub with KubeSpawner but not the chart (no Helm here), so this module does
what the chart's ``jupyterhub_config.py`` and templates do with the keys docs/jupyterhub/values.yaml (and
values-user-namespaces.yaml) set, following z2jh 4.x:

- ``hub.config``: every ``Class: {trait: value}`` as given;
- ``singleuser.image`` (name, tag, pullPolicy), ``serviceAccountName``, ``extraEnv`` (values or
  ``valueFrom``), ``cpu``/``memory`` guarantees and limits, ``uid`` 1000 and ``fsGid`` 100 (the chart's
  defaults);
- ``singleuser.storage`` ``dynamic``: a PVC ``claim-{username}`` of the given capacity made by KubeSpawner
  and mounted at ``homeMountPath``;
- ``singleuser.extraFiles``: the chart's Secret ``singleuser`` holding each file, mounted by ``subPath``.

Not applied: ``singleuser.networkPolicy`` (the test node's CNI enforces no NetworkPolicy) and ``cull``
(the tests stop servers through the hub's API, which is what the idle culler calls).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

# The chart's defaults for what values.yaml leaves out.
CHART_DEFAULTS: dict[str, Any] = {"uid": 1000, "fs_gid": 100, "pvc_name_template": "claim-{username}"}
FILES_SECRET = "singleuser"  # the chart's Secret for singleuser.extraFiles


@dataclass
class HubSettings:
    """``settings[Class][trait]`` for the hub's configuration, and the objects the chart would make."""

    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> stringData, in the hub's namespace

    def set(self, cls: str, trait: str, value: Any) -> None:
        self.settings.setdefault(cls, {})[trait] = value

    def add(self, cls: str, trait: str, items: list[Any]) -> None:
        self.settings.setdefault(cls, {}).setdefault(trait, []).extend(items)

    def config_text(self) -> str:
        """``c.Class.trait = value`` lines for a ``jupyterhub_config.py``."""
        return "".join(f"c.{cls}.{trait} = {value!r}\n"
                       for cls, traits in self.settings.items() for trait, value in traits.items())


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of two values files: maps merge key by key, a ``null`` removes the key, the rest replaces."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def hub_settings(values: dict[str, Any]) -> HubSettings:
    """What the chart's hub configuration sets on KubeSpawner for these values."""
    hub = HubSettings()
    hub.set("JupyterHub", "spawner_class", "kubespawner.KubeSpawner")
    for cls, traits in (values.get("hub", {}).get("config") or {}).items():
        for trait, value in traits.items():
            hub.set(cls, trait, value)
    single = values.get("singleuser", {})
    spawner = "KubeSpawner"
    for trait, value in CHART_DEFAULTS.items():
        hub.set(spawner, trait, value)
    image = single.get("image") or {}
    if image.get("name"):
        hub.set(spawner, "image", f"{image['name']}:{image.get('tag', 'latest')}")
    if image.get("pullPolicy"):
        hub.set(spawner, "image_pull_policy", image["pullPolicy"])
    if single.get("serviceAccountName"):
        hub.set(spawner, "service_account", single["serviceAccountName"])
    if single.get("extraEnv"):
        hub.set(spawner, "environment", copy.deepcopy(single["extraEnv"]))
    for section, prefix in (("cpu", "cpu"), ("memory", "mem")):
        for key in ("guarantee", "limit"):
            if (single.get(section) or {}).get(key) is not None:
                hub.set(spawner, f"{prefix}_{key}", single[section][key])
    storage = single.get("storage") or {}
    if storage.get("type", "dynamic") == "dynamic":
        hub.set(spawner, "storage_pvc_ensure", True)
        hub.set(spawner, "storage_capacity", storage.get("capacity", "10Gi"))
        hub.set(spawner, "storage_access_modes", ["ReadWriteOnce"])
        hub.add(spawner, "volumes", [{"name": "home", "persistentVolumeClaim": {"claimName": CHART_DEFAULTS["pvc_name_template"]}}])
        hub.add(spawner, "volume_mounts", [{"name": "home", "mountPath": storage.get("homeMountPath", "/home/jovyan")}])
    files = single.get("extraFiles") or {}
    if files:
        hub.secrets[FILES_SECRET] = {key: spec["stringData"] for key, spec in files.items()}
        hub.add(spawner, "volumes", [{"name": "files", "secret": {
            "secretName": FILES_SECRET, "items": [{"key": key, "path": key} for key in files]}}])
        hub.add(spawner, "volume_mounts", [{"name": "files", "mountPath": spec["mountPath"], "subPath": key}
                                           for key, spec in files.items()])
    return hub
