"""Start and stop the Kubernetes test cluster: etcd, the 1.20 control plane and the node agent.

Everything listens on 127.0.0.1, on free ports picked by binding port 0 just before each component
starts. Each start makes a fresh state directory::

    state_dir/
      .jmk-test-cluster   marker: only a directory carrying it (or an empty one) is ever wiped
      cluster.json        cluster id, pids + create times, ports, kubeconfig path (rewritten as
                          components start, so a failed start can still be stopped from it)
      kubeconfig          admin token (group system:masters), CA data, namespace default
      pki/                CA, apiserver serving cert, service-account key pair, node cert (EC P-256)
      etcd/               etcd's data dir
      logs/<component>.log
      node/               the node agent's root (pod working directories)

Every process the cluster starts carries ``JMK_TEST_CLUSTER_ID=<id>`` in its environment, so that
``Cluster.leftover_processes`` finds whatever survived (pods the node agent forked included).

``Cluster(state_dir).start()`` keeps the processes as children of the caller; ``start(detach=True)``
(what ``cluster up`` does) puts each one in its own session so that they outlive the caller. ``stop()``
works from any process through ``cluster.json``: a recorded pid is only signalled while its create
time still matches, so a reused pid is never killed.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
TESTS_DIR = HERE.parent
BUILD_SCRIPT = HERE / "build.sh"
ENV_VAR = "JMK_TEST_CLUSTER_ID"
MARKER = ".jmk-test-cluster"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
# Stop order: the node agent first (it stops its pods while the API is still there), etcd last. With the
# real node: nothing may recreate pods (controllers, scheduler), the pods are deleted through the API, then
# the kubelet, kube-proxy and containerd stop and what they left on the machine is undone.
STOP_STAGES: tuple[tuple[str, ...], ...] = (
    ("node-agent",),
    ("kube-scheduler", "kube-controller-manager"),
    ("kube-apiserver",),
    ("etcd",),
)
REAL_NODE_STOP_STAGES: tuple[tuple[str, ...], ...] = (
    ("cluster-dns", "kube-scheduler", "kube-controller-manager"),
    ("drain",),
    ("kubelet", "kube-proxy"),
    ("containers",),
    ("containerd",),
    ("machine",),
    ("dnsmasq", "registry"),
    ("kube-apiserver",),
    ("etcd",),
)
TERM_GRACE = 5.0
# Records without start ticks (older cluster.json): create times agree to this many seconds.
CREATE_TIME_SLACK = 1.5
# Readiness deadlines (seconds); generous for a loaded 2-core machine, all bounded.
ETCD_TIMEOUT = 20.0
APISERVER_TIMEOUT = 60.0
COMPONENT_TIMEOUT = 30.0
NODE_TIMEOUT = 20.0


class ClusterUnavailable(RuntimeError):
    """The control plane cannot be built on this machine; ``str()`` is the reason (``build.sh`` exit 3)."""


def default_state_dir() -> Path:
    """``$JMK_TEST_CLUSTER_DIR``, else ``/tmp/jmk-test-cluster-<uid>``."""
    configured = os.environ.get("JMK_TEST_CLUSTER_DIR")
    if configured:
        return Path(configured)
    return Path(f"/tmp/jmk-test-cluster-{os.getuid()}")


def ensure_built() -> Path:
    """Build (or reuse) the binaries with ``build.sh``; returns their directory.

    The script's progress (stderr) is passed through to this process's stderr. Exit status 3 raises
    ``ClusterUnavailable`` with the reason the script gave; any other failure raises ``RuntimeError``
    with the tail of its output.
    """
    tail: collections.deque[str] = collections.deque(maxlen=40)
    reason = ""
    stdout_lines: list[str] = []
    with subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        # stdout is tiny (the bin directory); drain it on a thread so neither pipe can block the script.
        reader = threading.Thread(target=lambda: stdout_lines.extend(proc.stdout or ()), daemon=True)
        reader.start()
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line.rstrip("\n"))
            marker = "impossible here: "
            if marker in line:
                reason = line.split(marker, 1)[1].strip()
        reader.join(timeout=60)
        returncode = proc.wait()
    tail.extend(line.rstrip("\n") for line in stdout_lines[-10:])
    if returncode == 3:
        raise ClusterUnavailable(reason or "\n".join(tail) or "build.sh says the cluster cannot be built here")
    if returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit status {returncode}:\n" + "\n".join(tail))
    lines = [line.strip() for line in stdout_lines if line.strip()]
    if not lines:
        raise RuntimeError(f"{BUILD_SCRIPT} printed no bin directory:\n" + "\n".join(tail))
    bin_dir = Path(lines[-1])
    missing = [
        b
        for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
        if not (bin_dir / b).is_file()
    ]
    if missing:
        raise RuntimeError(f"{BUILD_SCRIPT} printed {bin_dir}, which lacks {', '.join(missing)}")
    return bin_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Component:
    """One started process: what ``cluster.json`` records about it, and its handle when it is our child."""

    name: str
    pid: int
    create_time: float
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    start_ticks: int | None = None  # field 22 of /proc/<pid>/stat: the start, in ticks since boot

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "start_ticks": self.start_ticks,
                "argv": self.argv, "log": str(self.log)}

    def process(self) -> psutil.Process | None:
        """The live process, or None when it is gone (or its pid now belongs to another process).

        The identity is the pid with its start in clock ticks since boot, which never changes. psutil's
        ``create_time()`` adds /proc/stat's ``btime``, a whole second that moves by one when the clock
        is adjusted across a second: compared exactly, a running API server once read as gone (and a
        second cluster then took the machine from under the first).
        """
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            ticks = _start_ticks(self.pid)
            if self.start_ticks is not None and ticks is not None:
                return proc if ticks == self.start_ticks else None
            return proc if abs(proc.create_time() - self.create_time) <= CREATE_TIME_SLACK else None
        except psutil.Error:
            return None

    def exited(self) -> int | None:
        """The exit status when it has exited (-1 when unknown), else None."""
        if self.popen is not None:
            return self.popen.poll()
        return None if self.process() is not None else -1

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Cluster:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the node agent, on 127.0.0.1.

    ``Cluster(state_dir)`` on a directory where a cluster was started (by this or another process)
    attaches to it: ``cluster_id``, ``server``, ``ports``, ``stop()``, ``running()`` and
    ``leftover_processes()`` use its ``cluster.json`` (``gpus`` and ``node_name`` stay those given here:
    they are what the next ``start()`` uses).
    """

    def __init__(self, state_dir: Path, *, gpus: int = 2, node_name: str = "jmk-node", node: str = "auto") -> None:
        self.state_dir = Path(state_dir).resolve()
        self.gpus = gpus
        self.node_name = node_name
        # "real" (kubelet + containerd), "agent" (the node agent) or "auto" (real where it can run)
        self.node = node
        self.node_fallback_reason = ""
        self.bin_dir = ""
        self.images: dict[str, str] = {}
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.cluster_id = secrets.token_hex(8)
        self.server = ""
        self.ports: dict[str, int] = {}
        self._components: dict[str, _Component] = {}
        self._detached = False
        record = self._read_record()
        if record is not None:
            self._load(record)

    # ------------------------------------------------------------------ record

    @property
    def record_path(self) -> Path:
        """``state_dir/cluster.json``."""
        return self.state_dir / "cluster.json"

    @property
    def logs_dir(self) -> Path:
        """``state_dir/logs``: one ``<component>.log`` each."""
        return self.state_dir / "logs"

    @property
    def ca_file(self) -> Path:
        """The cluster CA certificate (it signed the apiserver's and the node agent's certificates)."""
        return self.state_dir / "pki" / "ca.crt"

    def _read_record(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _load(self, record: dict[str, Any]) -> None:
        self.cluster_id = str(record.get("cluster_id", self.cluster_id))
        self.server = str(record.get("server", ""))
        self.ports = {str(k): int(v) for k, v in dict(record.get("ports", {})).items()}
        self._detached = bool(record.get("detached", False))
        self.node = str(record.get("node", self.node))
        self.node_name = str(record.get("node_name", self.node_name))
        self.bin_dir = str(record.get("bin_dir", ""))
        self.images = {str(k): str(v) for k, v in dict(record.get("images", {})).items()}
        self._components = {}
        for name, info in dict(record.get("processes", {})).items():
            self._components[name] = _Component(
                name=name,
                pid=int(info["pid"]),
                create_time=float(info["create_time"]),
                argv=[str(a) for a in info.get("argv", [])],
                log=Path(info.get("log", self.logs_dir / f"{name}.log")),
                start_ticks=None if info.get("start_ticks") is None else int(info["start_ticks"]),
            )

    def _write_record(self) -> None:
        record = {
            "cluster_id": self.cluster_id,
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "ports": self.ports,
            "node_name": self.node_name,
            "node": self.node,
            "bin_dir": self.bin_dir,
            "images": self.images,
            "gpus": self.gpus,
            "detached": self._detached,
            "processes": {name: comp.record() for name, comp in self._components.items()},
        }
        tmp = self.record_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(self.record_path)

    # ------------------------------------------------------------------ start

    def start(self, *, detach: bool = False, with_node: bool = True) -> None:
        """Start a fresh cluster and wait until it is ready (the node included, unless ``with_node=False``).

        The node is the real one (kubelet, containerd, our images; ``node.py``) where it can run, else the
        node agent, with the reason on stderr (``node="real"`` makes that an error, ``node="agent"`` skips
        the real node). Whatever a previous cluster in ``state_dir`` left running is stopped first, then the
        directory is wiped. On failure, what was started is stopped and ``RuntimeError`` carries the tail of
        the log of the component that failed (a port taken meanwhile is retried once, with new ports).
        ``ClusterUnavailable`` when the binaries cannot be built here.
        """
        bin_dir = ensure_built()
        self.bin_dir = str(bin_dir)
        if self._components:
            self.stop()
        local_images = self._choose_node(bin_dir) if with_node else {}
        for attempt in (1, 2):
            self._wipe_state_dir()
            self.cluster_id = secrets.token_hex(8)
            self._components = {}
            self.ports = {}
            self.images = {}
            self._detached = detach
            try:
                self._start(bin_dir, with_node=with_node, local_images=local_images)
                return
            except RuntimeError as exc:
                self.stop()
                # A port picked free was taken before the component bound it (another cluster starting
                # at the same moment): once more, with new ports.
                if attempt == 1 and "address already in use" in str(exc):
                    continue
                raise
            except BaseException:
                self.stop()
                raise

    def _choose_node(self, bin_dir: Path) -> dict[str, str]:
        """Settle ``self.node`` (real or agent); for the real node, the local images it needs (built if missing)."""
        if self.node == "agent":
            return {}
        from . import node

        reason = node.unavailable(install=True)
        built: dict[str, str] = {}
        if reason is None:
            from . import images

            try:
                built = images.build(("runner",), pause=bin_dir / "pause")
            except images.ImagesUnavailable as exc:
                reason = f"the images cannot be built here: {exc}"
            except images.BuildFailed as exc:
                raise RuntimeError(f"building the test images failed: {exc}\n{exc.tail()}") from exc
        if reason is None:
            self.node = "real"
            return built
        if self.node == "real":
            raise ClusterUnavailable(f"a real node cannot run here: {reason}")
        self.node = "agent"
        self.node_fallback_reason = reason
        print(f"cluster: pods run under the node agent, not a real kubelet: {reason}", file=sys.stderr)
        return {}

    @property
    def real_node(self) -> bool:
        """Whether pods run in real containers (kubelet + containerd) rather than under the node agent."""
        return self.node == "real"

    def _wipe_state_dir(self) -> None:
        state = self.state_dir
        if state.exists():
            if not state.is_dir():
                raise RuntimeError(f"{state} is not a directory")
            if any(state.iterdir()) and not (state / MARKER).exists():
                raise RuntimeError(f"refusing to wipe {state}: it is not empty and was not made by the test cluster")
            shutil.rmtree(state)
        for sub in ("pki", "logs", "etcd", "node"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        (state / "etcd").chmod(0o700)
        (state / MARKER).write_text("state directory of tests/cluster; wiped at every start\n")

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_") and k != "KUBECONFIG"}
        env[ENV_VAR] = self.cluster_id
        env.update(extra)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> _Component:
        log = self.logs_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env or self._env(),
                cwd=self.state_dir,
                start_new_session=self._detached,
            )
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = 0.0  # already gone: the readiness wait reports its log
        comp = _Component(name=name, pid=popen.pid, create_time=create_time, argv=argv, log=log, popen=popen,
                          start_ticks=_start_ticks(popen.pid))
        self._components[name] = comp
        self._write_record()
        return comp

    def _wait(self, comp: _Component, what: str, ready: Any, timeout: float) -> None:
        """Poll ``ready()`` until true; raise with the component's log when it exits or times out."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            status = comp.exited()
            if status is not None:
                raise RuntimeError(
                    f"{comp.name} exited (status {status}) before {what}.\n"
                    f"command: {' '.join(comp.argv)}\nlog {comp.log}:\n{comp.log_tail()}"
                )
            try:
                if ready():
                    return
            except Exception as exc:  # any error means: not yet
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{comp.name}: not {what} within {timeout:.0f} s (last check: {last_error or 'not ready'}).\n"
                    f"command: {' '.join(comp.argv)}\nlog {comp.log}:\n{comp.log_tail()}"
                )
            time.sleep(0.1)

    def _start(self, bin_dir: Path, *, with_node: bool, local_images: dict[str, str]) -> None:
        from .node import NODE_IP, NODE_MONITOR_GRACE, RealNode

        real = RealNode(self) if with_node and self.real_node else None
        if real is not None:
            real.prepare_machine()  # the bridge first: the API server listens on the node's address
        self._write_record()
        host = NODE_IP if real is not None else "127.0.0.1"
        pki = self.state_dir / "pki"
        token = secrets.token_hex(16)
        _make_pki(pki)
        (pki / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
        (pki / "tokens.csv").chmod(0o600)

        # etcd
        client_port, peer_port = free_port(), free_port()
        self.ports.update({"etcd": client_port, "etcd-peer": peer_port})
        etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=jmk",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=jmk={peer_url}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token=jmk-{self.cluster_id}",
                "--logger=zap",
                "--log-outputs=stderr",
            ],
        )
        self._wait(etcd, "answering /health", lambda: _etcd_healthy(etcd_url), ETCD_TIMEOUT)

        # kube-apiserver
        api_port = free_port()
        self.ports["kube-apiserver"] = api_port
        self.server = f"https://{host}:{api_port}"
        _write_kubeconfig(self.kubeconfig, self.server, (pki / "ca.crt").read_bytes(), token)
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={host}",
                f"--advertise-address={host}",
                f"--secure-port={api_port}",
                "--insecure-port=0",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                "--disable-admission-plugins=ServiceAccount",
                "--enable-priority-and-fairness=false",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                f"--cert-dir={pki / 'apiserver-certs'}",
                "--profiling=false",
                # On 127.0.0.1 the default reconciler would put loopback into Endpoints/kubernetes, which
                # validation refuses every 10 s; on the node's address pods reach the API through it.
                *([] if real is not None else ["--endpoint-reconciler-type=none"]),
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        headers = {"Authorization": f"Bearer {token}"}
        self._wait(
            apiserver,
            "ready (/readyz, namespace default)",
            lambda: (
                _https_ok(f"{self.server}/readyz", ctx, headers)
                and _https_ok(f"{self.server}/api/v1/namespaces/default", ctx, headers)
            ),
            APISERVER_TIMEOUT,
        )

        # kube-controller-manager, kube-scheduler and the node agent start together.
        kcm_port, sched_port = free_port(), free_port()
        self.ports.update({"kube-controller-manager": kcm_port, "kube-scheduler": sched_port})
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--controllers=*",
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={pki / 'kcm-certs'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                # The node agent heartbeats every 10 s (status + Lease): leave a wide margin on a loaded machine.
                # The real kubelet renews its Lease every 2.5 s: a node whose kubelet stopped is NotReady within
                # seconds (tests inject that), while its pods tolerate NotReady for 300 s (DefaultTolerationSeconds).
                *(["--node-monitor-grace-period=60s"] if real is None else
                  [f"--node-monitor-grace-period={NODE_MONITOR_GRACE}s", "--node-monitor-period=1s"]),
                "--node-startup-grace-period=60s",
                "--profiling=false",
            ],
        )
        sched = self._spawn(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={pki / 'scheduler-certs'}",
                "--profiling=false",
            ],
        )
        agent: _Component | None = None
        if with_node and real is None:
            agent_port = free_port()
            self.ports["node-agent"] = agent_port
            pythonpath = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
            agent = self._spawn(
                "node-agent",
                [
                    sys.executable,
                    "-m",
                    "cluster.node_agent",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--node-name",
                    self.node_name,
                    "--port",
                    str(agent_port),
                    "--cert",
                    str(pki / "node.crt"),
                    "--key",
                    str(pki / "node.key"),
                    "--root",
                    str(self.state_dir / "node"),
                    "--gpus",
                    str(self.gpus),
                ],
                env=self._env(PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1"),
            )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(
            kcm,
            "healthy (/healthz)",
            lambda: _https_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure),
            COMPONENT_TIMEOUT,
        )
        self._wait(
            sched,
            "healthy (/healthz)",
            lambda: _https_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure),
            COMPONENT_TIMEOUT,
        )
        if agent is not None:
            self._wait_node_ready(agent)
        if real is not None:
            self.images = real.start(local_images)
            self._write_record()

    def _wait_node_ready(self, agent: _Component) -> None:
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException

        api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        core = client.CoreV1Api(api_client)

        def ready() -> bool:
            try:
                node = core.read_node(self.node_name, _request_timeout=5)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            conditions = (node.status.conditions if node.status else None) or []
            return any(c.type == "Ready" and c.status == "True" for c in conditions)

        try:
            self._wait(agent, f"reporting Node {self.node_name} Ready", ready, NODE_TIMEOUT)
        finally:
            api_client.close()

    # ------------------------------------------------------------------ state

    def running(self) -> dict[str, bool]:
        """For each recorded component: whether its process is alive (same pid and create time)."""
        return {name: comp.process() is not None for name, comp in self._components.items()}

    def ready(self, timeout: float = 3.0) -> bool:
        """Whether the apiserver answers ``/readyz`` with the kubeconfig's CA and token."""
        if not self.server or not self.kubeconfig.exists() or not self.ca_file.exists():
            return False
        token = _kubeconfig_token(self.kubeconfig)
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            return _https_ok(f"{self.server}/readyz", ctx, {"Authorization": f"Bearer {token}"}, timeout=timeout)
        except (OSError, ValueError):
            return False

    def restart_apiserver(self, down_for: float = 0.0) -> None:
        """Stop kube-apiserver (SIGTERM), wait ``down_for`` seconds, start it again with the same flags.

        For tests of clients that must survive an API server restart: watches and log streams break,
        and state lives on in etcd.
        """
        self.stop_component("kube-apiserver")
        time.sleep(down_for)
        restarted = self.start_component("kube-apiserver")
        self._wait(restarted, "ready again (/readyz)", lambda: self.ready(timeout=2), APISERVER_TIMEOUT)

    def stop_component(self, name: str) -> None:
        """Stop one component (SIGTERM, SIGKILL after ~5 s) and nothing else: a fault injected in a test.

        Only that process is signalled: containerd's shims, say, keep running the containers.
        """
        comp = self._components[name]
        proc = comp.process()
        if proc is not None:
            _terminate([proc], TERM_GRACE)
        if comp.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                comp.popen.wait(timeout=1)

    def start_component(self, name: str) -> _Component:
        """Start a stopped component again with the flags it was started with (recorded in ``cluster.json``)."""
        comp = self._components[name]
        if comp.process() is not None:
            raise RuntimeError(f"{name} (pid {comp.pid}) is still running; stop_component({name!r}) first")
        return self._spawn(name, comp.argv)

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop the node, scheduler, controller manager, apiserver and etcd, in that order.

        Each process gets SIGTERM, then SIGKILL after ~5 s. With the real node, the pods are deleted
        through the API first, then whatever containerd still runs is killed, and what the node did to
        the machine (mounts, network namespaces, the bridge, iptables rules, cgroups, ip_forward) is
        undone (``RealNode.cleanup_machine``). Idempotent, and works from another process through
        ``cluster.json`` (a pid is only signalled while its create time matches the record). Processes
        that other processes of the cluster started (pods of the node agent) are not chased here: see
        ``leftovers``.
        """
        if not self._components:
            record = self._read_record()
            if record is not None:
                self._load(record)
        order = REAL_NODE_STOP_STAGES if self.real_node else STOP_STAGES
        known = {n for stage in order for n in stage}
        stages = [list(stage) for stage in order] + [[n for n in self._components if n not in known]]
        real = None
        if self.real_node:
            from .node import RealNode, shim_processes

            real = RealNode(self)
        for stage in stages:
            if real is not None and stage == ["drain"]:
                if self.running().get("kube-apiserver") and self.running().get("kubelet"):
                    real.drain()
                continue
            if real is not None and stage == ["containers"]:
                real.force_stop_containers()
                continue
            if real is not None and stage == ["machine"]:
                _terminate(shim_processes(self.cluster_id), TERM_GRACE)
                real.cleanup_machine()
                continue
            comps = [self._components[n] for n in stage if n in self._components]
            procs = [p for p in (c.process() for c in comps) if p is not None]
            _terminate(procs, TERM_GRACE)
            for comp in comps:
                if comp.popen is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        comp.popen.wait(timeout=1)  # reap our own children (no zombies, no ResourceWarning)

    def leftovers(self) -> list[str]:
        """Everything of this cluster still there after ``stop``: processes, and with the real node also
        containers, mounts, network namespaces, the bridge, iptables rules, cgroups. Empty when clean."""
        left = [_describe(p) for p in self.leftover_processes()]
        if self.real_node:
            from .node import RealNode

            left += RealNode(self).leftovers()
        return left

    def leftover_processes(self) -> list[psutil.Process]:
        """Every live process whose environment carries ``JMK_TEST_CLUSTER_ID=<this cluster's id>``.

        This process and its ancestors are left out; zombies and processes that vanish or cannot be
        read are skipped.
        """
        wanted = f"{ENV_VAR}={self.cluster_id}".encode()
        skip = {os.getpid()}
        with contextlib.suppress(psutil.Error):
            skip.update(p.pid for p in psutil.Process().parents())
        found: list[psutil.Process] = []
        for proc in psutil.process_iter():
            if proc.pid in skip:
                continue
            try:
                with open(f"/proc/{proc.pid}/environ", "rb") as fh:
                    environ = fh.read()
                if wanted not in environ.split(b"\0"):
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except (OSError, psutil.Error):
                continue
            found.append(proc)
        return found

    def kill_leftovers(self, grace: float = TERM_GRACE) -> list[str]:
        """SIGTERM, then SIGKILL, whatever ``leftover_processes`` finds; returns their descriptions."""
        procs = self.leftover_processes()
        described = [_describe(p) for p in procs]
        _terminate(procs, grace)
        return described


# ---------------------------------------------------------------------- helpers


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (None: no such process, or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": the comm may hold spaces
    return int(fields[19])  # field 22 of the line; fields[0] is field 3


def _terminate(procs: list[psutil.Process], grace: float) -> None:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL what is left (and wait for that too)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    alive = _wait_gone(procs, grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    _wait_gone(alive, grace)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; returns those still alive at the deadline.

    A zombie counts as gone: a detached component's parent is init, which may reap it only
    seconds later (on some machines' init), and our own children are reaped by ``Popen.wait`` later.
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if not _gone(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}"


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{result.stderr[-2000:]}")


OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[apiserver]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1,DNS:localhost,IP:10.244.0.1,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
[node]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1,DNS:localhost
"""


def _make_pki(pki: Path) -> None:
    """CA, apiserver and node serving certificates, service-account key pair: EC P-256, 10 years."""
    config = pki / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG)
    for name in ("ca", "apiserver", "node", "sa"):
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", pki / f"{name}.key")
        (pki / f"{name}.key").chmod(0o600)
    _openssl("pkey", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub")
    _openssl(
        "req", "-config", config, "-new", "-x509", "-days", "3650", "-sha256", "-key", pki / "ca.key",
        "-subj", "/CN=jmk-test-ca", "-extensions", "ca", "-out", pki / "ca.crt",
    )  # fmt: skip
    for name, subject in (("apiserver", "/CN=kube-apiserver"), ("node", "/CN=jmk-node-agent")):
        csr = pki / f"{name}.csr"
        _openssl("req", "-config", config, "-new", "-key", pki / f"{name}.key", "-subj", subject, "-out", csr)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
            "-set_serial", f"0x{secrets.token_hex(12)}", "-days", "3650", "-sha256",
            "-extfile", config, "-extensions", name, "-out", pki / f"{name}.crt",
        )  # fmt: skip
        csr.unlink()


