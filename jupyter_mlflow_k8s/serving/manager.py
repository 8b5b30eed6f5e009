"""Local serving processes: start, list, stop and query inference servers on this machine.

Each endpoint is a detached ``python -m jupyter_mlflow_k8s.serving ...`` process in its own session
(it outlives the kernel or shell that started it) with a record under
``<state_dir>/serving/<name>/endpoint.json`` and its output in ``server.log`` beside it. The record
holds the pid and the process's start time, so a reused pid is never mistaken for the server. This
module owns the records and the processes; it does not load models or answer requests (that is
``server.py``), and it does not talk to Kubernetes (that is ``kubernetes.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..config import JMKSettings, load_settings
from ..errors import JMKUsageError, UnavailableError
from ..k8s.validation import check_dns1035_label
from ..tracking.refs import ModelRef
from ..util.names import LABEL_MAX, dns_label
from ..util.processes import process_alive, process_started, reap_children, track_child, wait_child
from .errors import EndpointNotFound
from .options import server_arguments

__all__ = ["Endpoint", "PredictionError", "ServerStartError", "ServingError",
           "ServingManager", "check_name", "default_name", "free_port", "safe_name", "scoring_payload"]

RECORD = "endpoint.json"
LOG = "server.log"
DEFAULT_HOST = "127.0.0.1"
GRACE_SECONDS = 10.0
START_TIMEOUT_SECONDS = 180.0
PREDICT_TIMEOUT_SECONDS = 60.0
EXIT_BAD_ARGUMENTS = 2
EXIT_PORT_IN_USE = 3
LOG_TAIL_LINES = 15
_LISTENING_RE = re.compile(r"jmk-serve: listening on (\S+)")
_PROTOCOL_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")

class ServerStartError(JMKUsageError):
    """The server exited (or never said it was listening) instead of starting; the log's tail says why."""

    def __init__(self, message: str, exit_code: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.log_tail = log_tail


class PredictionError(JMKUsageError):
    """The server refused the input (HTTP 4xx); ``message`` is the server's own explanation."""

    def __init__(self, endpoint: str, status: int, message: str) -> None:
        super().__init__(f"{endpoint} refused the input (HTTP {status}): {message}")
        self.status = status
        self.message = message


class ServingError(UnavailableError):
    """An endpoint that does not answer, or answers with a server error."""


@dataclass(repr=False)
class Endpoint:
    """A local inference server: what it serves, where, and whether it still runs.

    ``status`` is ``running``, ``exited`` (the process ended without ``stop``) or ``stopped``;
    it is worked out from the process when the record is read, never trusted from the file.
    """

    name: str
    model_uri: str
    url: str
    host: str
    port: int
    pid: int | None
    pid_start: float | None
    started: float
    log_path: str
    flags: dict[str, Any] = field(default_factory=dict)
    backend: str = "local"
    stopped: float | None = None
    status: str = "running"

    def __repr__(self) -> str:
        return f"Endpoint(name={self.name!r}, url={self.url!r}, model_uri={self.model_uri!r}, status={self.status!r})"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.status == "running"

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (without the derived ``status``)."""
        data = asdict(self)
        data.pop("status")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoint:
        """A record read back; unknown keys (from a newer version) are ignored."""
        known = {name for name in cls.__dataclass_fields__ if name != "status"}
        return cls(**{key: value for key, value in data.items() if key in known})


def default_name(model_uri: str) -> str:
    """An endpoint name from a model URI: ``models:/iris@prod`` -> ``iris-prod``, ``models:/iris/2`` -> ``iris-v2``.

    ``runs:/RUN/PATH`` -> ``run-RUN8-PATH``; a local path -> its last part. Always a DNS-1035 label.
    """
    uri = model_uri.strip().rstrip("/")
    try:
        ref = ModelRef.maybe(uri)
    except JMKUsageError:  # a malformed models:/ URI still names an endpoint; loading it says what is wrong
        raw = uri.removeprefix("models:/").replace("@", "-")
    else:
        if ref is not None:
            raw = ref.endpoint_stem()
        elif uri.startswith("runs:/"):
            run_id, _, path = uri.removeprefix("runs:/").partition("/")
            raw = f"run-{run_id[:8]}-{path}"
        else:
            raw = Path(uri).name or "model"
    return safe_name(raw)


def safe_name(raw: str) -> str:
    """``raw`` made a DNS-1035 label (lowercase letters, digits and ``-``, starting with a letter, <= 63).

    A name that has to be shortened ends with a hash of the whole, so two long names stay apart.
    """
    return dns_label(raw, fallback="model", letter_first=True)


def check_name(name: str) -> None:
    """Refuse a ``--name`` that cannot name a Kubernetes Service (nor a folder), suggesting one that can."""
    if not isinstance(name, str) or check_dns1035_label(name, "--name"):
        raise JMKUsageError(
            f"--name {name!r} is not a valid endpoint name: use lowercase letters, digits and '-', starting with a "
            f"letter and ending with a letter or digit, at most {LABEL_MAX} characters. "
            f"Try --name {safe_name(str(name))}."
        )


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on at ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _client_url(url: str) -> str:
    """The URL a client on this machine uses: a server bound to every address answers on loopback."""
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class ServingManager:
    """Local inference servers under the state directory: ``start``, ``list``, ``get``, ``stop``, ``predict``."""

    def __init__(
        self,
        settings: JMKSettings | None = None,
        python: str = sys.executable,
        start_timeout: float = START_TIMEOUT_SECONDS,
        grace: float = GRACE_SECONDS,
    ) -> None:
        self.settings = settings or load_settings()
        self.python = python
        self.start_timeout = start_timeout
        self.grace = grace

    @property
    def root(self) -> Path:
        """``<state_dir>/serving``, created on first use."""
        path = self.settings.state_path / "serving"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def command(self, model_uri: str, name: str, port: int, **server_flags: Any) -> list[str]:
        """The server's command line (``--host`` defaults to 127.0.0.1); flags are checked first."""
        host = server_flags.get("host") or DEFAULT_HOST
        rest = server_arguments({key: value for key, value in server_flags.items() if key != "host"})
        return [self.python, "-m", "jupyter_mlflow_k8s.serving", model_uri, "--host", host, "--port", str(port),
                "--name", name, *rest]

    def environment(self) -> dict[str, str]:
        """The server's environment: this one, with the configured tracking URI and unbuffered output."""
        return {**os.environ, "MLFLOW_TRACKING_URI": self.settings.tracking_uri, "PYTHONUNBUFFERED": "1"}

    def run_foreground(self, model_uri: str, name: str | None = None, port: int | None = None,
                       **server_flags: Any) -> int:
        """Run a server in this terminal until it exits or Ctrl-C (not recorded); its exit code.

        ``name`` defaults as for :meth:`start`, ``port`` to a free one; flags are checked first.
        """
        port = port or free_port(server_flags.get("host") or DEFAULT_HOST)
        argv = self.command(model_uri, name or default_name(model_uri), port, **server_flags)
        process = subprocess.Popen(argv, env=self.environment())
        try:
            return process.wait()
        except KeyboardInterrupt:  # the server got the same SIGINT: let it finish
            return process.wait()

    def start(self, model_uri: str, name: str | None = None, port: int | None = None, **server_flags: Any) -> Endpoint:
        """Start a server for ``model_uri`` in the background and return its endpoint once it listens.

        ``name`` defaults to one made from the model URI (see :func:`default_name`); ``port`` to a
        free one. ``server_flags`` are the server's options as keywords: ``host``, ``workers``,
        ``max_batch_size``, ``max_wait_ms``, ``no_batching=True``, ``canary``, ``canary_fraction``,
        ``shadow``, ``max_body_mb``, ``drift_window``.

        Raises:
            JMKUsageError: a bad flag or name, or ``name`` already running.
            ServerStartError: the server exited first (an unknown model URI, the port in use, ...)
                or did not listen within ``start_timeout``; no process is left behind.
        """
        if not isinstance(model_uri, str) or not model_uri.strip():
            raise JMKUsageError("Give a model URI to serve: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... "
                                "or a local path.")
        model_uri = model_uri.strip()
        if name is None:
            name = default_name(model_uri)
        else:
            check_name(name)
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise JMKUsageError(f"--port {port!r} is not a TCP port: give a number from 1 to 65535, or leave it out "
                                "for a free one.")
        host = str(server_flags.get("host") or DEFAULT_HOST)
        server_arguments(server_flags)  # every flag checked before anything starts
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        with self._locked(folder):
            existing = self._read(folder)
            if existing is not None and existing.running:
                raise JMKUsageError(
                    f"An endpoint named {name!r} is already running ({existing.model_uri} at {existing.url}); it "
                    f"keeps serving. Stop it first with `jmk serve stop {name}` (or %serve stop {name}), or pick "
                    "another --name: to change versions with no gap, start the new one under another name, check "
                    "that it answers, then stop this one."
                )
            if port is None:
                port = free_port(host)
            argv = self.command(model_uri, name, port, **server_flags)
            flags = {key: value for key, value in server_flags.items() if value is not None and value is not False}
            return self._launch(folder, argv, model_uri, name, host, port, flags)

    def _launch(self, folder: Path, argv: list[str], model_uri: str, name: str, host: str, port: int,
                flags: dict[str, Any]) -> Endpoint:
        log_path = folder / LOG
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, env=self.environment())
        track_child(proc)
        pid_start = process_started(proc.pid)
        url_host = f"[{host}]" if ":" in host else host
        endpoint = Endpoint(name=name, model_uri=model_uri, url=_client_url(f"http://{url_host}:{port}"), host=host,
                            port=port, pid=proc.pid, pid_start=pid_start, started=time.time(),
                            log_path=str(log_path), flags=flags)
        self._write(folder, endpoint)  # recorded at once: a kernel killed while waiting leaves no orphan unlisted
        try:
            endpoint.url = _client_url(self._wait_listening(proc, log_path, port, host))
        except BaseException:  # a failed start or an interrupt: leave no process and no record
            self._terminate(proc.pid, pid_start)
            (folder / RECORD).unlink(missing_ok=True)
            raise
        self._write(folder, endpoint)
        return endpoint

    def _wait_listening(self, proc: subprocess.Popen[bytes], log_path: Path, port: int, host: str) -> str:
        """The URL the server prints once it answers; an error with the log's tail if it exits first."""
        deadline = time.monotonic() + self.start_timeout
        offset, pending = 0, ""
        while True:
            code = proc.poll()
            with log_path.open("rb") as log:  # read what arrived, also after an exit
                log.seek(offset)
                chunk = log.read()
            offset += len(chunk)
            pending += chunk.decode(errors="replace")
            match = _LISTENING_RE.search(pending)
            if match:
                return match.group(1)
            pending = pending[pending.rfind("\n") + 1:]
            if code is not None:
                raise self._start_error(code, log_path, port, host)
            if time.monotonic() > deadline:
                tail = _tail(log_path)
                raise ServerStartError(
                    f"The server did not start listening within {self.start_timeout:.0f} s; it was stopped. "
                    f"Last lines of {log_path}:\n{tail}", None, tail)
            time.sleep(0.05)

    @staticmethod
    def _start_error(code: int, log_path: Path, port: int, host: str) -> ServerStartError:
        tail = _tail(log_path)
        if code == EXIT_PORT_IN_USE or "address already in use" in tail.lower():
            return ServerStartError(
                f"Port {port} on {host} is already in use. Pass --port with another port, or leave --port out "
                "to get a free one.", code, tail)
        if code == EXIT_BAD_ARGUMENTS:
            return ServerStartError(f"The server refused to start:\n{tail}\n(log: {log_path})", code, tail)
        return ServerStartError(f"The server exited with code {code} before listening. Last lines of {log_path}:\n"
                                f"{tail}", code, tail)

    def list(self) -> list[Endpoint]:
        """Every local endpoint recorded under the state directory, with its liveness; newest first."""
        reap_children()
        endpoints = [e for e in (self._read(folder) for folder in self.root.iterdir() if folder.is_dir()) if e]
        return sorted(endpoints, key=lambda e: e.started, reverse=True)

    def get(self, name: str) -> Endpoint:
        """The endpoint called ``name``; :class:`EndpointNotFound` (naming the known ones) otherwise."""
        reap_children()
        folder = self.root / name
        endpoint = self._read(folder) if re.fullmatch(r"[a-z0-9-]+", name or "") else None
        if endpoint is None:
            raise EndpointNotFound(name, [e.name for e in self.list()],
                                   hint=f" Start one with `jmk serve MODEL_URI --name {name}` (or %serve MODEL_URI "
                                        f"--name {name}); `jmk serve list` lists them.")
        return endpoint

    def stop(self, name: str) -> Endpoint:
        """Stop the server (SIGTERM to its process group, SIGKILL after the grace period); the record stays, stopped."""
        folder = self.root / self.get(name).name
        with self._locked(folder):
            endpoint = self.get(name)
            if endpoint.running:
                self._terminate(endpoint.pid, endpoint.pid_start)
            if endpoint.stopped is None:
                endpoint.stopped = time.time()
            endpoint.status = "stopped"
            self._write(folder, endpoint)
        reap_children()
        return endpoint

    def predict(self, name_or_url: str, data: Any, content_type: str | None = None) -> Any:
        """Send ``data`` to the endpoint's ``/invocations`` and return the predictions.

        ``data``: a DataFrame (sent as ``dataframe_split``), a dict of columns (``dataframe_split``),
        a dict of scalars or a list of row dicts (``dataframe_records``), a numpy array or a list of
        lists (``instances``), or a dict already in MLflow's scoring protocol. With ``content_type``
        (``text/csv``), ``data`` is sent as it is.

        Raises:
            PredictionError: the server refused the input (its 400 message is the error's).
            ServingError: nothing answers at the endpoint's URL, or it failed (5xx).
        """
        if name_or_url.startswith(("http://", "https://")):
            url, label = name_or_url.rstrip("/"), name_or_url
        else:
            endpoint = self.get(name_or_url)
            if not endpoint.running:
                raise ServingError(
                    f"Endpoint {endpoint.name!r} is {endpoint.status}; start it again with "
                    f"`jmk serve {endpoint.model_uri} --name {endpoint.name}` (or %serve).")
            url, label = endpoint.url, f"Endpoint {endpoint.name!r}"
        return invoke(url, label, data, content_type,
                      hint="`jmk serve list` shows whether it still runs.")

    # -- records and processes ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        """Serialize starts and stops of one endpoint name across processes."""
        with open(folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _read(folder: Path) -> Endpoint | None:
        try:
            endpoint = Endpoint.from_dict(json.loads((folder / RECORD).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if endpoint.stopped is not None:
            endpoint.status = "stopped"
        else:
            endpoint.status = "running" if process_alive(endpoint.pid, endpoint.pid_start) else "exited"
        return endpoint

    @staticmethod
    def _write(folder: Path, endpoint: Endpoint) -> None:
        tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(endpoint.to_dict(), indent=1))
        os.replace(tmp, folder / RECORD)

    def _terminate(self, pid: int | None, pid_start: float | None) -> None:
        """SIGTERM the server and every process of its session's group, SIGKILL what outlives the grace period."""
        if not process_alive(pid, pid_start):
            return
        assert pid is not None
        try:
            leader = psutil.Process(pid)
            procs = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return
        try:
            group = os.getpgid(pid)
        except OSError:
            group = None
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        if group == pid:  # its own session: workers it forked go too
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=self.grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if group == pid:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=self.grace)
        wait_child(pid, self.grace)


def request_body(data: Any, content_type: str | None = None) -> tuple[bytes, str]:
    """The body and content type that send ``data`` (see :meth:`ServingManager.predict`) to ``/invocations``."""
    if content_type is None:
        return json.dumps(scoring_payload(data), default=_json_default).encode(), "application/json"
    return (data.encode() if isinstance(data, str) else bytes(data)), content_type


def invoke(url: str, label: str, data: Any, content_type: str | None = None, hint: str = "") -> Any:
    """POST ``data`` to ``<url>/invocations`` and return the predictions.

    Raises:
        PredictionError: The server refused the input (4xx).
        ServingError: Nothing answers at ``url`` (``hint`` says what to check), or it failed (5xx).
    """
    body, content_type = request_body(data, content_type)
    headers = {"Content-Type": content_type}
    # an http(s) URL: given as one, recorded by start, or a pod's address
    request = urllib.request.Request(f"{url}/invocations", data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=PREDICT_TIMEOUT_SECONDS) as response:  # noqa: S310
            return answer_of(response.read())
    except urllib.error.HTTPError as exc:
        raise answer_error(label, exc.code, exc.read()) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServingError(f"{label} does not answer at {url} ({reason}); {hint}".rstrip("; ")) from None


def answer_of(body: bytes) -> Any:
    """The predictions of a 200 answer (MLflow wraps them in ``{"predictions": ...}``)."""
    answer = json.loads(body)
    if isinstance(answer, dict) and "predictions" in answer:
        return answer["predictions"]
    return answer


def answer_error(label: str, status: int, body: bytes) -> PredictionError | ServingError:
    """The error for an answer that is not a 200: the input refused (4xx) or the server failed."""
    message = _error_message(body)
    if 400 <= status < 500:
        return PredictionError(label, status, message)
    return ServingError(f"{label} failed (HTTP {status}): {message}")


def scoring_payload(data: Any) -> Any:
    """``data`` in MLflow's scoring protocol (see :meth:`ServingManager.predict` for what goes where)."""
    pandas = sys.modules.get("pandas")
    numpy = sys.modules.get("numpy")
    if pandas is not None and isinstance(data, pandas.Series):
        data = data.to_frame()
    if pandas is not None and isinstance(data, pandas.DataFrame):
        split = json.loads(data.to_json(orient="split", index=False, date_format="iso"))
        return {"dataframe_split": {"columns": split["columns"], "data": split["data"]}}
    if numpy is not None and isinstance(data, numpy.ndarray):
        return {"instances": data.tolist()}
    if isinstance(data, dict):
        if not data:
            raise JMKUsageError("Nothing to predict: the dict is empty.")
        if any(key in data for key in _PROTOCOL_KEYS):
            return data
        columns = [value for value in data.values() if _is_sequence(value)]
        if len(columns) == len(data):  # a dict of columns
            lengths = {len(column) for column in columns}
            if len(lengths) > 1:
                raise JMKUsageError(f"The columns have different lengths ({sorted(lengths)}): give each the same "
                                    "number of values.")
            rows = [list(row) for row in zip(*(_as_list(column) for column in columns), strict=True)]
            return {"dataframe_split": {"columns": [str(key) for key in data], "data": rows}}
        if not columns:  # one row
            return {"dataframe_records": [data]}
        raise JMKUsageError("A dict to predict is either columns (each a list of values) or one row (each a "
                            "single value), not a mix.")
    if isinstance(data, (list, tuple)):
        if not data:
            raise JMKUsageError("Nothing to predict: the list is empty.")
        if all(isinstance(row, dict) for row in data):
            return {"dataframe_records": list(data)}
        return {"instances": [_as_list(row) if _is_sequence(row) else row for row in data]}
    raise JMKUsageError(
        f"Cannot send a {type(data).__name__} to a model: give a DataFrame, a dict of columns, a list of row "
        "dicts, a numpy array or a list of lists."
    )


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) >= 1)


def _as_list(value: Any) -> list[Any]:
    return list(value.tolist()) if hasattr(value, "tolist") else list(value)


def _json_default(value: Any) -> Any:
    """Numpy scalars and arrays, dates: what ``json`` cannot write by itself."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _error_message(body: bytes) -> str:
    """The message of an MLflow-style error body (``{"error_code": ..., "message": ...}``), else the text."""
    text = body.decode(errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text or "no message"
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or text)
    return text
