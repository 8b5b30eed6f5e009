"""The inference server's options, declared once.

:data:`OPTIONS` is the one table of the server's flags (port, workers, batching, canary, shadow, body
size, drift window, ...). Everything else is generated from it: the server's own argparse flags
(``python -m jupyter_mlflow_k8s.serving``), the flags of ``jmk serve`` and ``%serve`` (the same list
feeds argparse and IPython's ``magic_arguments``), the server's :class:`ServerSettings` values, the
argv a local endpoint is started with, and the fields of a Kubernetes ``EndpointSpec``. It imports
no front door, no IPython and no Kubernetes client.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import JMKUsageError

#: The endpoint targets a front door offers (``--backend``); plugins add more to the registry.
BACKENDS = ("local", "kubernetes")


@dataclass(frozen=True)
class ServerOption:
    """One flag of the server: its type, the server's default, and where else it goes.

    ``start_flag``: a keyword of ``ServingManager.start`` passed to the server's argv (``--port`` and
    ``--name`` are parameters of their own). ``setting``: the :class:`ServerSettings` field it sets
    (``invert`` for a ``--no-X`` switch). ``spec_field``: the Kubernetes ``EndpointSpec`` field; ``None``
    passes it as an extra argument; ``on_kubernetes=False`` refuses it there. ``rule``: a check beyond the
    type (a predicate and what the value must be).
    """

    key: str
    kind: type
    default: Any
    help: str
    front_help: str | None = None
    metavar: str | None = None
    setting: str | None = None
    invert: bool = False
    start_flag: bool = True
    spec_field: str | None = None
    on_kubernetes: bool = True
    rule: tuple[Callable[[Any], bool], str] | None = None

    @property
    def flag(self) -> str:
        """The command-line spelling, ``--max-batch-size``."""
        return "--" + self.key.replace("_", "-")

    def argparse_keywords(self, front: bool) -> dict[str, Any]:
        """``add_argument`` keywords: the server's default, or ``None`` ("not given") for a front door."""
        keywords: dict[str, Any] = {"help": (self.front_help or self.help) if front else self.help}
        if self.kind is bool:
            keywords["action"] = "store_true"
            return keywords
        if self.kind is not str:
            keywords["type"] = self.kind
        if self.metavar:
            keywords["metavar"] = self.metavar
        if not front:
            keywords["default"] = self.default
        return keywords


OPTIONS: tuple[ServerOption, ...] = (
    ServerOption("name", str, "", "the endpoint's name (shown in /health)",
                 "the endpoint's name (default: from the model URI, e.g. churn-prod)",
                 setting="name", start_flag=False, spec_field="name"),
    ServerOption("port", int, 5000, "port to listen on (default 5000)", "port to listen on (default: a free one)",
                 setting="port", start_flag=False, spec_field="port"),
    ServerOption("host", str, "127.0.0.1", "address to listen on (0.0.0.0 in a container)",
                 "address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)",
                 setting="host", on_kubernetes=False),
    ServerOption("workers", int, 1, "processes sharing the port (each loads the model)",
                 "server processes sharing the port, each with the model (default 1)", spec_field="workers"),
    ServerOption("max_batch_size", int, 64, "most rows one model call gets (default 64)", metavar="ROWS",
                 setting="max_batch_size", spec_field="max_batch_size"),
    ServerOption("max_wait_ms", float, 0.0,
                 "how long a batch waits for more requests (default 0: only what queued meanwhile)",
                 "how long a batch waits for more requests", metavar="MS", setting="max_wait_ms",
                 spec_field="max_wait_ms", rule=(lambda value: value >= 0, "must be 0 or more milliseconds")),
    ServerOption("no_batching", bool, False, "one model call per request", setting="batching", invert=True,
                 spec_field="batching"),
    ServerOption("canary", str, None, "a second version that answers --canary-fraction of the requests",
                 "a second version answering --canary-fraction of the requests", metavar="URI", spec_field="canary"),
    ServerOption("canary_fraction", float, 0.1, "share of requests for the canary (default 0.1)",
                 "share of requests for the canary (0.1)", metavar="F", setting="canary_fraction",
                 spec_field="canary_fraction"),
    ServerOption("shadow", str, None, "a version that gets a copy of every request; its answers are only measured",
                 "a version that gets a copy of every request, only measured", metavar="URI", spec_field="shadow"),
    ServerOption("max_body_mb", float, 20.0, "largest request body (default 20 MB; 413 above)",
                 "largest request body (default 20; 413 above)", metavar="MB", setting="max_body_mb",
                 rule=(lambda value: value > 0, "must be more than 0 MB")),
    ServerOption("drift_window", int, 1000, "rows per feature the drift is computed over", metavar="ROWS",
                 setting="drift_window"),
)
BY_KEY: dict[str, ServerOption] = {option.key: option for option in OPTIONS}

