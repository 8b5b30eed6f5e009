"""The real node of the test cluster: kubelet, containerd, runc, CNI, kube-proxy, cluster DNS, a registry.

Pods run in real containers from real images, as on any cluster. What this module sets up, all of it
owned by one state directory and removed again by ``teardown``:

- a bridge ``jmk0`` with ``10.244.0.1/24``: the node's IP, the pods' gateway (CNI ``bridge`` +
  ``host-local``), and the address the API server, the registry and cluster DNS listen on;
- a local image registry (Debian's ``docker-registry``) on ``127.0.0.1``, its storage in the user cache
  so pushed images survive between runs; containerd pulls from it over plain HTTP;
- containerd with its own config, root, state and socket under ``<state>/containerd`` (the sandbox
  image from that registry; ``restrict_oom_score_adj`` because these machines refuse a negative
  ``oom_score_adj``);
- kubelet 1.20 (CRI to that containerd, CNI, cgroupfs, containers in the cgroup ``/k8s.io``),
  kube-proxy in iptables mode (ClusterIP Services), dnsmasq plus ``dns.py`` (Service and pod hostname
  records under ``cluster.local``);
- ``net.ipv4.ip_forward=1`` while it runs.

Only one real node runs on a machine at a time (kube-proxy owns the host's ``KUBE-*`` iptables chains):
``/run/jmk-test-node.json`` names the state directory of the one running; a start finds a stale one
(its API server gone) and tears it down first.

``unavailable()`` says in one line why a real node cannot run here (not root, a missing package, no
cgroups or overlay filesystem); the cluster then falls back to the node agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from .control import Cluster

BRIDGE = "jmk0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.0.0.0/24"
DNS_DOMAIN = "cluster.local"
# containerd puts CRI containers under the cgroup of its namespace when the kubelet gives no parent
# (cgroupsPerQOS: false); with one real node per machine that cgroup is ours.
CGROUP_ROOT = "k8s.io"
KUBELET_PORT = 10250
MACHINE_RECORD = Path("/run/jmk-test-node.json")
POD_LOGS = Path("/var/log/pods")
NETNS_DIR = Path("/run/netns")
CNI_BIN = Path("/usr/lib/cni")
# command -> the Debian package that has it
TOOLS = {
    "containerd": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "conntrack": "conntrack",
    "dnsmasq": "dnsmasq-base",
    "ip": "iproute2",
    "buildah": "buildah",
    "skopeo": "skopeo",
    "mmdebstrap": "mmdebstrap",
    "docker-registry": "docker-registry",
}
PACKAGES_LINE = "apt-get install -y " + " ".join(sorted(set(TOOLS.values()) | {"containernetworking-plugins"}))
NODE_TIMEOUT = 90.0
PREPULL = ("pause", "runner")  # the images most pods run; others are pulled when a pod first needs them
DRAIN_TIMEOUT = 60.0
# The kubelet renews its Lease every LEASE_SECONDS / 4 (2.5 s); the controller manager marks the node NotReady
# NODE_MONITOR_GRACE seconds after the last renewal (upstream: 40 s, 10 s renewals). Pods tolerate a NotReady
# node for 300 s (DefaultTolerationSeconds) before they are evicted: a fault test stays far below.
LEASE_SECONDS = 10
NODE_MONITOR_GRACE = 15
RESTART_TIMEOUT = 60.0
# Taints the controller manager puts on a node that is not Ready (and takes off once it is again).
OUTAGE_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")


class NodeUnavailable(RuntimeError):
    """A real node cannot run on this machine; ``str()`` is the one-line reason."""


def unavailable(install: bool = False) -> str | None:
    """Why a real node cannot run here (one line), or None. ``install``: apt-get what is missing (as root)."""
    if os.environ.get("JMK_TEST_NODE") == "agent":
        return "JMK_TEST_NODE=agent"
    if not Path("/etc/debian_version").exists() or not Path("/etc/debian_version").read_text().startswith("12"):
        return "the real node is set up for Debian 12 (bookworm) only"
    if os.geteuid() != 0:
        return "the real node needs root (kubelet, containerd and runc manage cgroups, mounts and network namespaces)"
    if not _filesystem_supported("overlay"):
        return "the kernel has no overlay filesystem (containerd's snapshotter needs it)"
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "no memory cgroup is mounted under /sys/fs/cgroup"
    missing = _missing_tools()
    if missing and install and shutil.which("apt-get"):
        packages = sorted({TOOLS.get(t, t) for t in missing})
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        result = subprocess.run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            result = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
            result = subprocess.run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, text=True, env=env)
        missing = _missing_tools()
        if missing and result.returncode != 0:
            return f"apt-get install {' '.join(packages)} failed: {result.stderr.strip().splitlines()[-1:]}"
    if missing:
        return f"missing {', '.join(missing)}: {PACKAGES_LINE}"
    return None


def _missing_tools() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not (CNI_BIN / "bridge").exists():
        missing.append("containernetworking-plugins")
    return missing


def _filesystem_supported(name: str) -> bool:
    try:
        return any(line.split()[-1] == name for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return False


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-1500:]}")
    return result


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps its files, all under the cluster's state directory."""

    state: Path

    @property
    def root(self) -> Path:
        """``<state>/realnode``."""
        return self.state / "realnode"

    @property
    def containerd(self) -> Path:
        """containerd's config, root, state and socket."""
        return self.root / "containerd"

    @property
    def socket(self) -> Path:
        """containerd's gRPC socket."""
        return self.containerd / "containerd.sock"

    @property
    def kubelet(self) -> Path:
        """kubelet's root directory (pods' volumes), config and certificates."""
        return self.root / "kubelet"

    @property
    def cni_conf(self) -> Path:
        """The CNI network configuration directory."""
        return self.root / "cni" / "net.d"

    @property
    def dns(self) -> Path:
        """dnsmasq's hosts directory, kept by ``dns.py``."""
        return self.root / "dns"

    @property
    def before(self) -> Path:
        """What the machine looked like before the node started (iptables, sysctls, netns, pod logs)."""
        return self.root / "before.json"