def _write_kubeconfig(path: Path, server: str, ca_pem: bytes, token: str) -> None:
    ca_data = base64.b64encode(ca_pem).decode()
    text = f"""\
apiVersion: v1
kind: Config
clusters:
- name: jmk-test
  cluster:
    server: {server}
    certificate-authority-data: {ca_data}
users:
- name: jmk-admin
  user:
    token: {token}
contexts:
- name: jmk-test
  context:
    cluster: jmk-test
    user: jmk-admin
    namespace: default
current-context: jmk-test
"""
    path.write_text(text)
    path.chmod(0o600)


def _kubeconfig_token(path: Path) -> str:
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("token:"):
            return stripped.split(":", 1)[1].strip()
    return ""


def _etcd_healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
        return bool(json.loads(response.read()).get("health") == "true")


def _https_ok(url: str, ctx: ssl.SSLContext, headers: dict[str, str] | None = None, timeout: float = 2.0) -> bool:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=ctx) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``cluster up|down|status|build``; see ``--help``.

    ``up`` starts a detached cluster and prints the kubeconfig path as its last stdout line. When a
    cluster from the same state directory is already running and ready, ``up`` says so on stderr and
    prints its kubeconfig path again (``up --restart`` starts a fresh one instead). ``down`` stops the
    components, then looks for processes still carrying the cluster's id (pods the node agent failed to
    stop, say): it lists and kills them and exits 1. Exit status 3: the control plane cannot be built on
    this machine (the reason is printed).
    """
    parser = argparse.ArgumentParser(prog="cluster", description="The Kubernetes 1.20 test cluster of tests/cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    state_help = "state directory (default: $JMK_TEST_CLUSTER_DIR or /tmp/jmk-test-cluster-<uid>)"
    up = sub.add_parser("up", help="start a cluster that outlives this command; prints the kubeconfig path last")
    up.add_argument("--state", type=Path, default=None, help=state_help)
    up.add_argument("--gpus", type=int, default=2, help="nvidia.com/gpu the node advertises (default 2)")
    up.add_argument("--node-name", default="jmk-node")
    up.add_argument("--no-node", action="store_true", help="control plane only (pods stay Pending)")
    up.add_argument(
        "--node", choices=("auto", "real", "agent"), default=os.environ.get("JMK_TEST_NODE", "auto"),
        help="real: kubelet + containerd + our images; agent: pods as local processes; auto (default): real where "
        "it can run ($JMK_TEST_NODE)",
    )
    up.add_argument("--restart", action="store_true", help="start afresh even if a cluster is running there")
    down = sub.add_parser("down", help="stop it; exit 1 when processes of the cluster remained")
    down.add_argument("--state", type=Path, default=None, help=state_help)
    status = sub.add_parser("status", help="which components run; exit 0 only when all run and the API is ready")
    status.add_argument("--state", type=Path, default=None, help=state_help)
    sub.add_parser("build", help="build (or find) the binaries; prints their directory")
    sub.add_parser(
        "prepare",
        help="everything a cluster needs before it starts: the binaries, the real node's packages (apt, as root) "
        "and the images from docker/, built at the same time; exit 3 when the cluster cannot run here at all",
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            print(ensure_built())
            return 0
        if args.command == "prepare":
            return _cmd_prepare()
        state = (args.state or default_state_dir()).resolve()
        if args.command == "up":
            return _cmd_up(state, args)
        if args.command == "down":
            return _cmd_down(state)
        return _cmd_status(state)
    except ClusterUnavailable as exc:
        print(f"cluster: the Kubernetes test cluster cannot be built on this machine: {exc}", file=sys.stderr)
        return 3
    except RuntimeError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


def _cmd_prepare() -> int:
    """Build the binaries and, where a real node can run, install its packages and build the images meanwhile."""
    from . import images, node

    started = time.monotonic()
    reason = node.unavailable(install=True)
    outcome: dict[str, Any] = {}

    def build_images() -> None:
        t0 = time.monotonic()
        try:
            outcome["images"] = images.build(("runner", "singleuser", "mlflow"))
        except (images.ImagesUnavailable, images.BuildFailed) as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - t0

    builder = threading.Thread(target=build_images, name="images") if reason is None else None
    if builder is not None:
        builder.start()
    try:
        bin_dir = ensure_built()
    finally:
        if builder is not None:
            builder.join()
    print(f"cluster: binaries in {bin_dir} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    if reason is not None:
        print(f"cluster: pods will run under the node agent, not a real kubelet: {reason}", file=sys.stderr)
        return 0
    error = outcome.get("error")
    if isinstance(error, images.ImagesUnavailable):
        print(f"cluster: pods will run under the node agent: the images cannot be built here: {error}", file=sys.stderr)
        return 0
    if isinstance(error, images.BuildFailed):
        print(f"cluster: building the images failed: {error}\n{error.tail()}", file=sys.stderr)
        return 1
    images.build(("runner", "singleuser", "mlflow"), pause=bin_dir / "pause")  # the pause image: seconds
    print(f"cluster: images ready in {outcome['seconds']:.0f} s: {outcome['images']}", file=sys.stderr)
    return 0


def _cmd_up(state: Path, args: argparse.Namespace) -> int:
    existing = Cluster(state)
    running = existing.running()
    if running and all(running.values()) and existing.ready() and not args.restart:
        print(
            f"cluster: already running from {state} (id {existing.cluster_id}); `down` or `up --restart` for a fresh one",
            file=sys.stderr,
        )
        print(existing.kubeconfig)
        return 0
    cluster = Cluster(state, gpus=args.gpus, node_name=args.node_name, node=args.node)
    started = time.monotonic()
    ensure_built()  # separately, so that a first build does not count in the start time below
    t0 = time.monotonic()
    cluster.start(detach=True, with_node=not args.no_node)
    print(
        f"cluster: up in {time.monotonic() - t0:.1f} s (total {time.monotonic() - started:.1f} s), "
        f"state {state}, server {cluster.server}, node: {'real (kubelet + containerd)' if cluster.real_node else 'node agent'}",
        file=sys.stderr,
    )
    for name, ref in cluster.images.items():
        print(f"cluster: image {name}: {ref}", file=sys.stderr)
    print(cluster.kubeconfig)
    return 0


def _cmd_down(state: Path) -> int:
    cluster = Cluster(state)
    if not cluster.record_path.exists():
        print(f"cluster: no cluster recorded in {state}", file=sys.stderr)
        return 0
    cluster.stop()
    leftovers = cluster.leftovers()
    cluster.kill_leftovers()
    if leftovers:
        print(
            f"cluster: stopped, but {len(leftovers)} thing(s) of cluster {cluster.cluster_id} remained "
            "(processes killed now):\n  " + "\n  ".join(leftovers),
            file=sys.stderr,
        )
        return 1
    print(f"cluster: stopped ({state})", file=sys.stderr)
    return 0


def _cmd_status(state: Path) -> int:
    cluster = Cluster(state)
    if not cluster.record_path.exists():
        print(f"no cluster recorded in {state}")
        return 1
    running = cluster.running()
    for name, alive in running.items():
        comp = cluster._components[name]
        port = cluster.ports.get(name)
        print(f"{name:<24} {'running' if alive else 'stopped':<8} pid {comp.pid:<8} {f'port {port}' if port else ''}")
    ready = bool(running) and all(running.values()) and cluster.ready()
    print(f"apiserver {cluster.server or '-'} {'ready' if ready else 'not ready'}")
    print(f"kubeconfig {cluster.kubeconfig}")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
