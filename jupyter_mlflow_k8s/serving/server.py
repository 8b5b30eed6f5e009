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
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from typing import Any

from .. import __version__
from ..exceptions import JMKUsageError
from .drift import DriftMonitor
from .metrics import FeatureStats, Registry

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
NUMERIC = {"double": (int, float), "float": (int, float), "long": (int,), "integer": (int,)}
SCALAR_TYPES = {**NUMERIC, "string": (str,), "boolean": (bool,)}
# The dtypes MLflow's schema enforcement gives each column type.
NUMPY_TYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32", "string": "object",
               "boolean": "bool"}


class ServingError(JMKUsageError):
    """The server cannot start: an unknown model, a port in use, bad settings."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
        """Raise :class:`ServingError` naming every bad value."""
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
            raise ServingError("Bad serving settings: " + "; ".join(problems) + ".")


# -- the model -------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedModel:
    """A loaded pyfunc model and what the server needs to know about it."""

    uri: str
    name: str
    version: str
    role: str  # primary, canary or shadow
    pyfunc: Any
    input_schema: Any
    columns: tuple[str, ...] | None  # the signature's columns when every one is a named scalar
    types: dict[str, str]
    baseline: dict[str, Any] | None
    tensor: tuple[Any, tuple[int, ...]] | None = None  # (numpy dtype, shape) of a one-tensor signature
    direct: Any = None  # the flavor's own predict, for inputs this module has already checked and typed


def _resolve(uri: str) -> tuple[str, str, str | None]:
    """``(name, version, baseline uri)`` of a model URI; registry URIs are looked up (clear errors)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not uri.startswith("models:/"):
        return uri.rstrip("/").rsplit("/", 1)[-1] or uri, "", None
    rest = uri[len("models:/"):]
    name, alias, version = rest, None, None
    if "@" in rest:
        name, alias = rest.split("@", 1)
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
    if not name or (alias is None and version is None):
        raise ServingError(f"{uri}: write models:/NAME@ALIAS or models:/NAME/VERSION.")
    client = MlflowClient()
    try:
        found = (client.get_model_version_by_alias(name, alias) if alias
                 else client.get_model_version(name, str(version)))
    except MlflowException as exc:
        known = ""
        try:
            versions = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)
            aliases = sorted(getattr(client.get_registered_model(name), "aliases", None) or {})
            if versions:
                known = (f" {name} has versions {', '.join(versions)}"
                         + (f" and aliases {', '.join(aliases)}" if aliases else "") + ".")
        except MlflowException:
            pass
        where = os.environ.get("MLFLOW_TRACKING_URI", "the default tracking URI")
        raise ServingError(f"{uri}: no such model version in the registry at {where}.{known} "
                           "Check the name, the version or alias, and MLFLOW_TRACKING_URI.") from exc
    return name, str(found.version), (found.tags or {}).get("jmk.baseline")


def load(uri: str, role: str = "primary") -> LoadedModel:
    """Load ``uri`` with MLflow (and its drift baseline, if registered with one)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, version, baseline_uri = _resolve(uri)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        raise ServingError(f"{uri}: the model could not be loaded ({str(exc).splitlines()[0]}).") from exc
    baseline = None
    if baseline_uri:
        try:
            baseline = json.loads(mlflow.artifacts.load_text(baseline_uri))
        except (MlflowException, OSError, ValueError) as exc:
            print(f"jmk-serve: {uri}: no drift baseline ({exc}); drift is not computed", flush=True)
    schema = model.metadata.get_input_schema()
    columns, types = _columns(schema)
    return LoadedModel(uri, name, version, role, model, schema, columns, types, baseline, _tensor(schema),
                       _direct(model))


# Flavors whose predict is a plain function of the (already schema-typed) input. For them a checked
# batch skips pyfunc's per-call wrapper (schema enforcement again, context, signature inspection:
# about half of a one-row call), with the same result.
DIRECT_FLAVORS = ("mlflow.sklearn", "mlflow.pytorch")


def _direct(model: Any) -> Any:
    metadata = model.metadata
    if getattr(model, "loader_module", None) not in DIRECT_FLAVORS or metadata.get_params_schema() is not None:
        return None
    if getattr(metadata, "metadata", None) and metadata.metadata.get("dependencies_schemas"):
        return None
    return getattr(model, "_predict_fn", None)


def _tensor(schema: Any) -> tuple[Any, tuple[int, ...]] | None:
    """``(dtype, shape)`` of a signature that is one unnamed tensor batched on its first dimension."""
    if schema is None or not schema.is_tensor_spec() or len(schema.inputs) != 1 or schema.has_input_names():
        return None
    spec = schema.inputs[0]
    shape = tuple(int(d) for d in spec.shape)
    return (spec.type, shape) if shape and shape[0] == -1 else None


def _columns(schema: Any) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """The signature's column names and scalar types, or None when requests cannot be checked here."""
    if schema is None or not getattr(schema, "has_input_names", lambda: False)() or schema.is_tensor_spec():
        return None, {}
    types: dict[str, str] = {}
    for spec in schema.inputs:
        kind = getattr(getattr(spec, "type", None), "name", None)
        if kind not in SCALAR_TYPES or getattr(spec, "optional", False) or not getattr(spec, "required", True):
            return None, {}
        types[spec.name] = kind
    return tuple(types), types