#: ``ServingManager.start``'s server keywords and their types.
SERVER_FLAGS: dict[str, type] = {option.key: option.kind for option in OPTIONS if option.start_flag}
#: The same keys, in order (what a parsed command line is read for).
FLAG_KEYS: tuple[str, ...] = tuple(SERVER_FLAGS)

#: ``--backend``: where ``jmk serve`` and ``%serve`` start, list, stop and query endpoints.
BACKEND_ARGUMENT: tuple[tuple[str, ...], dict[str, Any]] = (
    ("--backend",), {"choices": BACKENDS, "help": "local process (default) or Deployment+Service; with list, stop "
                                                  "and predict: only that backend's endpoints"})


#: ``--monitor``: a Kubernetes endpoint's PodMonitor and PrometheusRule. Not a server flag: the server never sees it.
MONITOR_ARGUMENT: tuple[tuple[str, ...], dict[str, Any]] = (
    ("--monitor",), {"action": "store_true", "help": "with --backend kubernetes: a PodMonitor and a PrometheusRule "
                                                     "(prometheus-operator) beside the Deployment"})


def front_arguments() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """``(option strings, add_argument keywords)`` of ``jmk serve`` and ``%serve``, ``--backend`` last.

    Every value defaults to ``None`` (a switch to ``False``): "not given", so the server's own default holds.
    """
    return [((option.flag,), option.argparse_keywords(front=True)) for option in OPTIONS] + [MONITOR_ARGUMENT,
                                                                                               BACKEND_ARGUMENT]


def deploy_options(args: argparse.Namespace) -> dict[str, Any]:
    """What a front door's command line asks of the deployment beyond the server's flags: ``{"monitor": True}``.

    Raises:
        JMKUsageError: ``--monitor`` without ``--backend kubernetes`` (checked before anything starts).
    """
    if not getattr(args, "monitor", False):
        return {}
    if getattr(args, "backend", None) != "kubernetes":
        raise JMKUsageError("--monitor puts a PodMonitor and a PrometheusRule (prometheus-operator) beside a "
                            "Kubernetes endpoint: add --backend kubernetes, or drop --monitor (a local server's "
                            "/metrics is scraped by pointing Prometheus at it).")
    return {"monitor": True}


#: The front doors' flags as a list (``SERVE_OPTIONS`` of ``serving/cli.py`` before this table).
SERVE_OPTIONS = front_arguments()


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's own flags, with its defaults (``python -m jupyter_mlflow_k8s.serving``)."""
    for option in OPTIONS:
        parser.add_argument(option.flag, **option.argparse_keywords(front=False))


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The server flags given on a front door's command line, as ``ServingManager.start`` keywords."""
    return {key: value for key in FLAG_KEYS if (value := getattr(args, key, None)) is not None and value is not False}


def given_options(args: argparse.Namespace,
                  keys: tuple[str, ...] = ("name", "port", *FLAG_KEYS, "monitor", "backend")) -> list[str]:
    """The spellings (``--port``) of the options given on a command line, for "takes no --port" errors."""
    return [f"--{key.replace('_', '-')}" for key in keys
            if getattr(args, key, None) is not None and getattr(args, key, None) is not False]


