"""Tornado handlers of ``/jmk/api``: parse the request, call the service off the event loop, serialize.

Every method is ``@tornado.web.authenticated`` and ``@authorized`` (resource ``jmk``). Errors
become JSON ``{"message", "reason"}`` in one place (:func:`http_error`, :meth:`JMKHandler.write_error`):
the status is the error family's (a bad query or body 400, an unknown job/run/model/endpoint 404,
a wrong state 409, MLflow or Kubernetes down 503), an endpoint that does not answer its scrape a
502; a user's mistake is never a 500. The two event streams (a job's
log, an endpoint's metrics) stop as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import errno
import functools
import json
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, ClassVar, TypeVar

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado.iostream import StreamClosedError

from ..errors import JMKUsageError, translate
from ..models import JobRecord
from . import shapes
from .service import SidebarService

T = TypeVar("T")
API = r"/jmk/api"
HEARTBEAT_SECONDS = 15.0
DEFAULT_TAIL = 65536
MAX_TAIL = 16 * 2**20
STATE_CHECK_SECONDS = 0.25
JSON_TYPE = "application/json; charset=UTF-8"


class APIError(tornado.web.HTTPError):
    """An HTTP error whose ``message`` goes to the client as is."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, log_message=message.replace("%", "%%"))
        self.message = message


