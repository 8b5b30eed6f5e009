"""Requests and batching: which requests may join a batch, and the per-version queue that runs them.

A request is *batchable* when the model's signature lets this module check it (see
:mod:`.server`); the checked rows or arrays of everything queued while the model was busy are
joined into one model call, and the predictions split back. Everything else goes through
MLflow's own ``invocations`` function unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from typing import TYPE_CHECKING, Any

from .drift import DriftMonitor
from .metrics import FeatureStats
from .model_loading import SCALAR_TYPES, LoadedModel

if TYPE_CHECKING:
    from .server import ServerMetrics, ServerSettings

_log = logging.getLogger(__name__)
# The first line naming an exception in a traceback: the root cause (a chained traceback starts with it).
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Warning): ")
# The dtypes MLflow's schema enforcement gives each column type.
NUMPY_TYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32", "string": "object",
               "boolean": "bool"}


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
    except (ValueError, TypeError, OverflowError):  # OverflowError: an integer beyond any float (10**400)
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


def mlflow_error(body: str | bytes, status: int) -> bytes:
    """MLflow's error answer as JSON with a message, without its ``stack_trace``, the cause kept in the message.

    ``mlflow models serve`` answers an unsupported content type with plain text (this server says
    JSON), and sends the Python traceback of a failed prediction to the client, who needs what was
    wrong ("Input X contains NaN."), not the server's paths and code. The trace goes to the
    server's log at debug level.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("message"), str):
        return error_body(text.strip() or f"HTTP {status}", "UNSUPPORTED_MEDIA_TYPE" if status == 415 else
                          "BAD_REQUEST")
    trace = str(document.pop("stack_trace", "") or "")
    if trace:
        _log.debug("an MLflow error answer's stack trace:\n%s", trace)
    cause = next((line.strip() for line in trace.splitlines() if _ERROR_LINE.match(line)), "")
    if cause and cause not in document["message"]:
        document["message"] = f"{document['message']} The model said: {cause[:500]}".strip()
    return json.dumps(document).encode()


def _utf8(text: str | bytes) -> bytes:
    """An answer's bytes; a header byte that is not UTF-8 (echoed back by MLflow as a surrogate) as an escape."""
    return text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text


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
            status = exc.get_http_status_code()  # type: ignore[no-untyped-call]
            return status, mlflow_error(exc.serialize_as_json(), status)  # type: ignore[no-untyped-call]
        except Exception as exc:  # the model raised: a 400, as mlflow models serve gives
            return 400, error_body(f"The model failed on this input: {exc!r}")
        if result.status == 200:
            self.metrics.batch(self.labels, _length(result.response))
            return 200, _utf8(result.response)
        return result.status, mlflow_error(result.response, result.status)

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
