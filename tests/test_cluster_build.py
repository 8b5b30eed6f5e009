"""Where the test cluster cannot be built, build.sh says why (exit 3) and the Kubernetes tests skip with that."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cluster.control import BUILD_SCRIPT, ClusterUnavailable, ensure_built


@pytest.fixture
def no_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with the basic tools build.sh needs but no apt-get/dpkg-deb, and an empty cache."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("bash", "mkdir", "flock", "cut", "cat", "rm"):
        found = shutil.which(name)
        assert found, name
        (tools / name).symlink_to(found)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setenv("JMK_K8S_CACHE", str(cache))
    return cache


def test_build_script_says_why_it_is_impossible(no_apt: Path) -> None:
    result = subprocess.run([shutil.which("bash") or "bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 3
    assert "impossible here: not a Debian system (no apt-get/dpkg-deb)" in result.stderr
    assert (no_apt / "IMPOSSIBLE").read_text().strip() == "not a Debian system (no apt-get/dpkg-deb)"


def test_impossible_build_becomes_the_skip_reason(no_apt: Path) -> None:
    with pytest.raises(ClusterUnavailable, match=r"^not a Debian system \(no apt-get/dpkg-deb\)$"):
        ensure_built()
