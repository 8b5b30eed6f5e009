"""``jmk serve MODEL_URI | list | stop NAME | predict NAME DATA``: inference servers from a shell.

Parses, calls an endpoint target (``serving/targets``: ``local`` processes, ``kubernetes`` Deployments,
chosen with ``--backend``), prints. The server's flags come from the one table in ``serving/options.py``.
Without ``--backend``, ``list`` shows the local endpoints and, when a cluster is configured, the
Kubernetes ones (saying so when the API server does not answer); ``stop`` and ``predict`` look locally
first, then on Kubernetes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import JMKUsageError
from ..widgets.endpoints import EndpointTable
from .options import deploy_options, front_arguments, given_flags, given_options, server_arguments
from .targets import EndpointTarget, get_target
from .targets.listing import find, list_all, started_message

__all__ = ["add_serve_command", "read_data"]

USAGE = """jmk serve MODEL_URI [--name NAME] [--port PORT] [server flags] [--backend local|kubernetes [--monitor]]
                [--foreground]
       jmk serve list [--backend local|kubernetes]
       jmk serve stop NAME [--backend local|kubernetes]
       jmk serve predict NAME JSON_OR_@FILE [--backend local|kubernetes]"""
EXAMPLES = """examples:
  jmk serve models:/churn@prod                      a local server on a free port, in the background
  jmk serve models:/churn/3 --name churn --port 8080 --workers 2
  jmk serve models:/churn@prod --canary models:/churn/4 --canary-fraction 0.1
  jmk serve list
  jmk serve predict churn '{"dataframe_records": [{"age": 31, "plan": 2}]}'
  jmk serve predict churn '[[31, 2], [45, 1]]'       (a list of lists is sent as instances)
  jmk serve predict churn @rows.json                 (or @rows.csv, sent as text/csv)
  jmk serve stop churn
  jmk serve models:/churn@prod --backend kubernetes  a Deployment and a Service in the backend's namespace
  jmk serve models:/churn@prod --backend kubernetes --monitor   and a PodMonitor and a PrometheusRule
  jmk serve list --backend kubernetes
  jmk serve stop churn-prod --backend kubernetes"""

COMMANDS = ("list", "stop", "predict")


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


def _targets(backend: str | None) -> list[EndpointTarget]:
    """``--backend``'s target alone, or every target (local first) when none is named."""
    names = [backend] if backend else ["local", "kubernetes"]
    return [get_target(name) for name in names]


def _cmd_serve(args: argparse.Namespace) -> int:
    target, rest = args.model_uri, args.rest
    given = given_options(args) + (["--foreground"] if args.foreground else [])
    if target in COMMANDS:
        given = [option for option in given if option != "--backend"]
        if given:
            raise JMKUsageError(f"jmk serve {target} takes no {', '.join(given)}.\nUsage: {USAGE}")
        wanted = {"list": 0, "stop": 1, "predict": 2}[target]
        if len(rest) != wanted:
            raise JMKUsageError(f"jmk serve {target} takes {('nothing more', 'NAME', 'NAME and DATA')[wanted]}.\n"
                                f"Usage: {USAGE}")
        targets = _targets(args.backend)
        if target == "list":
            return _cmd_list(targets)
        return _cmd_stop(targets, rest[0]) if target == "stop" else _cmd_predict(targets, rest[0], rest[1])
    if rest:
        raise JMKUsageError(f"Unexpected {' '.join(rest)}: jmk serve takes one MODEL_URI.\nUsage: {USAGE}")
    from .manager import check_name

    flags = given_flags(args)
    server_arguments(flags)  # every flag checked before anything starts
    deploying = deploy_options(args)
    if args.name is not None:
        check_name(args.name)
    if args.backend not in (None, "local"):
        if args.foreground:
            raise JMKUsageError(f"--foreground runs the server in this terminal: it does not go with --backend "
                                f"{args.backend}.")
        deployed = get_target(args.backend).deploy(target, name=args.name, port=args.port, **flags, **deploying)
        print(f"deployed {deployed.name} in namespace {deployed.namespace}: {deployed.model_uri}, "
              f"{deployed.available}/{deployed.replicas} replicas available, at {deployed.url} (inside the cluster)")
        return 0
    manager = get_target("local").manager  # type: ignore[attr-defined]  # the local target's process manager
    if args.foreground:
        return int(manager.run_foreground(target, args.name, args.port, **flags))
    endpoint = manager.start(target, name=args.name, port=args.port, **flags)
    print(started_message(endpoint))
    print(f"  query: jmk serve predict {endpoint.name} '[[...]]'   stop: jmk serve stop {endpoint.name}")
    return 0


def _cmd_list(targets: list[EndpointTarget]) -> int:
    if len(targets) == 1:  # asked for by name: its failure is the command's
        print(repr(EndpointTable(targets[0].list())))
        return 0
    listing = list_all(targets)
    print(repr(EndpointTable(listing.endpoints)))
    for name, why in listing.unreachable.items():
        print(f"jmk: {name} endpoints not listed, unreachable: {why}", file=sys.stderr)
    return 0


def _cmd_stop(targets: list[EndpointTarget], name: str) -> int:
    target = find(targets, name)[0] if len(targets) > 1 else targets[0]
    endpoint = target.stop(name)
    where = f" in namespace {endpoint.namespace}" if endpoint.namespace else ""
    print(f"stopped {endpoint.name}{where} ({endpoint.model_uri}, was at {endpoint.url})")
    return 0


def _cmd_predict(targets: list[EndpointTarget], name: str, text: str) -> int:
    data, content_type = read_data(text)
    target = targets[0] if len(targets) == 1 or name.startswith(("http://", "https://")) else find(targets, name)[0]
    print(json.dumps(target.predict(name, data, content_type=content_type)))
    return 0


def _complete_target(prefix: str, **_: Any) -> list[str]:
    """argcomplete: the commands, and the ``models:/`` URIs of the registry."""
    from ..config import jupyter_config, load_settings
    from ..tracking.model_registry import ModelNames, uri_candidates

    names = ModelNames().get(load_settings(jupyter_config()).tracking_uri)
    return ["list", "stop", "predict", *uri_candidates(names, prefix)]


def _complete_endpoint(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """argcomplete: after ``stop`` or ``predict``, the names of the local endpoints."""
    if parsed_args.model_uri not in ("stop", "predict") or parsed_args.rest:
        return []
    from ..config import jupyter_config, load_settings
    from .manager import ServingManager

    return [e.name for e in ServingManager(load_settings(jupyter_config())).list()]


def add_serve_command(sub: Any) -> None:
    """Add ``jmk serve ...`` to the ``jmk`` parser's subcommands."""
    serve = sub.add_parser(
        "serve", help="serve a model: a local inference server (or a Deployment); list, stop and query them",
        usage=USAGE, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start an inference server for MODEL_URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... "
                    "or a path), or list, stop or query the local ones.",
    )
    uri = serve.add_argument("model_uri", metavar="MODEL_URI|list|stop|predict", help="what to serve, or a command")
    uri.completer = _complete_target  # type: ignore[attr-defined]
    rest = serve.add_argument("rest", nargs="*", metavar="ARG", help="stop NAME; predict NAME JSON_OR_@FILE")
    rest.completer = _complete_endpoint  # type: ignore[attr-defined]
    for names, options in front_arguments():
        serve.add_argument(*names, **options)
    serve.add_argument("--foreground", action="store_true",
                       help="run the server in this terminal until Ctrl-C (not recorded; for containers and debugging)")
    serve.set_defaults(func=_cmd_serve)
