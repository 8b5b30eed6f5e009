"""``jmk serve MODEL_URI | list | stop NAME | predict NAME DATA``: local inference servers from a shell.

Parses, calls :class:`~jupyter_mlflow_k8s.serving.manager.ServingManager` (or the Kubernetes deployer
for ``--backend kubernetes``), prints. The server's flags are declared once here, in
``SERVE_OPTIONS``, and shared with ``%serve``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..exceptions import JMKUsageError
from ..widgets.table import Table

USAGE = """jmk serve MODEL_URI [--name NAME] [--port PORT] [server flags] [--backend local|kubernetes] [--foreground]
       jmk serve list
       jmk serve stop NAME
       jmk serve predict NAME JSON_OR_@FILE"""
EXAMPLES = """examples:
  jmk serve models:/churn@prod                      a local server on a free port, in the background
  jmk serve models:/churn/3 --name churn --port 8080 --workers 2
  jmk serve models:/churn@prod --canary models:/churn/4 --canary-fraction 0.1
  jmk serve list
  jmk serve predict churn '{"dataframe_records": [{"age": 31, "plan": 2}]}'
  jmk serve predict churn '[[31, 2], [45, 1]]'       (a list of lists is sent as instances)
  jmk serve predict churn @rows.json                 (or @rows.csv, sent as text/csv)
  jmk serve stop churn"""

# (option strings, argparse keywords) of every flag of `jmk serve MODEL_URI` and `%serve MODEL_URI`.
SERVE_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--name",), {"help": "the endpoint's name (default: from the model URI, e.g. churn-prod)"}),
    (("--port",), {"type": int, "help": "port to listen on (default: a free one)"}),
    (("--host",), {"help": "address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)"}),
    (("--workers",), {"type": int, "help": "server processes sharing the port, each with the model (default 1)"}),
    (("--max-batch-size",), {"type": int, "metavar": "ROWS", "help": "most rows one model call gets (default 64)"}),
    (("--max-wait-ms",), {"type": float, "metavar": "MS", "help": "how long a batch waits for more requests"}),
    (("--no-batching",), {"action": "store_true", "help": "one model call per request"}),
    (("--canary",), {"metavar": "URI", "help": "a second version answering --canary-fraction of the requests"}),
    (("--canary-fraction",), {"type": float, "metavar": "F", "help": "share of requests for the canary (0.1)"}),
    (("--shadow",), {"metavar": "URI", "help": "a version that gets a copy of every request, only measured"}),
    (("--max-body-mb",), {"type": float, "metavar": "MB", "help": "largest request body (default 20; 413 above)"}),
    (("--drift-window",), {"type": int, "metavar": "ROWS", "help": "rows per feature the drift is computed over"}),
    (("--backend",), {"choices": ("local", "kubernetes"), "help": "local process (default) or Deployment+Service"}),
]
FLAG_KEYS = ("host", "workers", "max_batch_size", "max_wait_ms", "no_batching", "canary", "canary_fraction", "shadow",
             "max_body_mb", "drift_window")
COMMANDS = ("list", "stop", "predict")
KUBERNETES_WAIT_SECONDS = 300.0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


class EndpointTable(Table):
    """``jmk serve list`` and ``%serve list``: text in terminals, an HTML table in notebooks."""

    columns = ("name", "status", "url", "model", "pid", "age")
    css_class = "jmk-EndpointTable"
    empty_message = "No endpoints yet. Start one with %serve MODEL_URI (or `jmk serve MODEL_URI`)."

    def __init__(self, endpoints: list[Any]) -> None:
        super().__init__(
            (e.name, e.status, e.url, e.model_uri, e.pid or "", _age(time.time() - e.started)) for e in endpoints
        )


def server_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The server flags given on a command line (``SERVE_OPTIONS`` parsed), as ``ServingManager.start`` keywords."""
    return {key: value for key in FLAG_KEYS if (value := getattr(args, key)) is not None and value is not False}


def started_message(endpoint: Any) -> str:
    """What ``jmk serve`` and ``%serve`` say once a server listens."""
    return (f"serving {endpoint.model_uri} as {endpoint.name} at {endpoint.url} (pid {endpoint.pid}, "
            f"log {endpoint.log_path})")


def deploy_to_kubernetes(model_uri: str, name: str | None, port: int | None, flags: dict[str, Any],
                         config: Any = None, wait: float | None = KUBERNETES_WAIT_SECONDS) -> Any:
    """``--backend kubernetes``: a Deployment and a Service, by :func:`jupyter_mlflow_k8s.serving.kubernetes.deploy`.

    The server flags become the :class:`~jupyter_mlflow_k8s.serving.kubernetes.EndpointSpec`'s; pods get the
    Kubernetes backend's settings (``c.KubernetesBackend...``, from ``config``); waits ``wait`` seconds for
    the replicas to be available. Returns the deployed endpoint.
    """
    from ..config import load_settings
    from ..jobs import JobService
    from . import kubernetes
    from .manager import default_name

    if flags.get("host"):
        raise JMKUsageError("--host does not go with --backend kubernetes: pods listen on every address, "
                            "behind their Service.")
    extra: list[str] = []
    for key in ("max_body_mb", "drift_window"):
        if flags.get(key) is not None:
            extra += [f"--{key.replace('_', '-')}", str(flags[key])]
    settings = load_settings(config)
    spec_fields: dict[str, Any] = {
        "name": name or default_name(model_uri), "model_uri": model_uri, "batching": not flags.get("no_batching"),
        "tracking_uri": settings.tracking_uri, "extra_args": tuple(extra),
        **{key: flags[key] for key in ("workers", "max_batch_size", "max_wait_ms", "canary", "canary_fraction",
                                       "shadow") if flags.get(key) is not None},
    }
    if port is not None:
        spec_fields["port"] = port
    backend: Any = JobService(settings, backend_config=config).backend("kubernetes")
    spec = kubernetes.EndpointSpec(**spec_fields)
    return kubernetes.deploy(backend.api, spec, kubernetes.endpoint_settings(backend), wait=wait)


