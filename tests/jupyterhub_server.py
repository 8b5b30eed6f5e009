"""A real JupyterHub for tests: ``python -m jupyterhub`` with configurable-http-proxy from npm, driven over HTTP.

:func:`chp_binary` gives configurable-http-proxy's executable from
``~/.cache/jupyter_mlflow_k8s/configurable-http-proxy-<version>/``: ``npm install`` runs once per
version, under a lock, into a temporary folder that is then renamed into place whole, so two
test processes never see half a tree. Where npm or node is missing, or the install fails, it
raises :class:`Unavailable` with the reason (the caller skips with it).

:class:`Hub` runs the hub with the caller's configuration text plus what the harness needs: free
ports, its database and cookie secret in its own folder, the proxy's command, a dummy
authenticator that lets anyone in (the caller's text may override both), and an admin service
whose token drives the REST API (``/hub/api``): users, their tokens and servers. Stopping it stops
the hub, its proxy and every server it spawned (a hub that dies without cleaning up leaves nothing).

:class:`KernelSession` starts a kernel on a user's server through the proxy and executes code
over the kernel's websocket (Jupyter's message protocol 5.3, JSON frames).

This module must not know about Kubernetes: the spawner is whatever the configuration says.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import websocket
from cluster.images import cache_dir
from servers import ServerProcess, cache_lock, free_port

CHP_VERSION = "5.3.0"
SERVICE = "jmk-harness"
#: What the harness's service may do through ``/hub/api``.
SERVICE_SCOPES = ("admin:users", "admin:servers", "tokens", "list:users", "read:users", "proxy",
                  "access:servers", "read:hub")


class Unavailable(RuntimeError):
    """configurable-http-proxy cannot be had here; the message says why (a test skips with it)."""


class HubError(AssertionError):
    """The hub answered with an error, or something it should do did not happen in time."""


# ------------------------------------------------------------------------------------------ the proxy


def chp_binary(version: str = CHP_VERSION) -> Path:
    """The ``configurable-http-proxy`` executable of npm's package ``version``, installed once into the cache."""
    folder = cache_dir() / f"configurable-http-proxy-{version}"
    binary = folder / "node_modules" / ".bin" / "configurable-http-proxy"
    with cache_lock("configurable-http-proxy"):
        if os.access(binary, os.X_OK):
            return binary
        for tool in ("node", "npm"):
            if shutil.which(tool) is None:
                raise Unavailable(f"configurable-http-proxy {version} needs {tool}, which is not on PATH")
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".configurable-http-proxy-") as work:
            tree = Path(work) / "tree"
            argv = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(tree),
                    f"configurable-http-proxy@{version}"]
            try:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
            except subprocess.TimeoutExpired:
                raise Unavailable(f"{' '.join(argv)} did not finish in 600 s") from None
            installed = tree / "node_modules" / ".bin" / "configurable-http-proxy"
            if result.returncode != 0 or not os.access(installed, os.X_OK):
                raise Unavailable(f"npm install configurable-http-proxy@{version} failed (status "
                                  f"{result.returncode}): {_last_lines(result.stderr or result.stdout)}")
            shutil.rmtree(folder, ignore_errors=True)  # a tree without its binary: an older, broken install
            tree.rename(folder)  # same file system: the whole tree appears at once
    return binary


def _last_lines(text: str, count: int = 5) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "no message"


# ------------------------------------------------------------------------------------------ HTTP


@dataclass(frozen=True)
class Response:
    """One HTTP answer: status, headers (lower-case names) and body; redirects are not followed."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (None when empty)."""
        return json.loads(self.body) if self.body.strip() else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect (to the login page, say) is an answer to see, not to follow


_OPENER = urllib.request.build_opener(_NoRedirect)


def request(method: str, url: str, token: str | None = None, json_body: Any = None,
            timeout: float = 30.0) -> Response:
    """``method url`` with ``Authorization: token <token>``; any status comes back (no redirects followed)."""
    data = None if json_body is None else json.dumps(json_body).encode()
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"token {token}"
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as answer:
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


# ------------------------------------------------------------------------------------------ the hub


