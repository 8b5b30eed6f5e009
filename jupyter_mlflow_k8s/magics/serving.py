"""``%serve`` and ``%predict``: start, list, stop and query inference servers from a notebook.

The magics parse, call an endpoint target (``serving/targets``: ``local`` processes, ``kubernetes``
Deployments with ``--backend kubernetes``) and print or return. Local servers are detached processes
recorded under the state directory, so they outlive the kernel, and ``jmk serve list`` in a shell sees
the same ones. The flags come from the server's one table (``serving/options.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..errors import JMKUsageError
from ..serving.options import deploy_options, front_arguments, given_flags, given_options
from ..serving.targets import EndpointTarget, get_target
from ..serving.targets.listing import find, list_all, started_message
from ..widgets.endpoints import EndpointTable
from .common import parse_flags, user_errors

F = TypeVar("F", bound=Callable[..., Any])
SERVE_USAGE = """Usage:
  %serve MODEL_URI [--name NAME] [--port PORT] [server flags ...]   start a server, return its Endpoint
  %serve list [--backend local|kubernetes]                          the endpoints and whether they run
  %serve stop NAME [--backend local|kubernetes]                     stop one
  %predict NAME DATA                                                query one (DATA: a variable or expression)"""
PREDICT_USAGE = "Usage: %predict NAME DATA   (DATA: a variable or a Python expression, e.g. X_test[:5])"


def serve_options(func: F) -> F:
    """The server flags ``jmk serve`` takes (``serving/options.py``), as ``magic_arguments`` decorators."""
    for names, options in reversed(front_arguments()):
        func = argument(*names, **options)(func)
    return func


@magics_class
class ServingMagics(Magics):
    """``%serve`` and ``%predict``."""

    def _manager(self) -> Any:
        from ..config import load_settings
        from ..serving.manager import ServingManager

        assert self.shell is not None
        manager = getattr(self.shell, "_jmk_serving", None)
        if manager is None:
            manager = ServingManager(load_settings(self.shell.config))
            self.shell._jmk_serving = manager  # type: ignore[attr-defined]
        return manager

    def _targets(self, backend: str | None = None) -> list[EndpointTarget]:
        """``--backend``'s target alone, or every target (local first) when none is named."""
        assert self.shell is not None
        names = [backend] if backend else ["local", "kubernetes"]
        return [get_target(name, config=self.shell.config, manager=self._manager()) if name == "local"
                else get_target(name, config=self.shell.config) for name in names]

    @magic_arguments()
    @argument("target", metavar="MODEL_URI|list|stop", help="the model (models:/NAME@ALIAS, ...), or a command")
    @argument("rest", nargs="*", metavar="NAME", help="stop NAME")
    @serve_options
    @line_magic
    @user_errors
    def serve(self, line: str) -> Any:
        """Serve a model: a local inference server in the background (or on Kubernetes); list and stop them.

        The server answers MLflow's scoring protocol on ``/invocations`` and exposes ``/ping``,
        ``/health``, ``/version`` and Prometheus ``/metrics``. It outlives the kernel: ``%serve
        list`` (or ``jmk serve list``) finds it again, ``%serve stop NAME`` ends it. The name
        defaults to one made from the model URI (``models:/churn@prod`` -> ``churn-prod``), the
        port to a free one.

        Examples
        --------
        ::

            ep = %serve models:/churn@prod
            %serve models:/churn/3 --name churn --port 8080 --workers 2
            %serve models:/churn@prod --canary models:/churn/4 --canary-fraction 0.1
            %predict churn-prod X_test[:5]
            %serve list
            %serve stop churn-prod
            %serve models:/churn@prod --backend kubernetes      # a Deployment and a Service
            %serve models:/churn@prod --backend kubernetes --monitor   # and a PodMonitor, a PrometheusRule
            %serve list --backend kubernetes
            %serve stop churn-prod --backend kubernetes
        """
        __tracebackhide__ = True
        assert self.shell is not None
        args = parse_flags(self.serve, line)
        target, rest = args.target, args.rest
        flags = given_flags(args)
        if target in ("list", "stop"):
            given = given_options(args, ("name", "port", *flags, "monitor"))
            if given:
                raise JMKUsageError(f"%serve {target} takes no {', '.join(given)}.\n{SERVE_USAGE}")
            if target == "list":
                if rest:
                    raise JMKUsageError(f"%serve list takes nothing more.\n{SERVE_USAGE}")
                return self._list(args.backend)
            if len(rest) != 1:
                raise JMKUsageError(f"%serve stop takes one NAME (see %serve list).\n{SERVE_USAGE}")
            targets = self._targets(args.backend)
            found = targets[0] if len(targets) == 1 else find(targets, rest[0])[0]
            endpoint = found.stop(rest[0])
            where = f" in namespace {endpoint.namespace}" if endpoint.namespace else ""
            print(f"[jmk] stopped {endpoint.name}{where} ({endpoint.model_uri}, was at {endpoint.url})")
            return None
        if rest:
            raise JMKUsageError(f"Unexpected {' '.join(rest)}: %serve takes one MODEL_URI.\n{SERVE_USAGE}")
        deploying = deploy_options(args)
        if args.backend not in (None, "local"):
            from ..serving.manager import check_name

            if args.name is not None:
                check_name(args.name)
            return self._targets(args.backend)[0].deploy(target, name=args.name, port=args.port, **flags,
                                                         **deploying)
        endpoint = self._manager().start(target, name=args.name, port=args.port, **flags)
        print(f"[jmk] {started_message(endpoint)}")
        print(f"[jmk] query it with %predict {endpoint.name} DATA; stop it with %serve stop {endpoint.name}")
        return endpoint

    def _list(self, backend: str | None) -> EndpointTable:
        targets = self._targets(backend)
        if len(targets) == 1:  # asked for by name: its failure is the magic's
            return EndpointTable(targets[0].list())
        listing = list_all(targets)
        return EndpointTable(listing.endpoints, listing.unreachable)

    @line_magic
    @user_errors
    def predict(self, line: str) -> Any:
        """Send DATA to a served model's ``/invocations`` and return its predictions.

        NAME is an endpoint of ``%serve list`` (or a URL such as ``http://127.0.0.1:5000``). DATA
        is a variable or a Python expression in the notebook: a DataFrame (sent as
        ``dataframe_split``), a dict of columns, a list of row dicts (``dataframe_records``), a
        numpy array or a list of lists (``instances``). A refused input (wrong columns or types)
        raises an error with the server's message.

        Examples
        --------
        ::

            %predict churn-prod X_test[:5]
            %predict churn-prod {"age": [31, 45], "plan": [2, 1]}
            preds = %predict churn-prod df
        """
        __tracebackhide__ = True
        assert self.shell is not None
        name, _, expression = line.strip().partition(" ")
        expression = expression.strip()
        if not name or not expression:
            raise JMKUsageError(PREDICT_USAGE)
        try:
            data = self.shell.ev(expression)
        except Exception as exc:
            raise JMKUsageError(
                f"%predict {name}: DATA {expression!r} could not be evaluated ({type(exc).__name__}: {exc}). "
                "Give a variable of the notebook or a Python expression, e.g. X_test[:5]."
            ) from None
        if name.startswith(("http://", "https://")):
            return self._manager().predict(name, data)
        return find(self._targets(), name)[0].predict(name, data)
