"""The JupyterHub harness (:mod:`tests.jupyterhub_server`) on this machine, with a local spawner: no cluster.

A real hub with configurable-http-proxy spawns ``jupyterhub-singleuser`` from this environment as
this user (jupyterhub's ``SimpleLocalProcessSpawner``, each user a home of their own under the
test's folder). Through the proxy: user A's kernel runs code over its websocket; B's token is
refused on A's server, on Jupyter's API and on our sidebar's ``/jmk/api``; A's server stops (its
route leaves the proxy) and starts again. Skipped, with the reason, where the proxy cannot be
installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyterhub_server import Hub, KernelSession, Unavailable, chp_binary, request

SINGLEUSER = Path(sys.executable).parent / "jupyterhub-singleuser"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub spawning local single-user servers, with users ``a`` and ``b``."""
    try:
        chp_binary()
    except Unavailable as error:
        pytest.skip(str(error))
    root = tmp_path_factory.mktemp("jupyterhub")
    config = f"""
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = {str(root / "home" / "{username}")!r}
c.Spawner.cmd = [{str(SINGLEUSER)!r}]
c.Spawner.args = {["--allow-root"] if os.geteuid() == 0 else []!r}  # the same user as the hub: root here
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.environment = {{"JMK_STATE_DIR": {str(root / "state" / "{username}")!r},
                          "JUPYTER_CONFIG_DIR": {str(root / "jupyter")!r}}}
"""
    with Hub(config, root / "hub") as running:
        for name in ("a", "b"):
            running.add_user(name)
        yield running
    assert running.leftovers() == [], "the hub's proxy or servers outlived stop()"


def test_kernel_through_the_proxy_and_tokens_of_other_users(hub: Hub) -> None:
    token_a, token_b = hub.user_token("a"), hub.user_token("b")
    server = hub.start_server("a")
    assert server["url"] == "/user/a/"
    url = hub.user_url("a")
    assert "/user/a/" in hub.routes()

    with KernelSession(url, token_a) as kernel:
        result = kernel.execute("x = 6 * 7; print(x)")
        assert (result.status, result.stdout, result.error) == ("ok", "42\n", None)
        result = kernel.execute("x + 1")
        assert result.text == "43"
        result = kernel.execute("1 / 0")
        assert result.status == "error" and result.error is not None and result.error["ename"] == "ZeroDivisionError"

    # B's token carries B's permissions only: A's server refuses it, on Jupyter's API and on ours.
    assert request("GET", f"{url}api/kernels", token_a).status == 200
    assert request("GET", f"{url}api/kernels", token_b).status == 403
    jobs = request("GET", f"{url}jmk/api/jobs", token_a)
    assert jobs.status == 200, jobs.body
    assert jobs.json()["jobs"] == []
    assert request("GET", f"{url}jmk/api/jobs", token_b).status == 403
    assert request("GET", f"{url}jmk/api/jobs").status == 403  # no token: refused (an API, no login redirect)

    hub.stop_server("a")
    assert "/user/a/" not in hub.routes()
    assert request("GET", f"{url}api/kernels", token_a).status != 200

    hub.start_server("a")
    with KernelSession(url, token_a) as kernel:
        assert kernel.execute("print('again')").stdout == "again\n"
    # A's server (and its kernel) still run: the fixture's teardown checks that stopping the hub ends them.


def test_chp_unavailable_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing installed there yet
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(Unavailable, match="needs node, which is not on PATH"):
        chp_binary()