class Hub:
    """A JupyterHub process with its proxy; a context manager.

    ``config`` is configuration text (Python, as in ``jupyterhub_config.py``) for the spawner and
    the rest; the harness adds its own lines before it (authenticator, overridable) and after it
    (ports, database, proxy, the admin service: not overridable). ``ip`` is where the hub, the
    proxy and its API listen; ``connect_ip`` is the hub's address for the servers it spawns
    (``hub_connect_ip``; the same as ``ip`` by default). ``folder`` holds the configuration, the
    database and ``jupyterhub.log``; leaving the ``with`` block with an exception prints the log.
    """

    def __init__(self, config: str, folder: Path, ip: str = "127.0.0.1", connect_ip: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.folder = folder
        self.ip = ip
        self.connect_ip = connect_ip
        self.env = env
        self.hub_port = free_port(ip)
        self.proxy_port = free_port(ip)
        self.proxy_api_port = free_port(ip)
        self.url = f"http://{ip}:{self.proxy_port}"  # the public address: the proxy
        self.hub_api_url = f"http://{ip}:{self.hub_port}/hub/api"  # the hub itself, not through the proxy
        self.token = secrets.token_hex(32)  # the admin service's API token
        self.process: ServerProcess | None = None
        self._spawned: list[psutil.Process] = []

    def config_text(self, chp: Path) -> str:
        """The whole ``jupyterhub_config.py``: the harness's defaults, the caller's text, the harness's settings."""
        db = self.folder / "jupyterhub.sqlite"
        service = {"name": SERVICE, "api_token": self.token}
        role = {"name": SERVICE, "scopes": list(SERVICE_SCOPES), "services": [SERVICE]}
        return "\n".join([
            "# -- the harness's defaults (the caller's text below may override them)",
            "c = get_config()  # noqa",
            'c.JupyterHub.authenticator_class = "dummy"',
            "c.Authenticator.allow_all = True",
            "",
            "# -- the caller's configuration",
            self.config,
            "",
            "# -- the harness's settings",
            f"c.JupyterHub.ip = {self.ip!r}",
            f"c.JupyterHub.port = {self.proxy_port}",
            f"c.JupyterHub.hub_ip = {self.ip!r}",
            f"c.JupyterHub.hub_port = {self.hub_port}",
            f"c.JupyterHub.hub_connect_ip = {(self.connect_ip or self.ip)!r}",
            f"c.JupyterHub.db_url = {f'sqlite:///{db}'!r}",
            f"c.JupyterHub.cookie_secret = bytes.fromhex({secrets.token_hex(32)!r})",
            f"c.JupyterHub.pid_file = {str(self.folder / 'jupyterhub.pid')!r}",
            f"c.ConfigurableHTTPProxy.command = [{str(chp)!r}]",
            "c.ConfigurableHTTPProxy.should_start = True",
            f"c.ConfigurableHTTPProxy.api_url = {f'http://{self.ip}:{self.proxy_api_port}'!r}",
            f"c.ConfigurableHTTPProxy.auth_token = {secrets.token_hex(32)!r}",
            f"c.ConfigurableHTTPProxy.pid_file = {str(self.folder / 'proxy.pid')!r}",
            "_services = c.JupyterHub.get('services')",
            f"c.JupyterHub.services = (list(_services) if isinstance(_services, list) else []) + [{service!r}]",
            "_roles = c.JupyterHub.get('load_roles')",
            f"c.JupyterHub.load_roles = (list(_roles) if isinstance(_roles, list) else []) + [{role!r}]",
            "",
        ])

    def start(self, timeout: float = 120.0) -> Hub:
        """Start the hub (and through it the proxy); wait until ``/hub/api`` answers through the proxy."""
        chp = chp_binary()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "jupyterhub_config.py"
        path.write_text(self.config_text(chp))
        env = dict(self.env if self.env is not None else os.environ)
        env.pop("CONFIGPROXY_AUTH_TOKEN", None)
        env.pop("JUPYTERHUB_API_TOKEN", None)  # a hub inside a hub's server must not take its parent's token
        argv = [sys.executable, "-m", "jupyterhub", "-f", str(path), "--debug"]
        self.process = ServerProcess("jupyterhub", argv, self.folder / "jupyterhub.log", env=env)
        self.process.wait_ready(self._ready, timeout)
        return self

    def _ready(self) -> bool:
        try:
            return request("GET", f"{self.url}/hub/api/", self.token, timeout=2.0).status == 200
        except OSError:
            return False

    def log(self, chars: int = 20000) -> str:
        """The end of what the hub (and its proxy, and the servers it spawned locally) printed."""
        return self.process.log_tail(chars) if self.process is not None else ""

    def stop(self, grace: float = 20.0) -> None:
        """Stop the hub (SIGTERM: it stops its servers and its proxy), then kill whatever of them is left."""
        if self.process is None:
            return
        with contextlib.suppress(psutil.Error):  # the proxy and the servers run in sessions of their own
            self._spawned = psutil.Process(self.process.process.pid).children(recursive=True)
        self.process.stop(grace)
        for pid_file in (self.folder / "proxy.pid",):  # a proxy of a hub that died before the snapshot
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                proxy = psutil.Process(int(pid_file.read_text().strip()))
                if "configurable-http-proxy" in " ".join(proxy.cmdline()):
                    self._spawned.append(proxy)
        for child in self._spawned:
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(self._spawned, timeout=grace)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=grace)

    def leftovers(self) -> list[int]:
        """The pids of the processes the hub had spawned (proxy, servers) that still run after :meth:`stop`."""
        return [child.pid for child in self._spawned if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]

    def __enter__(self) -> Hub:
        return self if self.process is not None else self.start()  # `with Hub(...).start(timeout=...)` as well

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is not None:
            print(f"--- jupyterhub log ({self.folder / 'jupyterhub.log'}) ---\n{self.log()}")
        self.stop()

    # -- the REST API

    def api(self, method: str, path: str, json: Any = None, token: str | None = None,
            ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        """``method /hub/api/<path>`` with the admin token (or ``token``), through the proxy: the JSON answer.

        A status outside ``ok`` raises :class:`HubError` with the hub's message.
        """
        answer = request(method, f"{self.url}/hub/api/{path.lstrip('/')}", token or self.token, json)
        if answer.status not in ok:
            raise HubError(f"{method} /hub/api/{path.lstrip('/')}: {answer.status} "
                           f"{answer.body.decode(errors='replace')[:2000]}")
        return answer.json()

    def add_user(self, name: str, admin: bool = False) -> dict[str, Any]:
        """Create user ``name``: its model."""
        return dict(self.api("POST", f"users/{name}", {"admin": admin} if admin else None))

    def user(self, name: str) -> dict[str, Any]:
        """The user model of ``name`` (with ``servers``: the default server is ``servers[""]``)."""
        return dict(self.api("GET", f"users/{name}"))

    def user_token(self, name: str, note: str = "jmk tests") -> str:
        """A new API token of user ``name``, with the user's own permissions."""
        return str(self.api("POST", f"users/{name}/tokens", {"note": note})["token"])

    def user_url(self, name: str) -> str:
        """The address of ``name``'s default server through the proxy (``.../user/<name>/``)."""
        return f"{self.url}/user/{urllib.parse.quote(name)}/"

    def routes(self) -> dict[str, Any]:
        """The proxy's routing table, as the hub reads it from the proxy (``GET /hub/api/proxy``)."""
        return dict(self.api("GET", "proxy"))

    def start_server(self, name: str, timeout: float = 120.0, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Spawn ``name``'s default server and wait until it is ready: its server model.

        On timeout (or a failed spawn) raises :class:`HubError` with the spawn's progress events and
        the end of the hub's log.
        """
        self.spawn(name, options)
        return self.wait_ready(name, timeout)

    def spawn(self, name: str, options: dict[str, Any] | None = None) -> None:
        """Ask for ``name``'s default server and return at once (several users spawn together)."""
        self.api("POST", f"users/{name}/server", options)

    def wait_ready(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until ``name``'s server (being spawned) is ready: its server model; see :meth:`start_server`."""
        deadline = time.monotonic() + timeout
        server: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            server = self.user(name).get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            if not server:  # neither pending nor ready: the spawn has failed
                break
            time.sleep(0.5)
        raise HubError(f"{name}'s server was not ready within {timeout:.0f} s (last model {server}).\n"
                       f"Spawn progress: {self.progress(name)}\n--- hub log ---\n{self.log(8000)}")

    def progress(self, name: str, wait: float = 2.0) -> list[dict[str, Any]]:
        """The spawn progress events of ``name``'s server so far (the event stream, read for ``wait`` seconds)."""
        req = urllib.request.Request(f"{self.url}/hub/api/users/{name}/server/progress",
                                     headers={"Authorization": f"token {self.token}",
                                              "Accept": "text/event-stream"})
        events: list[dict[str, Any]] = []
        with contextlib.suppress(OSError, urllib.error.URLError), _OPENER.open(req, timeout=wait) as stream:
            for line in stream:
                if line.startswith(b"data:"):
                    with contextlib.suppress(ValueError):
                        events.append(json.loads(line[5:]))
        return events

    def stop_server(self, name: str, timeout: float = 60.0) -> None:
        """Stop ``name``'s default server and wait until the hub has no server for it."""
        self.api("DELETE", f"users/{name}/server")
        deadline = time.monotonic() + timeout
        server: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            server = self.user(name).get("servers", {}).get("")
            if not server:
                return
            time.sleep(0.5)
        raise HubError(f"{name}'s server was not stopped within {timeout:.0f} s (last model {server}).\n"
                       f"--- hub log ---\n{self.log(8000)}")


# ------------------------------------------------------------------------------------------ kernels


@dataclass
class ExecResult:
    """What one execute request gave: streams, rich outputs, the error (if any) and the reply's status."""

    msg_id: str
    status: str = ""
    stdout: str = ""
    stderr: str = ""
    #: ``data`` of each ``display_data`` and ``execute_result`` message, in order
    outputs: list[dict[str, Any]] = field(default_factory=list)
    #: ``ename``, ``evalue``, ``traceback`` of an ``error`` message
    error: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The ``text/plain`` of every rich output, one a line."""
        return "\n".join(str(data.get("text/plain", "")) for data in self.outputs)


class KernelSession:
    """A python3 kernel on a user's server, started and driven through the proxy with the user's token.

    ``server_url`` is the server's address through the proxy (:meth:`Hub.user_url`). The kernel's
    websocket speaks JSON frames (no subprotocol); messages are Jupyter's protocol 5.3.
    """

    def __init__(self, server_url: str, token: str, kernel_name: str = "python3", timeout: float = 60.0) -> None:
        self.server_url = server_url.rstrip("/") + "/"
        self.token = token
        self.session = uuid.uuid4().hex
        answer = request("POST", f"{self.server_url}api/kernels", token, {"name": kernel_name}, timeout=timeout)
        if answer.status != 201:
            raise HubError(f"POST {self.server_url}api/kernels: {answer.status} {answer.body[:2000]!r}")
        self.kernel_id = str(answer.json()["id"])
        ws_url = "ws" + self.server_url[len("http"):] + f"api/kernels/{self.kernel_id}/channels?session_id={self.session}"
        self.ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=timeout)
        self._pending: list[dict[str, Any]] = []  # messages read while waiting for another request's
        self._wait_idle(timeout)

    def _wait_idle(self, timeout: float) -> None:
        """Wait until the kernel answers a kernel_info request (its channels are connected)."""
        msg_id = self._send("kernel_info_request", {})
        self._collect(msg_id, timeout, until="kernel_info_reply")

    def _send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "username": "jmk-tests", "session": self.session,
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()), "version": "5.3"}
        self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content,
                                 "channel": channel, "buffers": []}))
        return msg_id

    def execute_async(self, code: str) -> str:
        """Send ``code`` for execution and return its msg_id without waiting (:meth:`result` collects it)."""
        return self._send("execute_request", {"code": code, "silent": False, "store_history": True,
                                              "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})

    def execute(self, code: str, timeout: float = 60.0) -> ExecResult:
        """Execute ``code`` and collect its outputs until the kernel is idle again."""
        return self.result(self.execute_async(code), timeout)

    def result(self, msg_id: str, timeout: float = 60.0) -> ExecResult:
        """Collect the outputs of request ``msg_id`` until the kernel's idle status for it (and its reply)."""
        result = ExecResult(msg_id)
        for message in self._collect(msg_id, timeout, until="idle"):
            content, kind = message.get("content", {}), message.get("msg_type") or message["header"]["msg_type"]
            result.messages.append(message)
            if kind == "stream":
                if content.get("name") == "stderr":
                    result.stderr += content.get("text", "")
                else:
                    result.stdout += content.get("text", "")
            elif kind in ("display_data", "execute_result"):
                result.outputs.append(dict(content.get("data", {})))
            elif kind == "error":
                result.error = {k: content.get(k) for k in ("ename", "evalue", "traceback")}
            elif kind == "execute_reply":
                result.status = str(content.get("status", ""))
        return result

    def _collect(self, msg_id: str, timeout: float, until: str) -> list[dict[str, Any]]:
        """The messages whose parent is ``msg_id``, up to the idle status (and the shell reply) or ``until``."""
        deadline = time.monotonic() + timeout
        mine: list[dict[str, Any]] = []
        idle = replied = False
        others: list[dict[str, Any]] = []
        queue, self._pending = self._pending, []
        while True:
            if queue:
                message = queue.pop(0)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._pending = others
                    raise HubError(f"no {until} for {msg_id} within {timeout:.0f} s; got {mine}")
                self.ws.settimeout(left)
                try:
                    message = json.loads(self.ws.recv())
                except websocket.WebSocketTimeoutException:
                    continue
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                others.append(message)  # another request's: kept for its own collect
                continue
            mine.append(message)
            kind = message.get("msg_type") or message["header"]["msg_type"]
            if kind == until and until != "idle":
                break
            if kind == "status" and message["content"].get("execution_state") == "idle":
                idle = True
            if message.get("channel") == "shell" and kind.endswith("_reply"):
                replied = True
            if idle and replied:
                break
        self._pending = others + queue
        return mine

    def close(self) -> None:
        """Close the websocket and delete the kernel (a server already gone is no error)."""
        with contextlib.suppress(Exception):
            self.ws.close()
        with contextlib.suppress(OSError):
            request("DELETE", f"{self.server_url}api/kernels/{self.kernel_id}", self.token, timeout=30.0)

    def __enter__(self) -> KernelSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
