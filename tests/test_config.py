"""``jupyter_config``: the Jupyter configuration files ``jmk`` reads, in Jupyter's order (no server, no kernel)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jupyter_mlflow_k8s.config import jupyter_config, load_settings


@pytest.fixture
def config_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A user directory (JUPYTER_CONFIG_DIR) and one more on JUPYTER_CONFIG_PATH, which Jupyter ranks above it."""
    user, extra = tmp_path / "user", tmp_path / "extra"
    user.mkdir()
    extra.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(user))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(extra))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    return user, extra


def test_our_file_over_the_sidebars_then_the_first_directory_then_json_over_py(
        config_dirs: tuple[Path, Path]) -> None:
    user, extra = config_dirs
    (extra / "jupyter_server_config.py").write_text(
        "c.KubernetesBackend.namespace = 'from-server'\nc.KubernetesBackend.image = 'extra:1'\n")
    (user / "jupyter_server_config.py").write_text(
        "c.KubernetesBackend.image = 'user:1'\nc.JMKSettings.default_backend = 'kubernetes'\n")
    (user / "jupyter_mlflow_k8s_config.py").write_text(
        "c.KubernetesBackend.namespace = 'from-ours'\nc.KubernetesBackend.image_pull_secrets = ['py']\n")
    (user / "jupyter_mlflow_k8s_config.json").write_text('{"KubernetesBackend": {"image_pull_secrets": ["regcred"]}}')
    config = jupyter_config()
    assert config.KubernetesBackend.namespace == "from-ours"
    assert config.KubernetesBackend.image == "extra:1"  # JUPYTER_CONFIG_PATH ranks above JUPYTER_CONFIG_DIR
    assert config.KubernetesBackend.image_pull_secrets == ["regcred"]
    assert load_settings(config).default_backend == "kubernetes"


def test_a_broken_file_is_skipped_with_a_warning(config_dirs: tuple[Path, Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    user, _ = config_dirs
    (user / "jupyter_server_config.py").write_text("c.KubernetesBackend.namespace = 'ok'\n")
    (user / "jupyter_mlflow_k8s_config.py").write_text("c.KubernetesBackend.image = (\n")
    with caplog.at_level(logging.WARNING, logger="jupyter_mlflow_k8s.config"):
        config = jupyter_config()
    assert config.KubernetesBackend.namespace == "ok" and "image" not in config.KubernetesBackend
    assert "jupyter_mlflow_k8s_config.py" in caplog.text and "SyntaxError" in caplog.text


def test_a_caller_cannot_change_the_cached_config(config_dirs: tuple[Path, Path]) -> None:
    user, _ = config_dirs
    (user / "jupyter_mlflow_k8s_config.py").write_text("c.KubernetesBackend.namespace = 'team'\n")
    jupyter_config().KubernetesBackend.namespace = "changed"
    assert jupyter_config().KubernetesBackend.namespace == "team"
