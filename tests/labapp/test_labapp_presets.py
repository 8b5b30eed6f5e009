"""``GET /jmk/api/presets`` against a real Jupyter server: the presets of the SERVER's own config, for the launch form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from labapp_client import raw_request
from traitlets.config import Config

PRESETS = {
    "a100": {"gpus": 1, "memory": "80Gi", "node_selector": {"gpu": "a100"}},
    "cpu-small": {"cpu": "2", "memory": "4Gi"},
    "broken": {"gpus": 1, "memroy": "8Gi"},
}


@pytest.fixture
def jp_server_config(state_dir: Path) -> Config:
    """The extension enabled, with three presets in the server's config (one misconfigured)."""
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}},
            "KubernetesBackend": {"presets": PRESETS},
            "JMKSettings": {"default_backend": "kubernetes"},
        }
    )


async def test_presets_lists_the_servers_presets_with_their_problems(jp_fetch: Any) -> None:
    response = await jp_fetch("jmk", "api", "presets")
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert [p["name"] for p in body["presets"]] == ["a100", "broken", "cpu-small"]
    a100, broken, small = body["presets"]
    assert a100 == {"name": "a100", "summary": "gpus=1, memory=80Gi", "gpus": 1, "problem": None}
    assert small == {"name": "cpu-small", "summary": "cpu=2, memory=4Gi", "gpus": None, "problem": None}
    assert "unknown key 'memroy'" in broken["problem"] and "did you mean 'memory'" in broken["problem"]
    assert body["backends"] == ["local", "kubernetes"]
    assert body["default_backend"] == "kubernetes"


async def test_presets_needs_the_token(jp_fetch: Any, jp_http_port: int, jp_base_url: str) -> None:
    assert await raw_request(jp_http_port, "GET", f"{jp_base_url}jmk/api/presets") in (401, 403)


async def test_presets_are_described_in_the_openapi_document(jp_fetch: Any) -> None:
    spec = yaml.safe_load((await jp_fetch("jmk", "api", "openapi.yaml")).body)
    schema = spec["paths"]["/presets"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Presets"}
    assert set(spec["components"]["schemas"]["Presets"]["required"]) == {"presets", "backends", "default_backend"}
    assert set(spec["components"]["schemas"]["Preset"]["required"]) == {"name", "summary", "gpus", "problem"}


class TestNoPresets:
    """A server with no presets configured answers an empty list and the default backend."""

    @pytest.fixture
    def jp_server_config(self, state_dir: Path) -> Config:
        return Config({"ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}}})

    async def test_empty(self, jp_fetch: Any) -> None:
        body = json.loads((await jp_fetch("jmk", "api", "presets")).body)
        assert body == {"presets": [], "backends": ["local", "kubernetes"], "default_backend": "local"}