def settings_values(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~jupyter_mlflow_k8s.serving.server.ServerSettings` keywords from the server's parsed flags."""
    values = args if isinstance(args, Mapping) else vars(args)
    return {option.setting: (not values[option.key]) if option.invert else values[option.key]
            for option in OPTIONS if option.setting is not None and option.key in values}


def server_arguments(flags: Mapping[str, Any]) -> list[str]:
    """The server's command-line options from ``start``'s keyword flags, checked first.

    ``None`` and ``False`` mean "not given". An unknown flag or a value out of range is a usage
    error naming the flag.
    """
    unknown = sorted(set(flags) - set(SERVER_FLAGS))
    if unknown:
        raise JMKUsageError(f"Unknown server flag(s) {', '.join(unknown)}; known: {', '.join(SERVER_FLAGS)}.")
    given = {key: value for key, value in flags.items() if value is not None and value is not False}
    for key, value in given.items():
        option = BY_KEY[key]
        _check_value(option, value)
    if "canary_fraction" in given:
        if "canary" not in given:
            raise JMKUsageError("--canary-fraction needs --canary MODEL_URI: the version that gets that share.")
        if not 0 < given["canary_fraction"] <= 1:
            raise JMKUsageError(f"--canary-fraction is a share of requests in (0, 1], such as 0.1; not "
                                f"{given['canary_fraction']!r}.")
    if "canary" in given and "shadow" in given:
        raise JMKUsageError("--canary and --shadow together: compare one version at a time.")
    words: list[str] = []
    for key, value in given.items():
        flag = BY_KEY[key].flag
        words += [flag] if value is True else [flag, str(value)]
    return words


def _check_value(option: ServerOption, value: Any) -> None:
    flag, kind = option.flag, option.kind
    if kind is bool and value is not True:
        raise JMKUsageError(f"{flag} is a switch: pass {option.key}=True or leave it out.")
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise JMKUsageError(f"{flag} takes a number, not {value!r}.")
    if kind is str and (not isinstance(value, str) or not value.strip()):
        raise JMKUsageError(f"{flag} takes a non-empty string, not {value!r}.")
    if kind is int and (int(value) != value or value < 1):
        raise JMKUsageError(f"{flag} must be a whole number of at least 1, not {value!r}.")
    if option.rule is not None and not option.rule[0](value):
        raise JMKUsageError(f"{flag} {option.rule[1]}, not {value!r}.")


def endpoint_spec_fields(flags: Mapping[str, Any], name: str, port: int | None = None) -> dict[str, Any]:
    """``EndpointSpec`` keywords (Kubernetes) from ``start``'s flags.

    Flags go to the spec's fields where it has them, the rest to ``extra_args`` of the server's command.

    Raises:
        JMKUsageError: A flag that has no meaning on Kubernetes (``--host``).
    """
    fields: dict[str, Any] = {"name": name}
    extra: list[str] = []
    for key, value in flags.items():
        option = BY_KEY[key]
        if value is None or value is False:
            continue
        if not option.on_kubernetes:
            raise JMKUsageError(f"{option.flag} does not go with --backend kubernetes: pods listen on every address, "
                                "behind their Service.")
        if option.spec_field is None:
            extra += [option.flag, str(value)]
        else:
            fields[option.spec_field] = (not value) if option.invert else value
    fields.setdefault("batching", True)
    if port is not None:
        fields["port"] = port
    fields["extra_args"] = tuple(extra)
    return fields


def spec_flags(spec: Any) -> dict[str, Any]:
    """``start``'s flags that a Kubernetes ``EndpointSpec`` carries (the inverse of :func:`endpoint_spec_fields`).

    A field at the server's own default is left out, and so is a canary fraction without a canary.
    """
    flags: dict[str, Any] = {}
    for option in OPTIONS:
        if not option.start_flag or option.spec_field is None:
            continue
        value = getattr(spec, option.spec_field)
        if option.invert:
            value = not value
        if value is not None and value is not False and value != option.default:
            flags[option.key] = value
    if "canary" not in flags:
        flags.pop("canary_fraction", None)
    return flags