def http_error(exc: BaseException) -> tornado.web.HTTPError | None:
    """The HTTP error for an exception the service raised; ``None`` for a bug (a 500 with its traceback logged).

    The one mapping of the REST API: our errors and the ones :func:`~jupyter_mlflow_k8s.errors.translate`
    recognises (MLflow, Kubernetes, storage, a server that does not answer) answer their family's
    ``http_status`` with their message (an endpoint's failed scrape is a 502 because its error says
    so). A ``LookupError`` that is not ours is a bug, not a 404; a name too long for a file name (a job id of
    thousands of characters) names nothing: a 404.
    """
    if isinstance(exc, tornado.web.HTTPError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # an id longer than a file name can be
        return APIError(404, "No such item: the name in the path is longer than any name this server keeps. "
                             "The list (GET /jmk/api/jobs, /runs, /models, /endpoints) shows the names.")
    error = translate(exc)
    if error is None:
        return None
    return APIError(error.http_status, str(error))


class JMKHandler(APIHandler):
    """Base of every ``/jmk/api`` handler: the shared service, JSON out, errors mapped once."""

    auth_resource = "jmk"

    @property
    def service(self) -> SidebarService:
        """The service the extension created."""
        return self.settings["jmk_service"]  # type: ignore[no-any-return]

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the API's thread pool; its errors as HTTP errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.service.executor, functools.partial(function, *args))
        except Exception as exc:
            error = http_error(exc)
            if error is None:
                raise
            raise error from exc

    def send_json(self, data: Any, status: int = 200) -> None:
        """Finish with ``data`` as JSON (NaN and infinities as null)."""
        self.set_status(status)
        self.finish(json.dumps(shapes.finite(data), allow_nan=False), set_content_type=JSON_TYPE)

    def set_default_headers(self) -> None:
        """No sniffing a JSON body into HTML; no caching of live data."""
        super().set_default_headers()
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """``{"message", "reason"}`` with the status; the message says what to do."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        reason = self._reason
        if isinstance(exc, APIError):
            message = exc.message
        elif isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message or reason
        else:
            message = f"Unexpected error: {type(exc).__name__}: {exc}" if exc else reason
        self.finish(json.dumps({"message": message, "reason": reason}), set_content_type=JSON_TYPE)

    # -- query arguments -------------------------------------------------------------------------

    def number_arg(self, name: str, default: float, low: float, high: float, kind: type = int) -> Any:
        """``?name=`` as an int (or float) in ``[low, high]``; a 400 that says so otherwise."""
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            what = "a whole number" if kind is int else "a number"
            raise APIError(400, f"?{name}={raw}: give {what} from {kind(low)} to {kind(high)}.")
        return value

    def json_body(self) -> Any:
        """The request body as JSON; a 400 otherwise."""
        try:
            return json.loads(self.request.body or b"")
        except ValueError as exc:
            raise APIError(400, f"The request body is not JSON ({exc}).") from exc
        except RecursionError as exc:  # the json module parses nested arrays recursively
            raise APIError(400, "The request body nests arrays or objects too deeply: send a flat JSON object "
                                "such as {\"version\": \"3\"}.") from exc


class StatusHandler(JMKHandler):
    """``GET /jmk/api/status``."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        """Version, tracking URI, MLflow UI link, state directory."""
        self.send_json(self.service.status())


class OpenAPIHandler(JMKHandler):
    """``GET /jmk/api/openapi.yaml``."""

    _text: str | None = None

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        """The API's OpenAPI 3.1 description."""
        if OpenAPIHandler._text is None:
            OpenAPIHandler._text = await self.call(resources.files(__package__).joinpath("openapi.yaml").read_text)
        self.finish(OpenAPIHandler._text, set_content_type="application/yaml; charset=UTF-8")


# -- jobs ----------------------------------------------------------------------------------------


class JobsHandler(JMKHandler):
    """``GET /jmk/api/jobs?limit=100``."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        """The newest jobs first."""
        limit = self.number_arg("limit", 100, 1, 10_000)
        self.send_json(await self.call(self.service.list_jobs, limit))


class JobHandler(JMKHandler):
    """``GET /jmk/api/jobs/{id}``."""

    @tornado.web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        """One job, with code, resources and log size."""
        self.send_json(await self.call(self.service.job, job_id))


class JobLogHandler(JMKHandler):
    """``GET /jmk/api/jobs/{id}/log?tail=65536``."""

    @tornado.web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        """The end of the job's log."""
        tail = self.number_arg("tail", DEFAULT_TAIL, 0, MAX_TAIL)
        self.send_json(await self.call(self.service.log_tail, job_id, tail))


class JobCancelHandler(JMKHandler):
    """``POST /jmk/api/jobs/{id}/cancel``."""

    @tornado.web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        """Ask the job to stop: 202 with the job; 409 when it has already ended."""
        self.send_json(await self.call(self.service.cancel, job_id), status=202)


class JobResourcesHandler(JMKHandler):
    """``GET /jmk/api/jobs/{id}/resources``."""

    @tornado.web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        """CPU, memory and GPU use from the job's MLflow system metrics (a message, not an error, when none)."""
        self.send_json(await self.call(self.service.job_resources, job_id))


class EventStreamHandler(JMKHandler):
    """A ``text/event-stream`` response that ends when the client goes away."""

    def initialize(self, **kwargs: Any) -> None:
        """Per-request state of the stream."""
        super().initialize(**kwargs)
        self.closed = False
        self._wake = asyncio.Event()
        self._items: collections.deque[tuple[str, Any]] = collections.deque()

    def on_connection_close(self) -> None:
        """The client went away: let the stream's loop end."""
        self.closed = True
        self._wake.set()

    def push(self, item: tuple[str, Any]) -> None:
        """Queue an item for the stream (call on the event loop)."""
        self._items.append(item)
        self._wake.set()

    async def next_items(self, timeout: float) -> list[tuple[str, Any]]:
        """Everything queued, waiting up to ``timeout`` seconds for something (``[]`` then)."""
        if not self._items and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        items = list(self._items)
        self._items.clear()
        return items

    def start_stream(self) -> None:
        """Send the headers of an event stream."""
        self.set_header("Content-Type", "text/event-stream; charset=UTF-8")
        self.set_header("X-Accel-Buffering", "no")  # a proxy in front must not hold events back

    async def send(self, event: str | None, data: Any = None, event_id: str | None = None) -> bool:
        """Write one event (or, with no event, a heartbeat comment); ``False`` once the client is gone."""
        if self.closed:
            return False
        if event is None:
            self.write(": heartbeat\n\n")
        else:
            head = f"id: {event_id}\n" if event_id is not None else ""
            self.write(f"{head}event: {event}\ndata: {json.dumps(shapes.finite(data), allow_nan=False)}\n\n")
        try:
            await self.flush()
        except StreamClosedError:
            self.closed = True
        return not self.closed

    def end_stream(self) -> None:
        """Finish the response unless the client already left."""
        if not self.closed:
            self.finish(set_content_type="text/event-stream; charset=UTF-8")


def _follow_log(service: SidebarService, record: JobRecord, offset: int, stop: threading.Event,
                emit: Callable[[tuple[str, Any]], None]) -> None:
    """Thread body: the job's log from ``offset`` and its state changes, until it ends or ``stop`` is set.

    Reads through the backend's ``follow_log`` (what ``JobService.follow`` wraps) without registering
    this server as the job's watcher: a kernel that watches the job keeps closing its MLflow run.
    ``follow_log`` yields at least every half second, so ``stop`` is seen within that. Each ``log``
    event's offset is where a client that got it resumes (``?offset=`` or Last-Event-ID): the end of
    its text in the file, never inside a character split between two reads.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    state, checked = record.state, time.monotonic()
    try:
        stream = service.jobs.backend(record.spec.backend).follow_log(record.job_id, offset)
        try:
            for item in stream:
                if stop.is_set():
                    return
                if isinstance(item, JobRecord):
                    rest = decoder.decode(b"", final=True)
                    if rest:
                        emit(("log", {"text": rest, "offset": offset}))
                    emit(("end", shapes.job(item)))
                    return
                if item:
                    offset += len(item)
                    text = decoder.decode(item)
                    if text:  # the offset to resume from: before the bytes of a character not yet whole
                        emit(("log", {"text": text, "offset": offset - len(decoder.getstate()[0])}))
                if time.monotonic() - checked >= STATE_CHECK_SECONDS:
                    checked = time.monotonic()
                    current = service.jobs.store.load(record.job_id)
                    if current.state != state:
                        state = current.state
                        emit(("state", shapes.job(current)))
        finally:
            close = getattr(stream, "close", None)  # a generator: closing it ends the backend's polling
            if close is not None:
                close()
    except Exception as exc:  # the stream says why it stopped instead of hanging
        emit(("error", {"message": f"{type(exc).__name__}: {exc}"}))


class JobLogStreamHandler(EventStreamHandler):
    """``GET /jmk/api/jobs/{id}/log/stream?offset=N``: events ``log``, ``state``, ``end``."""

    #: Live log-following threads of this process (tests check that they end with their clients).
    followers: ClassVar[set[threading.Thread]] = set()

    @tornado.web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        """Follow the job's log live from byte ``offset`` (or the Last-Event-ID a browser resends)."""
        resume = self.request.headers.get("Last-Event-ID", "")
        default = int(resume) if resume.isdigit() else 0
        offset = self.number_arg("offset", default, 0, 2**62)
        record = await self.call(self.service.record, job_id)
        self.start_stream()
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def emit(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(self.push, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                stop.set()

        followers = self.followers

        def follow() -> None:
            try:
                _follow_log(self.service, record, offset, stop, emit)
            finally:
                followers.discard(threading.current_thread())

        follower = threading.Thread(target=follow, name=f"jmk-log-{record.job_id}", daemon=True)
        followers.add(follower)
        follower.start()
        try:
            await self._relay(record)
        finally:
            stop.set()  # the thread sees it within half a second and closes the log
            self.end_stream()

    async def _relay(self, record: JobRecord) -> None:
        """Send what the follower thread queues, with a heartbeat while it is quiet, until the end."""
        if not await self.send("state", shapes.job(record)):
            return
        while not self.closed:
            items = await self.next_items(HEARTBEAT_SECONDS)
            if not items and not await self.send(None):
                return
            for kind, data in _merge_logs(items):
                event_id = str(data["offset"]) if kind == "log" else None
                if not await self.send(kind, data, event_id) or kind in ("end", "error"):
                    return


def _merge_logs(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Consecutive ``log`` items as one (a slow client gets fewer, larger events)."""
    merged: list[tuple[str, Any]] = []
    for kind, data in items:
        if kind == "log" and merged and merged[-1][0] == "log":
            merged[-1] = ("log", {"text": merged[-1][1]["text"] + data["text"], "offset": data["offset"]})
        else:
            merged.append((kind, data))
    return merged


# -- runs ----------------------------------------------------------------------------------------


class RunsHandler(JMKHandler):
    """``GET /jmk/api/runs?filter=&order_by=&experiment_ids=&page_token=&max_results=``."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        """One page of runs across experiments; a bad filter is a 400 with MLflow's message."""
        filter_string = self.get_query_argument("filter", "")
        order_by = [o for o in self.get_query_arguments("order_by") if o.strip()]
        experiment_ids = [e.strip() for e in self.get_query_argument("experiment_ids", "").split(",") if e.strip()]
        page_token = self.get_query_argument("page_token", None) or None
        if page_token is not None and not page_token.isascii():  # MLflow's base64 would fail as a dead store
            raise APIError(400, f"?page_token={page_token}: not a page token. Pass the next_page_token of the "
                                "previous page, or no page_token for the first page.")
        max_results = self.number_arg("max_results", 100, 1, shapes.MAX_RESULTS)
        self.send_json(await self.call(self.service.search_runs, filter_string, order_by, experiment_ids,
                                       page_token, max_results))


class RunHandler(JMKHandler):
    """``GET /jmk/api/runs/{run_id}``."""

    @tornado.web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        """One run with all params and tags and its metric keys."""
        self.send_json(await self.call(self.service.run, run_id))


class MetricHistoryHandler(JMKHandler):
    """``GET /jmk/api/runs/{run_id}/metrics/{key}`` (the key URL-encoded; it may contain ``/``)."""

    @tornado.web.authenticated
    @authorized
    async def get(self, run_id: str, key: str) -> None:
        """Every value of one metric."""
        self.send_json(await self.call(self.service.metric_history, run_id, key))


class ArtifactsHandler(JMKHandler):
    """``GET /jmk/api/runs/{run_id}/artifacts?path=P``."""

    @tornado.web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        """The files and folders under ``path``."""
        path = self.get_query_argument("path", "")
        self.send_json(await self.call(self.service.artifacts, run_id, path))


# -- models --------------------------------------------------------------------------------------


class ModelsHandler(JMKHandler):
    """``GET /jmk/api/models``."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        """Every registered model."""
        self.send_json(await self.call(self.service.models))


class ModelVersionsHandler(JMKHandler):
    """``GET /jmk/api/models/{name}/versions``."""

    @tornado.web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """A model's versions, newest first."""
        self.send_json(await self.call(self.service.versions, name))


class ModelAliasHandler(JMKHandler):
    """``PUT`` and ``DELETE /jmk/api/models/{name}/aliases/{alias}``."""

    @tornado.web.authenticated
    @authorized
    async def put(self, name: str, alias: str) -> None:
        """Point the alias at ``{"version": "3"}``."""
        try:
            version = shapes.parse_version(self.json_body())
        except JMKUsageError as exc:
            raise APIError(400, str(exc)) from exc
        except ValueError as exc:  # int() refuses what str.isdigit() accepts: "²", or more than 4300 digits
            raise APIError(400, 'The version must be the plain digits of a model version, like {"version": "3"} '
                                f"({exc}).") from exc
        self.send_json(await self.call(self.service.set_alias, name, alias, version))

    @tornado.web.authenticated
    @authorized
    async def delete(self, name: str, alias: str) -> None:
        """Remove the alias: 204."""
        await self.call(self.service.delete_alias, name, alias)
        self.set_status(204)
        self.finish()


# -- serving endpoints ---------------------------------------------------------------------------


class EndpointsHandler(JMKHandler):
    """``GET /jmk/api/endpoints``."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        """The serving endpoints of every target (local, and Kubernetes when a cluster is configured)."""
        self.send_json(await self.call(self.service.endpoints))


class EndpointMetricsHandler(JMKHandler):
    """``GET /jmk/api/endpoints/{name}/metrics``."""

    @tornado.web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """A Snapshot against the previous scrape of this endpoint."""
        self.send_json(await self.call(self.service.endpoint_metrics, name))


class EndpointMetricsStreamHandler(EventStreamHandler):
    """``GET /jmk/api/endpoints/{name}/metrics/stream?interval=1``: an event ``metrics`` per interval."""

    @tornado.web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        """Snapshots until the client leaves; ``error`` when a scrape fails, ``end`` when the endpoint stops."""
        interval = self.number_arg("interval", 1.0, 0.2, 60.0, kind=float)
        await self.call(self.service.running_endpoint, name)
        self.start_stream()
        try:
            while not self.closed:
                started = time.monotonic()
                try:
                    # Streams of one endpoint share a scrape that is fresh enough for all of them.
                    snapshot = await self.call(self.service.endpoint_metrics, name, min(0.25, interval / 2))
                except tornado.web.HTTPError as exc:
                    message = exc.message if isinstance(exc, APIError) else str(exc)
                    if exc.status_code not in (502, 503):  # stopped or gone: nothing more will come
                        await self.send("end", {"message": message})
                        break
                    if not await self.send("error", {"message": message}):
                        break
                else:
                    if not await self.send("metrics", snapshot):
                        break
                await self.next_items(max(0.0, interval - (time.monotonic() - started)))
        finally:
            self.end_stream()


class PresetsHandler(JMKHandler):
    """``GET /jmk/api/presets``."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        """The configured pod presets, the backends and the default one, for the launch form."""
        self.send_json(await self.call(self.service.presets))


class TriggersHandler(JMKHandler):
    """``GET /jmk/api/triggers``."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        """The pipeline triggers with their last check, last fire, next eligible time and recent runs."""
        self.send_json(await self.call(self.service.triggers))


class NotFoundHandler(JMKHandler):
    """Any other path under ``/jmk/api``: a JSON 404."""

    @tornado.web.authenticated
    @authorized
    async def get(self, path: str) -> None:
        """No such API path."""
        raise APIError(404, f"No API path /jmk/api/{path}. GET /jmk/api/openapi.yaml describes the API.")

    post = put = delete = get


_ID = r"([^/]+)"
ROUTES: list[tuple[str, type[JMKHandler]]] = [
    (rf"{API}/status", StatusHandler),
    (rf"{API}/openapi\.yaml", OpenAPIHandler),
    (rf"{API}/jobs", JobsHandler),
    (rf"{API}/jobs/{_ID}", JobHandler),
    (rf"{API}/jobs/{_ID}/log", JobLogHandler),
    (rf"{API}/jobs/{_ID}/log/stream", JobLogStreamHandler),
    (rf"{API}/jobs/{_ID}/cancel", JobCancelHandler),
    (rf"{API}/jobs/{_ID}/resources", JobResourcesHandler),
    (rf"{API}/runs", RunsHandler),
    (rf"{API}/runs/{_ID}", RunHandler),
    (rf"{API}/runs/{_ID}/metrics/(.+)", MetricHistoryHandler),
    (rf"{API}/runs/{_ID}/artifacts", ArtifactsHandler),
    (rf"{API}/models", ModelsHandler),
    (rf"{API}/models/{_ID}/versions", ModelVersionsHandler),
    (rf"{API}/models/{_ID}/aliases/{_ID}", ModelAliasHandler),
    (rf"{API}/endpoints", EndpointsHandler),
    (rf"{API}/endpoints/{_ID}/metrics", EndpointMetricsHandler),
    (rf"{API}/endpoints/{_ID}/metrics/stream", EndpointMetricsStreamHandler),
    (rf"{API}/presets", PresetsHandler),
    (rf"{API}/triggers", TriggersHandler),
    (rf"{API}/(.*)", NotFoundHandler),
]