# -- requests --------------------------------------------------------------------------------------


class BadRequest(Exception):
    """A request the server answers with 400 and this message, before it reaches the model."""


@dataclasses.dataclass
class Item:
    """One request waiting for its batch: rows (``frame``), an array (``tensor``) or a raw body (``raw``)."""

    kind: str
    data: Any  # frame: rows in the signature's column order; tensor: an ndarray; raw: None
    body: bytes
    content_type: str
    future: asyncio.Future[tuple[int, bytes]]
    started: float

    @property
    def count(self) -> int:
        """Rows the request adds to a batch."""
        return len(self.data) if self.kind != "raw" else 1


def batchable(document: Any, model: LoadedModel) -> tuple[str, Any] | None:
    """``("frame", rows)`` or ``("tensor", array)`` if the request can join a batch; None for MLflow's own path.

    Raises :class:`BadRequest` when a column the signature requires is missing, a value has the
    wrong type or an array the wrong shape, saying what the model expects.
    """
    if not isinstance(document, dict) or len(document) != 1:
        return None
    if model.tensor is not None:
        array = _tensor_input(document, model)
        return None if array is None else ("tensor", array)
    rows = _frame_rows(document, model)
    return None if rows is None else ("frame", rows)


def _tensor_input(document: dict[str, Any], model: LoadedModel) -> Any:
    import numpy as np

    assert model.tensor is not None
    ((key, payload),) = document.items()
    if key not in ("instances", "inputs") or not isinstance(payload, list) or not payload:
        return None
    dtype, shape = model.tensor
    try:
        array = np.asarray(payload, dtype=dtype)
    except (ValueError, TypeError):
        return None  # MLflow words the conversion error
    if array.ndim != len(shape) or any(w not in (-1, g) for w, g in zip(shape[1:], array.shape[1:], strict=True)):
        expected = "(" + ", ".join("any" if d == -1 else str(d) for d in shape) + ")"
        raise BadRequest(f"The input has shape {tuple(array.shape)}; the model {model.name} expects shape "
                         f"{expected} of {dtype}, its first dimension the rows.")
    return array


def _frame_rows(document: dict[str, Any], model: LoadedModel) -> list[list[Any]] | None:
    if model.columns is None:
        return None
    ((key, payload),) = document.items()
    if key == "dataframe_split" and isinstance(payload, dict) and set(payload) <= {"columns", "data", "index"}:
        columns, data = payload.get("columns"), payload.get("data")
        if not isinstance(columns, list) or not isinstance(data, list):
            return None
        if any(not isinstance(r, list) or len(r) != len(columns) for r in data):
            return None
        order = _column_order(columns, model)
        if order is None:
            return None
        rows = [[row[i] for i in order] for row in data]
    elif key in ("dataframe_records", "instances") and isinstance(payload, list) and payload:
        if not all(isinstance(r, dict) for r in payload):
            return None
        keys = set(payload[0])
        if any(set(r) != keys for r in payload):
            return None
        if _column_order(list(payload[0]), model) is None:
            return None
        rows = [[r[c] for c in model.columns] for r in payload]
    else:
        return None
    _check_types(rows, model)
    return rows


