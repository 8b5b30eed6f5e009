"""What every endpoint target does: start, list, get, stop, predict and read metrics, in one interface.

An :class:`EndpointTarget` is where endpoints run (``local`` processes, ``kubernetes`` Deployments, or a
plugin's). Front doors (``jmk serve``, ``%serve``, the sidebar) pick one by name from the registry
(``targets/registry.py``) and see every endpoint as an :class:`EndpointSummary`. This module is a leaf
of the package's serving side: it imports no implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import EndpointNotFound


@dataclass
class EndpointSummary:
    """One endpoint as a listing shows it, whatever its target.

    ``status``: ``running`` (it answers), ``exited`` or ``stopped`` (local), ``starting`` or
    ``updating`` (Kubernetes, while replicas come up). ``url`` is where its clients reach it (for
    Kubernetes, the Service inside the cluster). ``source`` is the target's own object.
    """

    name: str
    backend: str
    status: str
    url: str
    model_uri: str
    started: float | None = None
    stopped: float | None = None
    pid: int | None = None
    namespace: str | None = None
    replicas: str = ""
    flags: dict[str, Any] = field(default_factory=dict)
    identity: tuple[Any, ...] = ()
    source: Any = None

    @property
    def running(self) -> bool:
        """Whether it answers requests (and so has live metrics): a Kubernetes one while it updates, too."""
        return self.status in ("running", "updating")

    @property
    def where(self) -> str:
        """The backend, with the namespace and ready replicas for Kubernetes (``kubernetes team-a 2/2``)."""
        return " ".join(part for part in (self.backend, self.namespace or "", self.replicas) if part)


class EndpointTarget(ABC):
    """Where endpoints run. Every method blocks (processes, HTTP, the Kubernetes API).

    ``configured`` says whether the target can be asked at all (a Kubernetes target without a
    kubeconfig cannot); a listing of every target skips one that is not.
    """

    name: ClassVar[str] = ""

    @property
    def configured(self) -> bool:
        """Whether this target is set up here (listing every target skips it otherwise)."""
        return True

    @abstractmethod
    def deploy(self, model_uri: str, name: str | None = None, port: int | None = None, **flags: Any) -> Any:
        """Start (or roll) an endpoint for ``model_uri`` with the server's ``flags`` (options.py); its object."""

    @abstractmethod
    def list(self) -> list[EndpointSummary]:
        """Every endpoint of this target."""

    def get(self, name: str) -> EndpointSummary:
        """The endpoint ``name``; :class:`~jupyter_mlflow_k8s.errors.NotFoundError` naming the known ones."""
        endpoints = self.list()
        for endpoint in endpoints:
            if endpoint.name == name:
                return endpoint
        raise EndpointNotFound(name, [e.name for e in endpoints], backend=self.name)

    @abstractmethod
    def stop(self, name: str) -> EndpointSummary:
        """Stop (or delete) the endpoint ``name``; what it was."""

    @abstractmethod
    def predict(self, name: str, data: Any, content_type: str | None = None) -> Any:
        """The predictions of endpoint ``name`` for ``data`` (as ``ServingManager.predict`` takes it)."""

    @abstractmethod
    def metrics_text(self, name: str, timeout: float = 2.0) -> str:
        """The endpoint's Prometheus ``/metrics`` now (every replica's, one after the other)."""
