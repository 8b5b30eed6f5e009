"""The REST API's one error rule, through a real Jupyter server: the status is the error family's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_mlflow_k8s.errors import NotFoundError
from jupyter_mlflow_k8s.labapp.handlers import http_error
from jupyter_mlflow_k8s.labapp.metrics_client import ScrapeError
from jupyter_mlflow_k8s.labapp.service import SidebarService


@pytest.fixture
def jp_server_config(state_dir: Path) -> Config:
    return Config({"ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}}})


async def status_of(jp_fetch: Any, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> tuple[int, str]:
    def versions(self: SidebarService, name: str) -> Any:
        raise error

    monkeypatch.setattr(SidebarService, "versions", versions)
    try:
        await jp_fetch("jmk", "api", "models", "m", "versions")
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, json.loads(exc.response.body)["message"]
    raise AssertionError("the request succeeded")


async def test_statuses_come_from_the_family(jp_fetch: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await status_of(jp_fetch, monkeypatch, NotFoundError("No model 'm'.")) == (404, "No model 'm'.")
    # a LookupError that is not ours is a bug: a 500, not a 404 that hides it
    status, message = await status_of(jp_fetch, monkeypatch, KeyError("steps"))
    assert status == 500 and "KeyError" in message
    forbidden = kubernetes.client.ApiException(status=403, reason="Forbidden")
    status, message = await status_of(jp_fetch, monkeypatch, forbidden)
    assert status == 503 and message.startswith("The Kubernetes API answered 403 Forbidden")


def test_the_mapping() -> None:
    assert http_error(LookupError("x")) is None
    assert http_error(KeyError("x")) is None
    error = http_error(NotFoundError("gone"))
    assert error is not None and error.status_code == 404
    scrape = http_error(ScrapeError("no /metrics"))
    assert scrape is not None and scrape.status_code == 502