def _column_order(columns: Sequence[Any], model: LoadedModel) -> list[int] | None:
    assert model.columns is not None
    missing = [c for c in model.columns if c not in columns]
    if missing:
        raise BadRequest(f"Missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}. "
                         f"The model {model.name} expects: {_expected(model)}.")
    if len(columns) != len(model.columns) or len(set(columns)) != len(columns):
        return None  # extra or repeated columns: MLflow decides
    return [columns.index(c) for c in model.columns]


def _check_types(rows: list[list[Any]], model: LoadedModel) -> None:
    assert model.columns is not None
    for i, row in enumerate(rows):
        for column, value in zip(model.columns, row, strict=True):
            kind = model.types[column]
            ok = isinstance(value, SCALAR_TYPES[kind]) and (kind == "boolean" or not isinstance(value, bool))
            if not ok or (isinstance(value, float) and not math.isfinite(value) and kind in ("long", "integer")):
                raise BadRequest(f"Column {column!r}, row {i}: {json.dumps(value)} is not a {kind}. "
                                 f"The model {model.name} expects: {_expected(model)}.")


def _expected(model: LoadedModel) -> str:
    return ", ".join(f"{c} ({model.types[c]})" for c in model.columns or ())


def error_body(message: str, code: str = "BAD_REQUEST") -> bytes:
    """An error answer in MLflow's shape: ``{"error_code": ..., "message": ...}``."""
    return json.dumps({"error_code": code, "message": message}).encode()


# -- batching --------------------------------------------------------------------------------------


class Batcher:
    """Queues one model version's requests and runs them, batched, on a worker thread of its own."""

    def __init__(self, model: LoadedModel, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.model, self.settings, self.metrics = model, settings, metrics
        self.pending: collections.deque[Item] = collections.deque()
        self.wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"jmk-model-{model.role}")
        self.drift = DriftMonitor(model.baseline, window=settings.drift_window)
        self.features = FeatureStats(metrics.registry, model.name, model.version, window=settings.drift_window)
        self.labels = {"model": model.name, "version": model.version}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start taking batches (on the running event loop)."""
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"jmk-batcher-{self.model.role}")

    def submit(self, item: Item) -> None:
        """Queue a request; its future gets ``(status, body)``."""
        self.pending.append(item)
        self.wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self.wake.clear()
                await self.wake.wait()
            batch = await self._take()
            try:
                answers = await loop.run_in_executor(self.executor, self._answer, batch)
            except Exception as exc:  # answered as a 500 below: the loop must go on
                answers = [(500, error_body(f"The server failed: {exc!r}", "INTERNAL_ERROR"))] * len(batch)
            for item, answer in zip(batch, answers, strict=True):
                if not item.future.done():
                    item.future.set_result(answer)

    async def _take(self) -> list[Item]:
        """The next batch: requests of the same kind, up to max_batch_size rows (waiting max_wait_ms for more)."""
        first = self.pending.popleft()
        if first.kind == "raw" or not self.settings.batching:
            return [first]
        batch, rows = [first], first.count
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while rows < self.settings.max_batch_size:
            taken = self._take_compatible(first.kind, self.settings.max_batch_size - rows)
            if taken is not None:
                batch.append(taken)
                rows += taken.count
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), left)
            except TimeoutError:
                break
        return batch

    def _take_compatible(self, kind: str, room: int) -> Item | None:
        for index, item in enumerate(self.pending):
            if item.kind == kind and item.count <= room:
                del self.pending[index]
                return item
        return None

    # -- on the worker thread

    def _answer(self, batch: list[Item]) -> list[tuple[int, bytes]]:
        if batch[0].kind == "raw":
            return [self._mlflow_path(batch[0])]
        try:
            frame = self._joined(batch)
            predict = self.model.direct or self.model.pyfunc.predict
            predictions = predict(frame)
            pieces = _split(predictions, [item.count for item in batch])
        except Exception:  # one request's data may break the batch: answer each alone
            if len(batch) == 1:
                return [self._mlflow_path(batch[0])]
            return [self._answer([item])[0] for item in batch]
        self.metrics.batch(self.labels, len(frame))
        self._observe(frame)
        return [(200, _predictions_json(piece)) for piece in pieces]

    def _mlflow_path(self, item: Item) -> tuple[int, bytes]:
        """MLflow's own handling of one request (parsing, schema enforcement, errors), unbatched."""
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import invocations

        try:
            result = invocations(  # type: ignore[no-untyped-call]
                item.body, item.content_type, self.model.pyfunc, self.model.input_schema)
        except MlflowException as exc:
            return exc.get_http_status_code(), exc.serialize_as_json().encode()  # type: ignore[no-untyped-call]
        except Exception as exc:  # the model raised: a 400, as mlflow models serve gives
            return 400, error_body(f"The model failed on this input: {exc!r}")
        if result.status == 200:
            self.metrics.batch(self.labels, _length(result.response))
        body = result.response.encode() if isinstance(result.response, str) else result.response
        return result.status, body

    def _joined(self, batch: list[Item]) -> Any:
        """One model input for the batch: a DataFrame of all rows, or the arrays stacked."""
        if batch[0].kind == "tensor":
            import numpy as np

            return batch[0].data if len(batch) == 1 else np.concatenate([item.data for item in batch])
        import numpy as np
        import pandas as pd

        assert self.model.columns is not None
        rows = [row for item in batch for row in item.data]
        kinds = {self.model.types[c] for c in self.model.columns}
        if len(kinds) == 1 and (dtype := NUMPY_TYPES[kinds.pop()]) != "object":  # the common case: all numbers
            return pd.DataFrame(np.asarray(rows, dtype=dtype), columns=list(self.model.columns))
        return pd.DataFrame({c: np.asarray([row[i] for row in rows], dtype=NUMPY_TYPES[self.model.types[c]])
                             for i, c in enumerate(self.model.columns)})

    def _observe(self, data: Any) -> None:
        if hasattr(data, "columns"):
            columns = {str(c): data[c].to_numpy(dtype=float) for c in data.columns if data[c].dtype.kind in "biuf"}
        elif data.dtype.kind in "biuf":  # features of an array are named by position, as in the baseline
            flat = data.reshape(len(data), -1)
            columns = {str(i): flat[:, i].astype(float) for i in range(flat.shape[1])}
        else:
            columns = {}
        if columns:
            self.features.update(columns)
            self.drift.update(columns)

    def close(self) -> None:
        """Stop taking batches; requests still queued are dropped with the loop."""
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _split(predictions: Any, counts: list[int]) -> list[Any]:
    """Predictions for each request of a batch (a row count that does not add up raises)."""
    total = sum(counts)
    if len(predictions) != total:
        raise ValueError(f"the model returned {len(predictions)} predictions for {total} rows")
    pieces, start = [], 0
    for count in counts:
        end = start + count
        pieces.append(predictions.iloc[start:end] if hasattr(predictions, "iloc") else predictions[start:end])
        start = end
    return pieces


