"""MLflow's deployments plugin: ``mlflow deployments create|list|get|update|delete|predict -t jmk ...``.

Registered under the entry-point group ``mlflow.deployments`` as ``jmk``. The target URI picks an endpoint
target of ours (``serving/targets``): ``jmk`` (or ``jmk:/local``) local server processes, as ``jmk serve``
starts them; ``jmk:/kubernetes`` a Deployment and a Service in the Kubernetes backend's namespace, as ``jmk
serve --backend kubernetes`` makes them; ``jmk:/NAME`` any other registered target. ``-C key=value`` options
come from one table (:data:`CONFIG_KEYS`), the server's flags of ``serving/options.py`` plus any key of a
target's own. This module is a front door like ``jmk serve``: it checks MLflow's arguments, calls the target,
and answers in MLflow's shapes; every error of ours becomes an ``MlflowException`` with our message, raised
before anything starts when the input is wrong. MLflow requires exactly one ``BaseDeploymentClient``
subclass here, and the module functions ``run_local`` and ``target_help``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from ..errors import ConflictError, JMKError, JMKUsageError, NotFoundError, UnavailableError
from .errors import EndpointNotFound
from .options import OPTIONS, SERVER_FLAGS, server_arguments
from .targets import EndpointSummary, EndpointTarget, get_target, target_names

__all__ = ["CONFIG_KEYS", "PluginDeploymentClient", "run_local", "target_help"]

SCHEME = "jmk"
#: What MLflow calls the one flavor our servers serve (``pyfunc`` is accepted as its short name).
FLAVOR = "python_function"
FLAVORS = (FLAVOR, "pyfunc")
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class ConfigKey:
    """One ``-C key=value`` option: a keyword of the target's ``deploy``, its type, and where it applies.

    ``targets``: the target names that take it (``None``: every one). MLflow's command line gives every
    value as text; the Python API may give it typed.
    """

    key: str
    kind: type
    help: str
    targets: tuple[str, ...] | None = None

    def parse(self, value: Any) -> Any:
        """The value as the target's ``deploy`` takes it; a usage error saying what to write instead."""
        example = {bool: "true", int: "2", float: "0.5", str: "models:/NAME/VERSION"}[self.kind]
        bad = JMKUsageError(f"-C {self.key}={value!r}: {self.key} takes {self.kind.__name__} values, "
                            f"e.g. -C {self.key}={example}.")
        if not isinstance(value, str):
            if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, self.kind) and (self.kind is bool or not isinstance(value, bool)):
                return value
            raise bad
        text = value.strip()
        if self.kind is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise bad
            return text.lower() in _TRUE
        if self.kind is str:
            return text
        try:
            return self.kind(text)
        except ValueError:
            raise bad from None


#: Every ``-C`` key, in the order ``mlflow deployments help -t jmk`` lists them. A target's own key is one
#: more line here, a keyword its ``deploy`` takes.
CONFIG_KEYS: tuple[ConfigKey, ...] = (
    *(ConfigKey(option.key, option.kind, option.front_help or option.help,
                None if option.on_kubernetes else ("local",))
      for option in OPTIONS if option.key != "name"),  # the deployment's name is --name
    ConfigKey("monitor", bool, "a PodMonitor and a PrometheusRule (prometheus-operator) beside the endpoint; "
              "kept by an update until -C monitor=false", ("kubernetes",)),
)
_BY_KEY = {entry.key: entry for entry in CONFIG_KEYS}


def parse_config(config: Mapping[str, Any] | None, target: str) -> dict[str, Any]:
    """``-C`` options as the target's ``deploy`` keywords; every unknown key or bad value refused at once.

    A key may be spelled with ``-`` for ``_`` (``max-batch-size``). A switch given false stays ``False``
    (the targets take that as not given; an update takes it off).
    """
    valid = [entry.key for entry in CONFIG_KEYS if entry.targets is None or target in entry.targets]
    parsed: dict[str, Any] = {}
    problems: list[str] = []
    for raw, value in (config or {}).items():
        key = str(raw).strip().replace("-", "_")
        if key not in valid:
            where = "" if key not in _BY_KEY else f" (it is for {' and '.join(_BY_KEY[key].targets or ())} only)"
            problems.append(f"unknown config key {raw!r}{where}")
            continue
        try:
            parsed[key] = _BY_KEY[key].parse(value)
        except JMKUsageError as exc:
            problems.append(str(exc).rstrip("."))
    if problems:
        raise JMKUsageError(f"{'; '.join(problems)}. Valid keys for {_target_uri(target)}: {', '.join(valid)} "
                            f"(`mlflow deployments help -t {_target_uri(target)}` says what each does).")
    return parsed


