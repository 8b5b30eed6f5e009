"""The Jupyter server extension behind the JupyterLab sidebar: an authenticated REST API under ``/jmk/api``.

Layout: ``app.py`` (the ExtensionApp and its config), ``handlers.py`` (tornado handlers: parse,
call, serialize; errors mapped to statuses once), ``service.py`` (the blocking calls, run off the
event loop), ``shapes.py`` (the wire shapes and MLflow reads), ``metrics_client.py`` (scrapes of
serving endpoints' ``/metrics`` turned into rates and quantiles), ``openapi.yaml`` (the contract).
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Where jupyter_server finds the extension (``jupyter_mlflow_k8s.labapp`` in ``jpserver_extensions``)."""
    from .app import JMKExtensionApp

    return [{"module": "jupyter_mlflow_k8s.labapp", "app": JMKExtensionApp}]
