"""The inference server: MLflow's scoring protocol over aiohttp, with dynamic batching and metrics.

One process serves a primary model version and optionally a canary (a fraction of the traffic) and
a shadow (a copy of the traffic whose answers are only measured). Each version has a
:class:`Batcher`: requests queue on the event loop, and one worker thread per version runs the
model on everything that has queued while it was busy, up to ``max_batch_size`` rows, optionally
waiting ``max_wait_ms`` for more. Nothing waits when the server is idle, so batching costs a lone
request nothing, and under load one model call answers many requests.

A request is *batchable* when it is a ``dataframe_split`` or ``dataframe_records`` (or ``instances``
as records) whose columns are exactly the model signature's, with values of the signature's types;
or, for a model whose signature is one tensor with a free first dimension (a torch model registered
with an input example), ``instances`` or ``inputs`` holding an array of that shape. Such requests are
checked here (a clear 400 when a column is missing, a value has the wrong type or an array the
wrong shape) and joined into one DataFrame or array per batch; the model's own ``predict`` enforces
the schema once per batch, and the predictions are split back. Every other request (CSV, extra
columns, nulls, models without a signature, named tensors) goes through MLflow's own
``invocations`` function unchanged, so the answers, including the errors, are those of
``mlflow models serve``.

This module owns the settings, the metrics and the aiohttp app; loading the model (and resolving a
``models:/`` URI in the registry) is :mod:`.model_loading`, the checking and batching of requests
:mod:`.batching`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..version import __version__
from .batching import BadRequest, Batcher, Item, batchable, error_body
from .metrics import Registry, multiprocess_directory, restarts_counter
from .model_loading import LoadedModel, ServerStartupError

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: With ``--workers N``, how often each worker recomputes its drift and window gauges (other workers' values
#: in a scrape are at most this old).
REFRESH_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """How the server batches and routes; every field is a flag of ``python -m jupyter_mlflow_k8s.serving``."""

    host: str = "127.0.0.1"
    port: int = 5000
    batching: bool = True
    max_batch_size: int = 64
    max_wait_ms: float = 0.0
    canary_fraction: float = 0.0
    max_body_mb: float = 20.0
    drift_window: int = 1000
    name: str = ""

    def check(self) -> None:
        """Raise :class:`ServerStartupError` naming every bad value."""
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"--port {self.port}: use a port between 1 and 65535")
        if self.max_batch_size < 1:
            problems.append(f"--max-batch-size {self.max_batch_size}: use 1 or more rows")
        if not 0 <= self.max_wait_ms <= 1000:
            problems.append(f"--max-wait-ms {self.max_wait_ms}: use 0 (no waiting) to 1000")
        if not 0 <= self.canary_fraction <= 1:
            problems.append(f"--canary-fraction {self.canary_fraction}: use a fraction between 0 and 1")
        if self.max_body_mb <= 0:
            problems.append(f"--max-body-mb {self.max_body_mb}: use a positive size")
        if self.drift_window < 10:
            problems.append(f"--drift-window {self.drift_window}: use at least 10 rows")
        if problems:
            raise ServerStartupError("Bad serving settings: " + "; ".join(problems) + ".")


# -- metrics ---------------------------------------------------------------------------------------


class ServerMetrics:
    """The server's Prometheus metrics (names in docs/serving.md) in a private registry."""

    def __init__(self) -> None:
        self.registry = Registry()
        labels = ("model", "version")
        self.requests = self.registry.counter("jmk_requests_total", "Requests answered, by HTTP status.",
                                              labels=(*labels, "code"))
        self.duration = self.registry.histogram("jmk_request_duration_seconds",
                                                "Time from a request's arrival to its answer.", labels=labels,
                                                buckets=DURATION_BUCKETS)
        self.in_flight = self.registry.gauge("jmk_requests_in_flight", "Requests being answered.", labels=labels)
        self.batch_size = self.registry.histogram("jmk_batch_size", "Rows per model call.", labels=labels,
                                                  buckets=BATCH_BUCKETS)
        self.info = self.registry.gauge("jmk_model_info", "The model versions this server answers with.",
                                        labels=(*labels, "uri", "role"))
        self.restarts = restarts_counter(self.registry)

    def serving(self, model: LoadedModel) -> None:
        """Announce a served version: its info gauge, and its series at 0 (``rate()`` works from the first scrape)."""
        labels = {"model": model.name, "version": model.version}
        self.info.labels(**labels, uri=model.uri, role=model.role).set(1)
        self.requests.labels(**labels, code="200")
        self.in_flight.labels(**labels)
        self.duration.labels(**labels)

    def batch(self, labels: Mapping[str, str], rows: int) -> None:
        """Count one model call of ``rows`` rows."""
        self.batch_size.labels(**labels).observe(rows)

    def refresh(self, batchers: Sequence[Batcher]) -> None:
        """Recompute this process's drift and window gauges (PSI over the current window, min/max per feature)."""
        for batcher in batchers:
            batcher.drift.publish(self.registry, batcher.model.name, batcher.model.version)
            batcher.features.publish()