def check_flags(flags: Mapping[str, Any]) -> None:
    """The server's checks of its flags together (ranges, a canary fraction needs a canary, ...), before any start."""
    server_arguments({key: value for key, value in flags.items() if key in SERVER_FLAGS})


def check_flavor(flavor: str | None) -> None:
    """Our servers serve MLflow's ``python_function`` flavor; any other is a usage error."""
    if flavor is not None and flavor not in FLAVORS:
        raise JMKUsageError(f"Flavor {flavor!r} is not served here: jmk endpoints serve the {FLAVOR} flavor. "
                            f"Leave --flavor out, or pass -f {FLAVOR}.")


def check_model_uri(model_uri: Any, tracking_uri: str | None) -> str:
    """``model_uri`` stripped; a ``models:/`` URI must name a registered version or alias now.

    Other URIs (``runs:/``, a path) are the server's to load: a start that fails says why and leaves nothing.
    """
    from ..tracking.model_registry import resolve
    from ..tracking.refs import ModelRef

    if not isinstance(model_uri, str) or not model_uri.strip():
        raise JMKUsageError("Give a model URI to deploy: -m models:/NAME/VERSION, models:/NAME@ALIAS, runs:/... "
                            "or a path.")
    ref = ModelRef.maybe(model_uri.strip())
    if ref is not None:
        resolve(ref, tracking_uri)
    return model_uri.strip()


@contextlib.contextmanager
def mlflow_errors() -> Iterator[None]:
    """Our errors as ``MlflowException`` with the same message and the matching error code."""
    try:
        yield
    except JMKError as exc:
        code = (RESOURCE_DOES_NOT_EXIST if isinstance(exc, NotFoundError) else
                RESOURCE_ALREADY_EXISTS if isinstance(exc, ConflictError) else
                INVALID_PARAMETER_VALUE if isinstance(exc, JMKUsageError) else
                TEMPORARILY_UNAVAILABLE if isinstance(exc, UnavailableError) else INTERNAL_ERROR)
        raise MlflowException(str(exc), error_code=code) from exc


def _target_uri(target: str) -> str:
    return SCHEME if target == "local" else f"{SCHEME}:/{target}"


def _known() -> list[str]:
    """Our targets' names, ``local`` first."""
    return sorted(target_names(), key=lambda name: (name != "local", name))


def target_of(target_uri: str) -> str:
    """The endpoint target a URI names: ``jmk`` -> ``local``, ``jmk:/kubernetes`` -> ``kubernetes``."""
    name = "local" if target_uri == SCHEME else target_uri.removeprefix(f"{SCHEME}:").strip("/")
    known = _known()
    if not target_uri.startswith(SCHEME) or name not in known:
        uris = ", ".join(_target_uri(known_name) for known_name in known)
        raise JMKUsageError(f"Deployment target {target_uri!r} is not one of ours: use {uris}.")
    return name


def describe(endpoint: EndpointSummary) -> dict[str, Any]:
    """An endpoint as ``get_deployment`` answers: name, flavor, model URI, URL, state and where it runs."""
    found: dict[str, Any] = {"name": endpoint.name, "flavor": FLAVOR, "model_uri": endpoint.model_uri,
                             "url": endpoint.url, "state": endpoint.status, "backend": endpoint.backend}
    if endpoint.namespace:
        found["namespace"] = endpoint.namespace
    if endpoint.replicas:
        found["replicas"] = endpoint.replicas
    if endpoint.pid is not None:
        found["pid"] = endpoint.pid
    found["config"] = dict(endpoint.flags)
    log = getattr(endpoint.source, "log_path", None)
    if log:
        found["log"] = log
    return found


