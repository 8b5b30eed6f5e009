"""What the test cluster says when this machine lacks a piece of the real node: one line, naming what is
missing and how to install it (the cluster then falls back to the node agent, or `--node real` stops with it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cluster import images, node

DEBIAN = Path("/etc/debian_version")
pytestmark = pytest.mark.skipif(not (DEBIAN.exists() and DEBIAN.read_text().startswith("12")),
                                reason="the real node's checks are for Debian 12; elsewhere they say so first")


def hide(monkeypatch: pytest.MonkeyPatch, *tools: str) -> None:
    """Make ``tools`` look uninstalled to the checks (they look them up with shutil.which)."""
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name in tools else which(name, *a, **k))


def one_line(reason: str | None) -> str:
    assert reason is not None and "\n" not in reason and "Traceback" not in reason, reason
    return reason


@pytest.fixture(autouse=True)
def auto_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JMK_TEST_NODE", raising=False)


def test_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert one_line(node.unavailable()).startswith("the real node needs root")
    assert one_line(images.check_tools()).startswith("building the test images needs root")


def test_missing_packages_are_named_with_the_apt_line(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("the root check comes first")
    hide(monkeypatch, "containerd", "buildah")
    reason = one_line(node.unavailable(install=False))
    assert reason.startswith("missing containerd, buildah: apt-get install -y "), reason
    assert {"containerd", "buildah", "runc", "containernetworking-plugins"} <= set(reason.split(": ", 1)[1].split())
    built = one_line(images.check_tools())
    assert built == f"building the test images needs buildah: {images.INSTALL_HINT}"


def test_agent_by_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JMK_TEST_NODE", "agent")
    assert node.unavailable() == "JMK_TEST_NODE=agent"
