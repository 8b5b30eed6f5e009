"""pytest-jupyter for the sidebar's API tests only: ``jp_fetch``, a real Jupyter server, its event loop.

Imported here rather than declared in ``pytest_plugins`` at the top, so that its autouse fixtures
(a fresh event loop per test, closed afterwards, and the server cleanup) and its coroutine runner
apply to this folder alone: elsewhere, tests run their own loops (kernels, the cluster watch).
"""

from pytest_jupyter.jupyter_server import *  # noqa: F403
