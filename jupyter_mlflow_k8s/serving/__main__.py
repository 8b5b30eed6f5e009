"""``python -m jupyter_mlflow_k8s.serving MODEL_URI``: run the inference server in the foreground.

Exit codes: 0 after SIGTERM/SIGINT, 1 when ``--workers`` processes keep dying as soon as they start,
2 for bad arguments or a model that cannot be found or loaded, 3 when the port is taken, 4 when the
tracking server does not answer (a later try may work). With ``--workers N`` (N > 1) this process
loads the model and supervises N forked workers, replacing any that dies (:mod:`.workers`), with
their metrics in one prometheus_client multiprocess directory. The line ``jmk-serve: listening on
http://HOST:PORT`` is printed once requests are accepted (``jmk serve`` waits for it).
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .model_loading import ServerStartupError, load
from .options import add_server_arguments, settings_values
from .server import ServerSettings
from .workers import Supervisor, multiprocess_metrics

if TYPE_CHECKING:
    from .server import InferenceServer

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
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a log's last lines say why, not 100%
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

    def server() -> InferenceServer:
        return InferenceServer(primary, settings, canary, shadow)

    def announce() -> None:
        print(f"jmk-serve: listening on http://{_address(sock)}", flush=True)

    with multiprocess_metrics(enabled=args.workers > 1) as directory:  # before any metric is created
        if directory is None:  # one process: no supervisor, nothing forked
            _run(server(), sock, on_ready=announce)
            return 0
        from prometheus_client.multiprocess import mark_process_dead

        from .metrics import restarts_counter

        restarts = restarts_counter()

        def replaced(pid: int) -> None:
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # its live gauges go, its counts stay
            restarts.inc()

        supervisor = Supervisor(args.workers, lambda ready: _run(server(), sock, on_ready=ready), announce,
                                replaced)
        return supervisor.run()


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _run(server: InferenceServer, sock: socket.socket, on_ready: Callable[[], object]) -> None:
    """Serve on ``sock`` until SIGTERM/SIGINT; ``on_ready`` once requests are accepted."""
    from aiohttp import web

    app = server.app()

    async def ready(_: object) -> None:
        on_ready()

    app.on_startup.append(ready)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


def main() -> None:
    """Console entry: serve, then exit with :func:`serve`'s code."""
    sys.exit(serve())


if __name__ == "__main__":
    main()