def read_data(text: str) -> tuple[Any, str | None]:
    """``JSON_OR_@FILE``: parsed JSON, or a file's JSON (``@rows.json``), or a CSV file's text (``@rows.csv``).

    Returns the data and its content type (``text/csv``, or None for JSON that ``predict`` converts).
    """
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            body = sys.stdin.read() if text == "@-" else path.read_text()
        except OSError as exc:
            raise JMKUsageError(f"Cannot read {path}: {exc.strerror}. Give JSON, or @FILE naming a file.") from None
        if path.suffix.lower() == ".csv":
            return body, "text/csv"
        text = body
    try:
        return json.loads(text), None
    except ValueError as exc:
        raise JMKUsageError(
            f"The data is not JSON ({exc}). Give JSON such as '[[5.1, 3.5, 1.4, 0.2]]' or "
            "'{\"dataframe_records\": [...]}', or @FILE (.json, or .csv)."
        ) from None


def _manager() -> Any:
    from .manager import ServingManager

    return ServingManager()


def _cmd_serve(args: argparse.Namespace) -> int:
    target, rest = args.model_uri, args.rest
    given = [f"--{key.replace('_', '-')}" for key in ("name", "port", *FLAG_KEYS, "backend")
             if getattr(args, key) is not None and getattr(args, key) is not False]
    given += ["--foreground"] if args.foreground else []
    if target in COMMANDS:
        if given:
            raise JMKUsageError(f"jmk serve {target} takes no {', '.join(given)}.\nUsage: {USAGE}")
        wanted = {"list": 0, "stop": 1, "predict": 2}[target]
        if len(rest) != wanted:
            raise JMKUsageError(f"jmk serve {target} takes {('nothing more', 'NAME', 'NAME and DATA')[wanted]}.\n"
                                f"Usage: {USAGE}")
        if target == "list":
            return _cmd_list()
        return _cmd_stop(rest[0]) if target == "stop" else _cmd_predict(rest[0], rest[1])
    if rest:
        raise JMKUsageError(f"Unexpected {' '.join(rest)}: jmk serve takes one MODEL_URI.\nUsage: {USAGE}")
    from .manager import check_name, default_name, server_arguments

    flags = server_flags(args)
    server_arguments(flags)  # every flag checked before anything starts
    if args.name is not None:
        check_name(args.name)
    if args.backend == "kubernetes":
        if args.foreground:
            raise JMKUsageError("--foreground runs the server in this terminal: it does not go with --backend "
                                "kubernetes.")
        deployed = deploy_to_kubernetes(target, args.name, args.port, flags)
        print(f"deployed {deployed.name} in namespace {deployed.namespace}: {deployed.model_uri}, "
              f"{deployed.available}/{deployed.replicas} replicas available, at {deployed.url} (inside the cluster)")
        return 0
    manager = _manager()
    if args.foreground:
        from .manager import free_port

        port = args.port or free_port(flags.get("host") or "127.0.0.1")
        argv = manager.command(target, args.name or default_name(target), port, **flags)
        process = subprocess.Popen(argv, env=manager.environment())
        try:
            return process.wait()
        except KeyboardInterrupt:  # the server got the same SIGINT: let it finish
            return process.wait()
    endpoint = manager.start(target, name=args.name, port=args.port, **flags)
    print(started_message(endpoint))
    print(f"  query: jmk serve predict {endpoint.name} '[[...]]'   stop: jmk serve stop {endpoint.name}")
    return 0


def _cmd_list() -> int:
    print(repr(EndpointTable(_manager().list())))
    return 0


def _cmd_stop(name: str) -> int:
    endpoint = _manager().stop(name)
    print(f"stopped {endpoint.name} ({endpoint.model_uri}, was at {endpoint.url})")
    return 0


def _cmd_predict(name: str, text: str) -> int:
    data, content_type = read_data(text)
    print(json.dumps(_manager().predict(name, data, content_type=content_type)))
    return 0


def add_serve_command(sub: Any) -> None:
    """Add ``jmk serve ...`` to the ``jmk`` parser's subcommands."""
    serve = sub.add_parser(
        "serve", help="serve a model: a local inference server (or a Deployment); list, stop and query them",
        usage=USAGE, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start an inference server for MODEL_URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... "
                    "or a path), or list, stop or query the local ones.",
    )
    serve.add_argument("model_uri", metavar="MODEL_URI|list|stop|predict", help="what to serve, or a command")
    serve.add_argument("rest", nargs="*", metavar="ARG", help="stop NAME; predict NAME JSON_OR_@FILE")
    for names, options in SERVE_OPTIONS:
        serve.add_argument(*names, **options)
    serve.add_argument("--foreground", action="store_true",
                       help="run the server in this terminal until Ctrl-C (not recorded; for containers and debugging)")
    serve.set_defaults(func=_cmd_serve)