# -- the HTTP app ----------------------------------------------------------------------------------


class InferenceServer:
    """The aiohttp application around a primary model and an optional canary and shadow."""

    def __init__(self, primary: LoadedModel, settings: ServerSettings, canary: LoadedModel | None = None,
                 shadow: LoadedModel | None = None) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.models = [m for m in (primary, canary, shadow) if m is not None]
        self.primary, self.canary, self.shadow = primary, canary, shadow
        self.batchers: dict[str, Batcher] = {}
        self.started = time.time()
        self.shadow_tasks: set[asyncio.Task[Any]] = set()
        self.refresher: asyncio.Task[None] | None = None
        for model in self.models:
            self.metrics.serving(model)

    def app(self) -> Any:
        """The aiohttp application (its batchers start with it)."""
        from aiohttp import web

        app = web.Application(client_max_size=int(self.settings.max_body_mb * 1024 * 1024))
        app.router.add_post("/invocations", self.invocations)
        app.router.add_get("/ping", self.ping)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.prometheus)
        app.on_startup.append(self._start_batchers)
        app.on_cleanup.append(self._stop_batchers)
        return app

    async def _start_batchers(self, app: Any) -> None:
        for model in self.models:
            batcher = Batcher(model, self.settings, self.metrics)
            batcher.start()
            self.batchers[model.role] = batcher
        if multiprocess_directory() is not None:  # a scrape reaches one worker: every worker keeps its own current
            self.refresher = asyncio.get_running_loop().create_task(self._refresh_every(REFRESH_SECONDS))

    async def _refresh_every(self, seconds: float) -> None:
        said = ""
        while True:
            try:
                self.metrics.refresh(list(self.batchers.values()))
            except Exception as exc:  # a failed refresh leaves the last values; the next second tries again
                if repr(exc) != said:  # once per distinct failure, not every second
                    said = repr(exc)
                    print(f"jmk-serve: refreshing the drift metrics failed: {said}", file=sys.stderr, flush=True)
            await asyncio.sleep(seconds)

    async def _stop_batchers(self, app: Any) -> None:
        if self.refresher is not None:
            self.refresher.cancel()
        for batcher in self.batchers.values():
            batcher.close()

    def _route(self) -> Batcher:
        if self.canary is not None and random.random() < self.settings.canary_fraction:  # noqa: S311 - not crypto
            return self.batchers["canary"]
        return self.batchers["primary"]

    async def invocations(self, request: Any) -> Any:
        """``POST /invocations``: MLflow's scoring protocol, answered by the primary or the canary."""
        from aiohttp import web

        started = time.perf_counter()
        batcher = self._route()
        labels = batcher.labels
        in_flight = self.metrics.in_flight.labels(**labels)
        in_flight.inc()
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                limit = self.settings.max_body_mb
                status, payload = 413, error_body(f"The request body is over {limit:g} MB. Send fewer rows per "
                                                  "request, or start the server with a larger --max-body-mb.",
                                                  "REQUEST_TOO_LARGE")
            else:
                status, payload = await self._answer(batcher, body, request.headers.get("Content-Type", ""),
                                                     started)
        finally:
            in_flight.dec()
        self.metrics.requests.labels(**labels, code=str(status)).inc()
        self.metrics.duration.labels(**labels).observe(time.perf_counter() - started)
        response = web.Response(body=payload, status=status, content_type=JSON)
        response.headers["X-JMK-Model-Version"] = batcher.model.version
        return response

    async def _answer(self, batcher: Batcher, body: bytes, content_type: str, started: float) -> tuple[int, bytes]:
        item = self._item(batcher.model, body, content_type, started)
        if isinstance(item, tuple):
            return item
        batcher.submit(item)
        answer = await item.future
        if self.shadow is not None and answer[0] == 200:
            self._mirror(item)
        return answer

    def _item(self, model: LoadedModel, body: bytes, content_type: str, started: float) -> Item | tuple[int, bytes]:
        """The queued form of a request, or an immediate 400 for a request the signature refuses."""
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        found = None
        if content_type.split(";")[0].strip().lower() == JSON:
            try:
                found = batchable(json.loads(body), model)
            except BadRequest as exc:
                return 400, error_body(str(exc))
            except ValueError:
                found = None  # MLflow's path words the JSON error
            except RecursionError:  # the json module reads nested arrays recursively
                return 400, error_body("The request nests arrays or objects too deeply to read. Send rows as "
                                       '{"dataframe_split": {"columns": [...], "data": [[...], ...]}} or '
                                       '{"instances": [...]}, a few levels deep.')
        kind, data = found or ("raw", None)
        return Item(kind, data, body, content_type or JSON, future, started)

    def _mirror(self, answered: Item) -> None:
        """Send a copy of an answered request to the shadow version; its answer is only measured."""
        shadow = self.batchers["shadow"]
        started = time.perf_counter()
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        shadow.submit(dataclasses.replace(answered, future=future, started=started))

        def done(finished: asyncio.Future[tuple[int, bytes]]) -> None:
            status = finished.result()[0] if not finished.cancelled() else 499
            self.metrics.requests.labels(**shadow.labels, code=str(status)).inc()
            self.metrics.duration.labels(**shadow.labels).observe(time.perf_counter() - started)

        future.add_done_callback(done)

    async def ping(self, request: Any) -> Any:
        """``GET /ping``: 200 once the model is loaded (it is, or the server would not listen)."""
        from aiohttp import web

        return web.Response(text="\n", content_type=JSON)

    async def health(self, request: Any) -> Any:
        """``GET /health``: status, model, version, uptime and queued requests."""
        from aiohttp import web

        body = {"status": "ok", "model": self.primary.name, "version": self.primary.version,
                "uptime_seconds": round(time.time() - self.started, 3),
                "pending": {role: len(b.pending) for role, b in self.batchers.items()}}
        return web.json_response(body)

    async def version(self, request: Any) -> Any:
        """``GET /version``: the package version and what is served, with the canary, shadow and batching."""
        from aiohttp import web

        def describe(model: LoadedModel | None) -> dict[str, str] | None:
            return None if model is None else {"name": model.name, "version": model.version, "uri": model.uri}

        body = {"jupyter_mlflow_k8s": __version__, "model": self.primary.name, "version": self.primary.version,
                "uri": self.primary.uri, "canary": describe(self.canary),
                "canary_fraction": self.settings.canary_fraction if self.canary else 0.0,
                "shadow": describe(self.shadow),
                "batching": {"enabled": self.settings.batching, "max_batch_size": self.settings.max_batch_size,
                             "max_wait_ms": self.settings.max_wait_ms}}
        return web.json_response(body)

    async def prometheus(self, request: Any) -> Any:
        """``GET /metrics``: Prometheus text (every worker's with ``--workers N``), this process's drift recomputed."""
        from aiohttp import web

        self.metrics.refresh(list(self.batchers.values()))
        response = web.Response(body=self.metrics.registry.render())
        response.headers["Content-Type"] = PROMETHEUS
        return response


__all__ = ["BATCH_BUCKETS", "DURATION_BUCKETS", "JSON", "PROMETHEUS", "REFRESH_SECONDS", "InferenceServer",
           "ServerMetrics", "ServerSettings"]
