"""The ``local`` endpoint target: inference servers as processes of this machine (``ServingManager``)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from ...config import JMKSettings, load_settings
from ...errors import JMKUsageError
from ..manager import Endpoint, ServingError, ServingManager
from .base import EndpointSummary, EndpointTarget


def summary(endpoint: Endpoint) -> EndpointSummary:
    """A local endpoint as listings show it; a restart under the same name has a new identity."""
    return EndpointSummary(name=endpoint.name, backend="local", status=endpoint.status, url=endpoint.url,
                           model_uri=endpoint.model_uri, started=endpoint.started, stopped=endpoint.stopped,
                           pid=endpoint.pid, flags=dict(endpoint.flags),
                           identity=(endpoint.pid, endpoint.pid_start, endpoint.started), source=endpoint)


class LocalTarget(EndpointTarget):
    """Detached server processes recorded under the state directory (they outlive the kernel)."""

    name = "local"

    def __init__(self, settings: JMKSettings | None = None, config: Any = None,
                 manager: ServingManager | None = None) -> None:
        self.manager = manager or ServingManager(settings or load_settings(config))

    def deploy(self, model_uri: str, name: str | None = None, port: int | None = None, monitor: bool = False,
               **flags: Any) -> Endpoint:
        """Start a server process (``ServingManager.start``); its :class:`Endpoint` once it listens.

        Raises:
            JMKUsageError: ``monitor``: a PodMonitor needs a Kubernetes endpoint.
        """
        if monitor:
            raise JMKUsageError("monitor=True puts a PodMonitor and a PrometheusRule beside a Kubernetes endpoint: "
                                "deploy with the kubernetes target (--backend kubernetes), or leave it out.")
        return self.manager.start(model_uri, name=name, port=port, **flags)

    def list(self) -> list[EndpointSummary]:
        """The recorded endpoints, newest first."""
        return [summary(endpoint) for endpoint in self.manager.list()]

    def get(self, name: str) -> EndpointSummary:
        """The endpoint ``name`` (``EndpointNotFound`` naming the known ones)."""
        return summary(self.manager.get(name))

    def stop(self, name: str) -> EndpointSummary:
        """Stop the process; the record stays, stopped."""
        return summary(self.manager.stop(name))

    def predict(self, name: str, data: Any, content_type: str | None = None) -> Any:
        """POST to the process's ``/invocations`` (``name`` may be an http(s) URL)."""
        return self.manager.predict(name, data, content_type=content_type)

    def metrics_text(self, name: str, timeout: float = 2.0) -> str:
        """GET the process's ``/metrics``."""
        endpoint = self.manager.get(name)
        try:
            with urllib.request.urlopen(f"{endpoint.url}/metrics", timeout=timeout) as response:  # noqa: S310
                return str(response.read().decode("utf-8", errors="replace"))
        except (urllib.error.URLError, OSError) as exc:
            raise ServingError(f"Could not read {endpoint.url}/metrics: {exc}") from None