class PluginDeploymentClient(BaseDeploymentClient):
    """Our endpoints as MLflow deployments; ``target_uri`` ``jmk`` (local) or ``jmk:/kubernetes``.

    A local endpoint that was deleted (stopped) is no deployment any more: ``jmk serve list`` still shows
    it, with its log. Every method blocks until its work is done (a created endpoint answers requests).
    """

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)  # type: ignore[no-untyped-call]  # MLflow does not annotate it
        with mlflow_errors():
            self.target_name = target_of(target_uri)
        self._target: EndpointTarget | None = None

    @property
    def target(self) -> EndpointTarget:
        """Our endpoint target (built on first use, with this process's settings and configuration)."""
        if self._target is None:
            self._target = get_target(self.target_name)
        return self._target

    def _tracking_uri(self) -> str | None:
        settings = getattr(self.target, "settings", None) or getattr(getattr(self.target, "manager", None),
                                                                     "settings", None)
        return getattr(settings, "tracking_uri", None)

    def _find(self, name: str) -> EndpointSummary | None:
        """The live endpoint ``name`` (a stopped local one is deleted), or ``None``."""
        try:
            found = self.target.get(name)
        except EndpointNotFound:
            return None
        return None if found.status == "stopped" and found.backend == "local" else found

    def _existing(self, name: str) -> EndpointSummary:
        found = self._find(name)
        if found is None:
            known = [e["name"] for e in self.list_deployments()]
            raise EndpointNotFound(name, known, backend=self.target_uri,
                                   hint=f" Create it with `mlflow deployments create -t {self.target_uri} --name "
                                        f"{name} -m MODEL_URI`.")
        return found

    def _deploy(self, name: str, model_uri: str, config: dict[str, Any]) -> dict[str, Any]:
        flags = {key: value for key, value in config.items() if value is not None and value is not False}
        port = flags.pop("port", None)
        self.target.deploy(model_uri, name=name, port=port, **flags)
        return describe(self._existing(name))

    def create_deployment(self, name: str, model_uri: str, flavor: str | None = None,
                          config: Mapping[str, Any] | None = None, endpoint: str | None = None) -> dict[str, Any]:
        """Start an endpoint ``name`` serving ``model_uri``; returns once it answers.

        Everything is checked before anything starts: the flavor, every ``-C`` key and value, the name,
        and that a ``models:/`` URI names a registered version or alias.
        """
        from .manager import check_name

        with mlflow_errors():
            check_flavor(flavor)
            flags = parse_config(config, self.target_name)
            check_flags(flags)
            check_name(name)
            model_uri = check_model_uri(model_uri, self._tracking_uri())
            existing = self._find(name)
            if existing is not None:
                raise ConflictError(f"Deployment {name!r} exists already ({existing.model_uri} at {existing.url}, "
                                    f"{existing.status}). Change it with `mlflow deployments update -t "
                                    f"{self.target_uri} --name {name} -m MODEL_URI`, or delete it first.")
            return self._deploy(name, model_uri, flags)

    def update_deployment(self, name: str, model_uri: str | None = None, flavor: str | None = None,
                          config: Mapping[str, Any] | None = None, endpoint: str | None = None) -> dict[str, Any]:
        """Serve ``model_uri`` (default: the same model) with the ``-C`` options given; the others are kept.

        On Kubernetes this is a rolling update (the old pods serve until the new ones are ready; a
        version that does not come up is rolled back). A local endpoint is restarted on its port, and
        put back as it was when the new server does not start.
        """
        with mlflow_errors():
            check_flavor(flavor)
            given = parse_config(config, self.target_name)
            found = self._existing(name)
            new_uri = found.model_uri if model_uri is None else check_model_uri(model_uri, self._tracking_uri())
            old = {**found.flags, "port": _port_of(found)}
            flags = {**old, **given}  # a switch given false is taken off
            check_flags(flags)  # before the old one stops
            if found.backend != "local":
                return self._deploy(name, new_uri, flags)
            self.target.stop(name)
            try:
                return self._deploy(name, new_uri, flags)
            except JMKError as failed:
                try:
                    self._deploy(name, found.model_uri, old)
                except JMKError:
                    raise failed from None
                raise JMKUsageError(f"Deployment {name!r} was not updated, and serves {found.model_uri} again: "
                                    f"{failed}") from failed

    def delete_deployment(self, name: str, config: Mapping[str, Any] | None = None,
                          endpoint: str | None = None) -> None:
        """Stop the endpoint (a Kubernetes one's Deployment, Service and autoscaler are deleted)."""
        with mlflow_errors():
            if config:
                raise JMKUsageError(f"delete takes no -C options (given: {', '.join(map(str, config))}).")
            self._existing(name)
            self.target.stop(name)

    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Every live endpoint of the target (see :func:`describe`)."""
        with mlflow_errors():
            return [describe(e) for e in self.target.list() if not (e.backend == "local" and e.status == "stopped")]

    def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
        """The endpoint ``name`` (see :func:`describe`); not found names the ones there are."""
        with mlflow_errors():
            return describe(self._existing(name))

    def predict(self, deployment_name: str | None = None, inputs: Any = None,
                endpoint: str | None = None) -> PredictionsResponse:
        """The endpoint's predictions for ``inputs`` (a DataFrame, dict of columns, rows, array or list of lists)."""
        with mlflow_errors():
            if not deployment_name:
                raise JMKUsageError("Name the deployment to predict with: --name NAME.")
            predictions = self.target.predict(deployment_name, inputs)
        return PredictionsResponse({"predictions": predictions})

    def explain(self, deployment_name: str | None = None, df: Any = None, endpoint: str | None = None) -> Any:
        """Not offered: our servers answer ``/invocations`` only."""
        raise NotImplementedError("jmk deployments do not explain predictions: they answer /invocations only. "
                                  "Use `mlflow deployments predict`, and log explanations from a job.")


