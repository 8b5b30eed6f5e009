"""The endpoint targets by name: built-ins as ``"module:Class"`` strings, plugins from entry points.

``jupyter_mlflow_k8s.registry.Registry`` imports a built-in given as a string on first use, so this
module (and the interface in ``base.py``) never imports an implementation. Plugins register under the
entry-point group ``jupyter_mlflow_k8s.endpoint_targets``.
"""

from __future__ import annotations

from typing import Any

from ...registry import Registry
from .base import EndpointTarget

BUILT_INS = {
    "local": "jupyter_mlflow_k8s.serving.targets.local:LocalTarget",
    "kubernetes": "jupyter_mlflow_k8s.serving.targets.kubernetes:KubernetesTarget",
}

targets: Registry[type[EndpointTarget]] = Registry("endpoint target", "jupyter_mlflow_k8s.endpoint_targets", BUILT_INS)


def target_class(name: str) -> type[EndpointTarget]:
    """The class registered as ``name``, imported now when it was registered as ``"module:Class"``.

    Raises:
        UnknownPlugin: No target of that name (the message lists the known ones).
    """
    found = targets.get(name)
    assert isinstance(found, type) and issubclass(found, EndpointTarget), found
    return found


def get_target(name: str, settings: Any = None, config: Any = None, **kwargs: Any) -> EndpointTarget:
    """A target by name, built with the settings and the traitlets config (``c.KubernetesBackend...``)."""
    return target_class(name)(settings=settings, config=config, **kwargs)  # type: ignore[call-arg]


def target_names() -> list[str]:
    """Every target's name, plugins included."""
    return targets.names()