def write_registry_config(path: Path, storage: Path, port: int) -> None:
    """A docker-registry (distribution 2.8) config: filesystem storage, plain HTTP on 127.0.0.1, no auth."""
    storage.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )


def registry_storage() -> Path:
    """The registry's storage, in the user cache so that pushed images are kept between runs."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("JMK_TEST_REGISTRY_DIR") or base / "jupyter_mlflow_k8s" / "registry")


def prune_registry(storage: Path, kept: Iterable[str]) -> list[str]:
    """Untag what buildah's storage no longer has, then let the stopped registry collect its blobs.

    ``kept`` are local references (``localhost/jmk/runner:<key>``); a tag of the registry that is not
    among them was pruned locally (``images.prune``) and would only fill the disk. Returns the tags
    removed (``jmk/runner:<key>``). Run it only while no registry serves ``storage``.
    """
    names = {ref.removeprefix("localhost/") for ref in kept}
    removed = []
    repositories = storage / "docker" / "registry" / "v2" / "repositories"
    for tag_dir in sorted(repositories.glob("*/*/_manifests/tags/*")):
        repository = tag_dir.parent.parent.parent.relative_to(repositories).as_posix()
        if f"{repository}:{tag_dir.name}" not in names:
            shutil.rmtree(tag_dir, ignore_errors=True)
            removed.append(f"{repository}:{tag_dir.name}")
    if removed:
        config = storage.parent / "registry-gc.yml"
        write_registry_config(config, storage, _free_port())
        _run("docker-registry", "garbage-collect", "--delete-untagged", str(config), check=False, timeout=900)
        config.unlink(missing_ok=True)
    return removed


# ---------------------------------------------------------------------- machine snapshot


def _iptables_state() -> dict[str, list[str]]:
    """``iptables-save``/``ip6tables-save`` without counters and comments, per command."""
    state = {}
    for command in ("iptables-save", "ip6tables-save"):
        if shutil.which(command) is None:
            continue
        result = _run(command, check=False)
        lines = []
        for line in result.stdout.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line.startswith(":"):
                line = line.split(" [", 1)[0]
            lines.append(line)
        state[command] = lines
    return state


def _netns() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def _pod_log_dirs() -> list[str]:
    return sorted(p.name for p in POD_LOGS.iterdir()) if POD_LOGS.is_dir() else []


def _sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def _set_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value)


def _mounts_under(prefixes: Iterable[str]) -> list[str]:
    """Mount points (deepest first) under any of these path prefixes, from /proc/self/mountinfo."""
    found = []
    wanted = [p.rstrip("/") for p in prefixes]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == w or point.startswith(w + "/") for w in wanted):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def _cgroup_dirs() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    dirs = [base / CGROUP_ROOT] if (base / "cgroup.controllers").exists() else []
    if not dirs:
        dirs = [d / CGROUP_ROOT for d in base.iterdir() if (d / CGROUP_ROOT).is_dir()] if base.is_dir() else []
    return [d for d in dirs if d.is_dir()]


def _cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs():
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def _remove_cgroups() -> None:
    for top in _cgroup_dirs():
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _bridge_exists() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


# ---------------------------------------------------------------------- the node


class RealNode:
    """Start and stop the node's processes for a ``Cluster`` (which records and signals them)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.paths = NodePaths(cluster.state_dir)

    # ------------------------------------------------------------ before the control plane

    def prepare_machine(self) -> None:
        """Take the machine (one real node at a time), note its state, make the bridge, allow forwarding."""
        self._claim_machine()
        self.paths.root.mkdir(parents=True, exist_ok=True)
        before = {
            "iptables": _iptables_state(),
            "ip_forward": _sysctl("net.ipv4.ip_forward"),
            "netns": _netns(),
            "pod_logs": _pod_log_dirs(),
        }
        self.paths.before.write_text(json.dumps(before, indent=1))
        if not _bridge_exists():
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        _set_sysctl("net.ipv4.ip_forward", "1")

    def _claim_machine(self) -> None:
        try:
            other = json.loads(MACHINE_RECORD.read_text())
        except (OSError, ValueError):
            other = None
        if other and Path(other.get("state_dir", "")) != self.cluster.state_dir:
            from .control import Cluster

            previous = Cluster(Path(other["state_dir"]))
            alive = sorted(name for name, running in previous.running().items() if running)
            if alive:  # any of its processes: a cluster whose API server is down for a moment is not stale
                raise RuntimeError(
                    f"a real-node test cluster already runs from {other['state_dir']} ({', '.join(alive)} "
                    "running; one per machine: kube-proxy "
                    f"owns the host's KUBE-* iptables chains); stop it with `tests/cluster/cluster down --state "
                    f"{other['state_dir']}`, or set JMK_TEST_NODE=agent for a cluster with the node agent"
                )
            if previous.record_path.exists():
                previous.stop()  # a stale one (its session died): clear what it left first
            else:
                RealNode(previous).cleanup_machine(Path(other["state_dir"]))
        MACHINE_RECORD.write_text(json.dumps({"state_dir": str(self.cluster.state_dir), "pid": os.getpid()}))

    # ------------------------------------------------------------ after the API server

    def start(self, images: dict[str, str]) -> dict[str, str]:
        """Registry, containerd, kubelet, kube-proxy and DNS; returns the pullable image references.

        ``images`` maps names to local (buildah) references; ``pause`` must be among them.
        """
        from . import images as image_tools

        cluster = self.cluster
        registry_port = _free_port()
        cluster.ports["registry"] = registry_port
        registry = f"127.0.0.1:{registry_port}"
        config = self.paths.root / "registry.yml"
        local = [str(row["ref"]) for row in image_tools.list_images()]
        prune_registry(registry_storage(), [*local, *images.values()])
        write_registry_config(config, registry_storage(), registry_port)
        reg = cluster._spawn("registry", ["docker-registry", "serve", str(config)])
        cluster._wait(reg, "answering /v2/", lambda: _http_ok(f"http://{registry}/v2/"), 20)
        pushed = {name: image_tools.push(ref, registry) for name, ref in images.items()}

        self._write_containerd_config(pushed["pause"], registry)
        containerd = cluster._spawn(
            "containerd", ["containerd", "--config", str(self.paths.containerd / "config.toml")]
        )
        cluster._wait(containerd, "serving its socket", lambda: self.ctr("version").returncode == 0, 30)
        self._write_cni_config()

        dnsmasq = cluster._spawn("dnsmasq", [
            "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--no-resolv", "--no-hosts", "--user=root",
            f"--hostsdir={self.paths.dns}", f"--listen-address={NODE_IP}", "--bind-interfaces", "--port=53",
            f"--local=/{DNS_DOMAIN}/", "--pid-file=",
        ])  # fmt: skip
        self.paths.dns.mkdir(parents=True, exist_ok=True)
        pythonpath = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")) if p)
        import sys

        cluster._spawn(
            "cluster-dns",
            [sys.executable, "-m", "cluster.dns", "--kubeconfig", str(cluster.kubeconfig), "--dir", str(self.paths.dns)],
            env=cluster._env(PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1"),
        )
        # Pull the images now, once: a pod's first start then takes seconds, not a minute of unpacking.
        for name, ref in pushed.items():
            if name not in PREPULL:
                continue
            pulled = self.ctr("images", "pull", "--plain-http", ref, timeout=900)
            if pulled.returncode != 0:
                raise RuntimeError(f"containerd could not pull {name} image {ref}: {pulled.stderr.strip()[-1000:]}")

        bin_dir = Path(cluster.bin_dir)
        kubelet = cluster._spawn("kubelet", self._kubelet_argv(bin_dir, pushed["pause"]))
        healthz = self.paths.root / "kube-proxy-healthz"
        proxy_health, proxy_metrics = _free_port(), _free_port()
        cluster.ports.update({"kube-proxy-healthz": proxy_health, "kube-proxy-metrics": proxy_metrics})
        proxy = cluster._spawn("kube-proxy", [
            str(bin_dir / "kube-proxy"), f"--kubeconfig={cluster.kubeconfig}", "--proxy-mode=iptables",
            f"--hostname-override={cluster.node_name}", f"--cluster-cidr={POD_CIDR}",
            f"--healthz-bind-address=127.0.0.1:{proxy_health}", f"--metrics-bind-address=127.0.0.1:{proxy_metrics}",
            "--oom-score-adj=0", "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0", "--iptables-sync-period=5s", "--iptables-min-sync-period=0s",
        ])  # fmt: skip
        del healthz
        cluster._wait(dnsmasq, "running", lambda: True, 1)
        self._wait_node(kubelet)
        cluster._wait(proxy, "healthy", lambda: _http_ok(f"http://127.0.0.1:{proxy_health}/healthz"), 30)
        return pushed

    def ctr(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``ctr`` against this node's containerd, namespace ``k8s.io``."""
        return subprocess.run(
            ["ctr", "--address", str(self.paths.socket), "--namespace", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def _write_containerd_config(self, pause: str, registry: str) -> None:
        c = self.paths.containerd
        (c / "root").mkdir(parents=True, exist_ok=True)
        (c / "state").mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""\
version = 2
root = "{c / 'root'}"
state = "{c / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{self.paths.socket}"

[ttrpc]
  address = "{c / 'ttrpc.sock'}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / 'opt'}"

[{cri}]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.paths.cni_conf}"
  [{cri}.registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"""
        (c / "config.toml").write_text(text)

    def _write_cni_config(self) -> None:
        self.paths.cni_conf.mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "0.4.0",
            "name": "jmk",
            "plugins": [
                {
                    "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                    "ipam": {"type": "host-local", "dataDir": str(self.paths.root / "ipam"),
                             "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]], "routes": [{"dst": "0.0.0.0/0"}]},
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        }  # fmt: skip
        (self.paths.cni_conf / "10-jmk.conflist").write_text(json.dumps(conf, indent=1))

    def _kubelet_argv(self, bin_dir: Path, pause: str) -> list[str]:
        k = self.paths.kubelet
        k.mkdir(parents=True, exist_ok=True)
        resolv = self.paths.root / "resolv.conf"
        resolv.write_text(f"nameserver {NODE_IP}\n")
        config = f"""\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
evictionHard: {{}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
address: {NODE_IP}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
serializeImagePulls: false
clusterDNS: [{NODE_IP}]
clusterDomain: {DNS_DOMAIN}
resolvConf: {resolv}
oomScoreAdj: 0
nodeStatusUpdateFrequency: 5s
nodeLeaseDurationSeconds: {LEASE_SECONDS}
fileCheckFrequency: 60s
"""
        (k / "config.yaml").write_text(config)
        return [
            str(bin_dir / "kubelet"),
            f"--config={k / 'config.yaml'}",
            f"--kubeconfig={self.cluster.kubeconfig}",
            f"--root-dir={k / 'root'}",
            f"--cert-dir={k / 'pki'}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{self.paths.socket}",
            f"--image-service-endpoint=unix://{self.paths.socket}",
            "--network-plugin=cni",
            f"--cni-bin-dir={CNI_BIN}",
            f"--cni-conf-dir={self.paths.cni_conf}",
            f"--pod-infra-container-image={pause}",
            f"--hostname-override={self.cluster.node_name}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        ]

    def _wait_node(self, kubelet: Any, heartbeat_after: float | None = None) -> None:
        """Until the Node is Ready; then give it the GPUs (an extended resource) the cluster was asked for.

        ``heartbeat_after``: a kubelet (re)started then must have reported the node Ready since (so it has
        registered again). A kubelet without a device-manager checkpoint zeroes extended resources that no
        device plugin serves when it registers: the GPUs are given back if they are missing then.
        """
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException

        api_client = config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        core = client.CoreV1Api(api_client)
        name = self.cluster.node_name

        def ready() -> bool:
            try:
                node = core.read_node(name, _request_timeout=5)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            tainted = [t.key for t in node.spec.taints or [] if t.key in OUTAGE_TAINTS]
            return not tainted and any(
                c.type == "Ready" and c.status == "True"
                and (heartbeat_after is None or c.last_heartbeat_time.timestamp() >= int(heartbeat_after))
                for c in (node.status.conditions or [])
            )

        try:
            self.cluster._wait(kubelet, f"reporting Node {name} Ready", ready, NODE_TIMEOUT)
            gpus = str(self.cluster.gpus)
            patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": gpus}]
            node = core.read_node(name, _request_timeout=5)
            if (node.status.capacity or {}).get("nvidia.com/gpu") != gpus:
                core.patch_node_status(name, patch)  # a list body goes as application/json-patch+json

            def has_gpus() -> bool:
                node = core.read_node(name, _request_timeout=5)
                return bool((node.status.allocatable or {}).get("nvidia.com/gpu") == gpus)

            self.cluster._wait(kubelet, f"showing {gpus} nvidia.com/gpu allocatable", has_gpus, 30)
        finally:
            api_client.close()

    # ------------------------------------------------------------ faults, for tests

    def restart_kubelet(self, down_for: float = 2.0, while_down: Callable[[], None] | None = None) -> None:
        """Stop the kubelet, call ``while_down()``, wait ``down_for`` s, start it again; return once the node is
        Ready again.

        Containers keep running meanwhile (containerd runs them); what the kubelet serves (pod logs,
        status updates) stops.
        """
        self.stop_kubelet()
        if while_down is not None:
            while_down()
        time.sleep(down_for)
        self.start_kubelet()

    def stop_kubelet(self) -> float:
        """Stop the kubelet (SIGTERM) and nothing else; returns when it stopped (``time.time()``)."""
        self.cluster.stop_component("kubelet")
        return time.time()

    def start_kubelet(self) -> None:
        """Start the kubelet again and wait until the node is Ready with a heartbeat of the new kubelet."""
        started = time.time()
        kubelet = self.cluster.start_component("kubelet")
        self._wait_node(kubelet, heartbeat_after=started)

    def restart_containerd(self, down_for: float = 2.0, while_down: Callable[[], None] | None = None) -> None:
        """Stop containerd (not its shims: the containers keep running), call ``while_down()``, wait ``down_for``
        s, start it again; return once it serves its socket again and the node is Ready."""
        self.cluster.stop_component("containerd")
        if while_down is not None:
            while_down()
        time.sleep(down_for)
        self.ensure_running()

    def ensure_running(self) -> None:
        """After a fault test: containerd and the kubelet running again (started if stopped), the node Ready."""
        cluster = self.cluster
        if not cluster.running().get("containerd"):
            containerd = cluster.start_component("containerd")
            cluster._wait(containerd, "serving its socket again", lambda: self.ctr("version").returncode == 0,
                          RESTART_TIMEOUT)
        if not cluster.running().get("kubelet"):
            self.start_kubelet()
        else:
            self._wait_node(cluster._components["kubelet"])

    def make_not_ready(self, timeout: float = RESTART_TIMEOUT) -> float:
        """Stop the kubelet and wait until the controller manager marks the node NotReady (its Lease expired:
        ``NODE_MONITOR_GRACE`` s). Returns when the kubelet stopped. ``start_kubelet()`` ends the outage."""
        stopped = self.stop_kubelet()
        deadline = time.monotonic() + timeout
        while self.ready_condition().get("status") == "True":
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.cluster.node_name} still Ready {timeout:.0f} s after its kubelet stopped")
            time.sleep(0.2)
        return stopped

    def ready_condition(self) -> dict[str, Any]:
        """The node's Ready condition as the API has it now (``{}`` when it has none)."""
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        try:
            node = client.CoreV1Api(api_client).read_node(self.cluster.node_name, _request_timeout=5)
        finally:
            api_client.close()
        found = [c for c in node.status.conditions or [] if c.type == "Ready"]
        return found[0].to_dict() if found else {}

    # ------------------------------------------------------------ teardown

    def drain(self) -> None:
        """Delete every pod and wait until containerd runs none (the kubelet tears sandboxes down: CNI DEL)."""
        from kubernetes import client, config

        try:
            api_client = config.new_client_from_config(config_file=str(self.cluster.kubeconfig))
        except Exception:
            return
        core = client.CoreV1Api(api_client)
        try:
            for ns in core.list_namespace(_request_timeout=5).items:
                with contextlib.suppress(Exception):
                    core.delete_collection_namespaced_pod(ns.metadata.name, grace_period_seconds=1, _request_timeout=10)
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while time.monotonic() < deadline:
                pods = core.list_pod_for_all_namespaces(_request_timeout=5).items
                if not pods and not self._running_sandboxes():
                    break
                time.sleep(0.5)
        except Exception:
            pass  # the API server is down: the forced cleanup below does the rest
        finally:
            api_client.close()

    def _running_sandboxes(self) -> list[str]:
        if not self.paths.socket.exists():
            return []
        listed = self.ctr("tasks", "ls", "-q", timeout=10)
        return [line for line in listed.stdout.split() if line] if listed.returncode == 0 else []

    def force_stop_containers(self) -> None:
        """Kill and delete whatever containerd still runs (after the kubelet is gone)."""
        if not self.paths.socket.exists():
            return
        for task in self._running_sandboxes():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=10)
        for _ in range(20):
            if not self._running_sandboxes():
                break
            time.sleep(0.25)
        for task in self.ctr("tasks", "ls", "-q", timeout=10).stdout.split():
            self.ctr("tasks", "delete", "--force", task, timeout=10)
        for container in self.ctr("containers", "ls", "-q", timeout=10).stdout.split():
            self.ctr("containers", "delete", container, timeout=10)

    def cleanup_machine(self, state_dir: Path | None = None) -> None:
        """Undo what the node did to the machine: processes in its cgroups, mounts, netns, bridge, iptables."""
        paths = NodePaths(state_dir or self.cluster.state_dir)
        if not owns_machine(paths):
            return  # another cluster's real node runs here: its bridge and rules are not ours to undo
        try:
            before = json.loads(paths.before.read_text())
        except (OSError, ValueError):
            before = {}
        for pid in _cgroup_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _wait_until(lambda: not _cgroup_pids(), 10)
        for name in set(_netns()) - set(before.get("netns", [])):
            if name.startswith("cni-"):
                _run("ip", "netns", "delete", name, check=False)
        for point in _mounts_under([str(paths.root), str(NETNS_DIR)]):
            if point.startswith(str(NETNS_DIR)) and Path(point).name in before.get("netns", []):
                continue
            _run("umount", "-l", point, check=False)
        for name in set(_pod_log_dirs()) - set(before.get("pod_logs", [])):
            shutil.rmtree(POD_LOGS / name, ignore_errors=True)
        if not _mounts_under([str(paths.containerd)]):
            # The images unpacked (GBs per cluster): the registry keeps them, and pytest keeps three runs' dirs.
            shutil.rmtree(paths.containerd / "root", ignore_errors=True)
        if _bridge_exists():
            _run("ip", "link", "delete", BRIDGE, check=False)
        kube_proxy = Path(self.cluster.bin_dir or "") / "kube-proxy" if self.cluster.bin_dir else None
        if kube_proxy is not None and kube_proxy.exists():
            _run(str(kube_proxy), "--cleanup", check=False)
        _restore_iptables(before.get("iptables", {}))
        if "ip_forward" in before:
            with contextlib.suppress(OSError):
                _set_sysctl("net.ipv4.ip_forward", before["ip_forward"])
        _remove_cgroups()
        with contextlib.suppress(OSError, ValueError):
            if Path(json.loads(MACHINE_RECORD.read_text()).get("state_dir", "")) == paths.state:
                MACHINE_RECORD.unlink()

    def leftovers(self) -> list[str]:
        """What the node made that is still there (empty after a clean teardown)."""
        paths = self.paths
        try:
            before = json.loads(paths.before.read_text())
        except (OSError, ValueError):
            return []
        if not owns_machine(paths) and MACHINE_RECORD.exists():
            return []  # the machine's node is another cluster's now
        left = [f"container process pid {pid}" for pid in sorted(_cgroup_pids())]
        left += [f"cgroup {d}" for d in _cgroup_dirs()]
        left += [f"mount {m}" for m in _mounts_under([str(paths.root)])]
        left += [f"network namespace {n}" for n in sorted(set(_netns()) - set(before.get("netns", [])))]
        left += [f"pod log directory {POD_LOGS / n}" for n in sorted(set(_pod_log_dirs()) - set(before.get("pod_logs", [])))]
        if _bridge_exists():
            left.append(f"bridge {BRIDGE}")
        now = _iptables_state()
        for command, lines in before.get("iptables", {}).items():
            added = [line for line in now.get(command, []) if line not in set(lines)]
            left += [f"{command}: {line}" for line in added]
        if before.get("ip_forward") and _sysctl("net.ipv4.ip_forward") != before["ip_forward"]:
            left.append("net.ipv4.ip_forward still changed")
        return left


def owns_machine(paths: NodePaths) -> bool:
    """Whether the machine's real node is this one (the machine record names it, or names none and this
    state directory noted the machine's state before starting one)."""
    try:
        named = json.loads(MACHINE_RECORD.read_text()).get("state_dir", "")
    except (OSError, ValueError):
        return paths.before.exists()
    return Path(named) == paths.state


def _restore_iptables(before: dict[str, list[str]]) -> None:
    """Put back every table as it was, if anything differs (kube-proxy, kubelet and portmap add chains)."""
    now = _iptables_state()
    for command, lines in before.items():
        if now.get(command) == lines:
            continue
        restore = command.replace("-save", "-restore")
        text = "\n".join(lines) + "\n"
        # Tables that did not exist before but do now are emptied too.
        tables_before = {line[1:] for line in lines if line.startswith("*")}
        for line in now.get(command, []):
            if line.startswith("*") and line[1:] not in tables_before:
                text += f"*{line[1:]}\nCOMMIT\n"
        subprocess.run([restore], input=text, capture_output=True, text=True, check=False)


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _free_port() -> int:
    from .control import free_port

    return free_port()


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def shim_processes(cluster_id: str) -> list[psutil.Process]:
    """containerd shims of this cluster (they inherit containerd's environment, hence the cluster id)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.info["name"] and proc.info["name"].startswith("containerd-shim"):
                env = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
                if f"JMK_TEST_CLUSTER_ID={cluster_id}".encode() in env:
                    found.append(proc)
    return found


def pod_processes(selector: str) -> list[psutil.Process]:
    """Live container processes of the running real node whose pod's ``namespace/name`` starts with ``selector``.

    Read from containerd's task bundles (the OCI spec's CRI annotations and ``init.pid``), so it needs no
    API and sees exactly what runs; pause (sandbox) processes count as the pod's.
    """
    try:
        state = Path(json.loads(MACHINE_RECORD.read_text())["state_dir"])
    except (OSError, ValueError, KeyError):
        return []
    tasks = NodePaths(state).containerd / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    found = []
    for bundle in tasks.glob("*") if tasks.is_dir() else []:
        try:
            annotations = json.loads((bundle / "config.json").read_text()).get("annotations", {})
            pod = f"{annotations['io.kubernetes.cri.sandbox-namespace']}/{annotations['io.kubernetes.cri.sandbox-name']}"
            pid = int((bundle / "init.pid").read_text())
        except (OSError, ValueError, KeyError):
            continue
        if not pod.startswith(selector):
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found