def _predictions_json(predictions: Any) -> bytes:
    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = StringIO()
    predictions_to_json(predictions, out)  # type: ignore[no-untyped-call]
    return out.getvalue().encode()


def _length(response: Any) -> int:
    try:
        predictions = json.loads(response).get("predictions")
        return len(predictions) if isinstance(predictions, list) else 1
    except (ValueError, AttributeError, TypeError):
        return 1


# -- metrics ---------------------------------------------------------------------------------------


class ServerMetrics:
    """The server's Prometheus metrics (names in docs/serving.md)."""

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

    def batch(self, labels: Mapping[str, str], rows: int) -> None:
        """Count one model call of ``rows`` rows."""
        self.batch_size.labels(**labels).observe(rows)

    def refresh_drift(self, batchers: Sequence[Batcher]) -> None:
        """Recompute the drift gauges (on each scrape: PSI over the current window)."""
        for batcher in batchers:
            batcher.drift.publish(self.registry, batcher.model.name, batcher.model.version)


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
        for model in self.models:
            self.metrics.info.labels(model=model.name, version=model.version, uri=model.uri, role=model.role).set(1)

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

    async def _stop_batchers(self, app: Any) -> None:
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
        """``GET /metrics``: Prometheus text, drift recomputed over the current window."""
        from aiohttp import web

        self.metrics.refresh_drift(list(self.batchers.values()))
        response = web.Response(body=self.metrics.registry.render().encode())
        response.headers["Content-Type"] = PROMETHEUS
        return response