def _port_of(endpoint: EndpointSummary) -> int | None:
    """The port the endpoint's servers listen on (a local process's, or the pods' container port)."""
    port = getattr(endpoint.source, "port", None)
    return int(port) if isinstance(port, int) else None


def run_local(name: str, model_uri: str, flavor: str | None = None, config: Mapping[str, Any] | None = None) -> None:
    """``mlflow deployments run-local -t jmk``: the server in this terminal until Ctrl-C (nothing recorded).

    MLflow calls it without the target, so it always runs here; ``-C`` takes the local keys
    (``port`` defaults to a free one; the server prints where it listens).
    """
    from .manager import ServingManager, check_name

    with mlflow_errors():
        check_flavor(flavor)
        flags = parse_config(config, "local")
        check_flags(flags)
        check_name(name)
        manager = ServingManager()
        model_uri = check_model_uri(model_uri, manager.settings.tracking_uri)
        port = flags.pop("port", None)
        code = manager.run_foreground(model_uri, name, port, **flags)
    if code not in (0, -2, 130):  # stopped by Ctrl-C is no failure
        raise MlflowException(f"The server for {model_uri} exited with code {code}; what it printed above says why.",
                              error_code=INTERNAL_ERROR)


def target_help() -> str:
    """``mlflow deployments help -t jmk``: the target URIs, every ``-C`` key, and examples."""
    keys = "\n".join(f"  {entry.key:<16} {entry.kind.__name__:<6} {entry.help}"
                     + (f" ({' and '.join(entry.targets)} only)" if entry.targets else "") for entry in CONFIG_KEYS)
    uris = "\n".join(f"  {_target_uri(name):<18} {'local server processes (as jmk serve)' if name == 'local' else ''}"
                     f"{'a Deployment and a Service in the configured namespace' if name == 'kubernetes' else ''}"
                     for name in _known()).rstrip()
    return f"""jupyter_mlflow_k8s endpoints as MLflow deployments (the jmk serve server: batching, canary, metrics).

Target URIs:
{uris}

Model URIs: models:/NAME/VERSION, models:/NAME@ALIAS (checked in the registry before anything starts),
runs:/RUN_ID/PATH or a path. Flavor: {FLAVOR} (the default; pyfunc is the same).

Config (-C key=value; update keeps what it is not given):
{keys}

Examples:
  mlflow deployments create -t jmk --name churn -m models:/churn@prod -C workers=2
  mlflow deployments predict -t jmk --name churn -I rows.json
  mlflow deployments update -t jmk --name churn -m models:/churn/4
  mlflow deployments list -t jmk:/kubernetes
  mlflow deployments delete -t jmk --name churn
  mlflow deployments run-local -t jmk --name churn -m models:/churn/3 -C port=8080
"""
