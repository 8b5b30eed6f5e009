"""``python -m jupyter_mlflow_k8s.serving MODEL_URI``: run the inference server in the foreground.

Exit codes: 0 after SIGTERM/SIGINT, 2 for bad arguments or a model that cannot be found or
loaded, 3 when the port is taken. The line ``jmk-serve: listening on http://HOST:PORT`` is
printed once requests are accepted (``jmk serve`` waits for it).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import socket
import sys
from collections.abc import Sequence

from .model_loading import ServerStartupError, load
from .options import add_server_arguments, settings_values
from .server import ServerSettings

EXAMPLES = """examples:
  python -m jupyter_mlflow_k8s.serving models:/churn@prod --port 8080
  python -m jupyter_mlflow_k8s.serving models:/churn/3 --canary models:/churn/4 --canary-fraction 0.1
  python -m jupyter_mlflow_k8s.serving models:/churn@prod --shadow models:/churn@challenger --no-batching
"""


def parser() -> argparse.ArgumentParser:
    """The server's flags (``jmk serve`` passes the same ones through)."""
    p = argparse.ArgumentParser(prog="python -m jupyter_mlflow_k8s.serving", epilog=EXAMPLES,
                                description="Serve an MLflow model: /invocations, /ping, /health, /version, /metrics.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_uri", metavar="MODEL_URI",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a path")
    add_server_arguments(p)  # the one table of the server's flags (options.py)
    return p


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """Checked settings from parsed flags (:class:`ServerStartupError` names every bad one)."""
    settings = ServerSettings(**settings_values(args))
    settings.check()
    if args.workers < 1:
        raise ServerStartupError(f"--workers {args.workers}: use 1 or more processes.")
    if args.canary and args.shadow:
        raise ServerStartupError("--canary and --shadow together: compare one version at a time.")
    return settings


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads, so a taken port fails in a second."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerStartupError(f"Port {port} on {host} is already in use. Stop what listens there, or pick "
                               "another port with --port.", exit_code=3) from exc
        raise ServerStartupError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def serve(argv: Sequence[str] | None = None) -> int:
    """Parse, bind, load, and serve until a signal; return the exit code."""
    args = parser().parse_args(argv)
    try:
        settings = settings_from(args)
        sock = bind(settings.host, settings.port)
        from .server import InferenceServer

        primary = load(args.model_uri)
        canary = load(args.canary, "canary") if args.canary else None
        shadow = load(args.shadow, "shadow") if args.shadow else None
    except ServerStartupError as exc:
        print(f"jmk-serve: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    children = _fork(args.workers - 1)
    if children is None:  # a worker
        _run(InferenceServer(primary, settings, canary, shadow), sock, announce=False)
        return 0
    _run(InferenceServer(primary, settings, canary, shadow), sock, announce=True)
    for pid in children:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    return 0


def _fork(count: int) -> list[int] | None:
    """Fork ``count`` workers that share the socket; None in a worker, the children's pids in the parent."""
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            return None
        children.append(pid)
    return children


def _run(server: object, sock: socket.socket, announce: bool) -> None:
    from aiohttp import web

    from .server import InferenceServer

    assert isinstance(server, InferenceServer)
    app = server.app()
    host, port = sock.getsockname()[:2]

    async def announced(_: object) -> None:
        print(f"jmk-serve: listening on http://{host}:{port}", flush=True)

    if announce:
        app.on_startup.append(announced)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


def main() -> None:
    """Console entry: serve, then exit with :func:`serve`'s code."""
    sys.exit(serve())


if __name__ == "__main__":
    main()
