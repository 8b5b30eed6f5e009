"""A node agent for the test cluster: it plays the kubelet for one Node and runs pods as local processes.

There is no container runtime on the machines this project is tested on, so this agent stands in for the
kubelet. Everything above it is real: the API server, the scheduler, the Job and garbage-collection
controllers, the official Python client. What the agent does:

* **The Node.** It registers a Node with ``InternalIP`` 127.0.0.1, its HTTPS port as the kubelet endpoint,
  capacity and allocatable (CPU, memory, pods, ``nvidia.com/gpu``), and a Ready condition. It heartbeats
  every 10 s through the node status and a Lease in ``kube-node-lease``, so the node lifecycle
  controller leaves its pods alone.
* **Pods.** Each container of a pod bound to the node runs as a process in its own session: command and
  args (with ``$(VAR)`` expansion), env and envFrom (values, ``fieldRef``, ``resourceFieldRef``,
  ``configMapKeyRef``, ``secretKeyRef``), and workingDir. The image is ignored: the test environment
  stands in for it, so a container must name its command. The process's environment is built from the
  pod spec, not inherited, plus ``PATH``/``LANG`` of the agent, ``HOME`` (a per-pod directory),
  ``HOSTNAME``, ``KUBERNETES_SERVICE_HOST``/``PORT``, ``JMK_TEST_CLUSTER_ID`` and
  ``JMK_NODE_AGENT_POD=<namespace>/<name>`` (how tests find leftover processes). GPUs requested
  through ``nvidia.com/gpu`` are allocated from the node's devices and named in ``NVIDIA_VISIBLE_DEVICES``
  and ``CUDA_VISIBLE_DEVICES``. Init containers run first, in order. The status goes Pending →
  Running → Succeeded/Failed with container states, exit codes and reasons (``Completed``, ``Error``,
  ``OOMKilled``, ``ContainerCannotRun``), restarts follow ``restartPolicy`` (back-off 1 s doubling
  to 10 s, where the kubelet uses 10 s to 5 min), ``activeDeadlineSeconds`` ends the pod with
  ``DeadlineExceeded``, and ``terminationMessagePath`` (with ``FallbackToLogsOnError``) feeds the
  terminated state's message. Readiness and liveness probes (exec, httpGet, tcpSocket; all processes
  share the host network) drive the Ready condition and restarts. A container whose resident memory
  (process tree) passes ``limits.memory`` is killed as ``OOMKilled``.
* **Deletion.** When a pod is deleted, its processes get SIGTERM, then SIGKILL after the grace period;
  then the agent removes the pod object (grace 0), as the kubelet does.
* **Volumes.** ``emptyDir``, ``configMap``, ``secret``, ``downwardAPI`` (labels, annotations, name,
  namespace) and ``persistentVolumeClaim`` (a directory per claim, shared by pods, surviving them)
  become directories under the pod's directory. A process cannot see them at their mount paths, so the
  agent rewrites each mount path to its directory wherever it appears in command, args, env values and
  workingDir, and passes the whole map as JSON in ``JMK_MOUNTS`` (``{"/mount/path": "/local/dir"}``).
  A workingDir outside any mount is created under the pod's ``rootfs/``.
* **Logs.** Each container's stdout and stderr are written line by line, with timestamps, in the CRI log
  format (a line is split only at 16 KiB, as containerd does), and served over HTTPS at
  ``/containerLogs/{namespace}/{pod}/{container}`` with ``follow``, ``tailLines``, ``timestamps``,
  ``previous``, ``sinceSeconds``, ``sinceTime`` and ``limitBytes``, for the API server's log proxy.

Test hooks, through the pod (so they work from any client):

* annotation ``node-agent.jmk.io/inject: OOMKilled`` (or ``OOMKilled:<container>``) on a running pod kills
  the container as the kernel's OOM killer would: exit code 137, reason ``OOMKilled``;
* annotation ``node-agent.jmk.io/inject: Evicted`` evicts the pod: processes stopped, phase Failed,
  reason ``Evicted``;
* an image whose registry host ends in ``.invalid`` (RFC 2606), or the annotation
  ``node-agent.jmk.io/inject: ErrImagePull`` at creation, fails the image pull: the container waits with
  ``ErrImagePull`` then ``ImagePullBackOff`` and the pod stays Pending.

Run: ``python -m cluster.node_agent --kubeconfig KC --node-name N --port P --cert C --key K --root DIR``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import faulthandler
import http.server
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from decimal import ROUND_UP
from pathlib import Path
from typing import Any

import kubernetes
import psutil
from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("node-agent")

INJECT = "node-agent.jmk.io/inject"
GPU = "nvidia.com/gpu"
HEARTBEAT_SECONDS = 10
LINE_LIMIT = 16 * 1024
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def now() -> str:
    """The current time as the API server writes it (RFC 3339, seconds)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def nano_timestamp() -> str:
    """RFC 3339 with nanoseconds, as in CRI log lines."""
    ns = time.time_ns()
    base = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns % 1_000_000_000:09d}Z"


def parse_time(value: str) -> float:
    """Seconds since the epoch for an RFC 3339 timestamp (any fraction)."""
    main, _, frac = value.rstrip("Z").partition(".")
    stamp = dt.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


class PodFailure(Exception):
    """A container could not be created; ``reason`` goes into its waiting state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------------------------------
# Container logs
# --------------------------------------------------------------------------------------------------


class LogWriter:
    """Writes a process's stdout and stderr into one file in the CRI format, one record per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("ab", buffering=0)
        self._lock = threading.Lock()
        self._open_streams = 0
        self.closed = threading.Event()

    def attach(self, fd: Any, stream: str) -> None:
        """Copy one pipe into the file on a thread of its own."""
        self._open_streams += 1
        threading.Thread(target=self._copy, args=(fd, stream), daemon=True, name=f"log-{stream}").start()

    def _copy(self, pipe: Any, stream: str) -> None:
        buffer = b""
        try:
            while chunk := os.read(pipe.fileno(), 65536):
                buffer += chunk
                while (cut := buffer.find(b"\n")) >= 0 or len(buffer) >= LINE_LIMIT:
                    if 0 <= cut < LINE_LIMIT:
                        self._record(stream, b"F", buffer[:cut])
                        buffer = buffer[cut + 1 :]
                    else:
                        self._record(stream, b"P", buffer[:LINE_LIMIT])
                        buffer = buffer[LINE_LIMIT:]
            if buffer:
                self._record(stream, b"P", buffer)
        finally:
            pipe.close()
            with self._lock:
                self._open_streams -= 1
                if self._open_streams == 0:
                    self._file.close()
                    self.closed.set()

    def _record(self, stream: str, tag: bytes, content: bytes) -> None:
        with self._lock:
            self._file.write(b"%s %s %s %s\n" % (nano_timestamp().encode(), stream.encode(), tag, content))


def read_records(path: Path) -> list[tuple[str, bytes, bytes]]:
    """All complete records of a CRI log file as (timestamp, tag, content)."""
    records = []
    data = path.read_bytes()
    for line in data.split(b"\n")[:-1]:
        stamp, _stream, tag, content = line.split(b" ", 3)
        records.append((stamp.decode(), tag, content))
    return records


def render(record: tuple[str, bytes, bytes], timestamps: bool) -> bytes:
    """One record as the kubelet returns it."""
    stamp, tag, content = record
    text = content + (b"\n" if tag == b"F" else b"")
    return (stamp.encode() + b" " + text) if timestamps else text


# --------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------


class Container:
    """One run (one restart) of a container: its process, log and state."""

    def __init__(self, spec: dict[str, Any], restart_count: int, log_path: Path, init: bool) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.restart_count = restart_count
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: LogWriter | None = None
        self.started_at = ""
        self.finished_at = ""
        self.exit_code: int | None = None
        self.reason = ""
        self.message = ""
        self.waiting = ("ContainerCreating", "")
        self.ready = False
        self.killed_as = ""  # "OOMKilled" when the agent killed it for memory

    def start(self, argv: list[str], env: dict[str, str], cwd: str) -> None:
        """Start the process in a session of its own, its output going to the log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.logs = LogWriter(self.log_path)
        try:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self.logs.closed.set()
            raise PodFailure("ContainerCannotRun", f"failed to start {argv[0]!r}: {exc}") from exc
        self.logs.attach(self.proc.stdout, "stdout")
        self.logs.attach(self.proc.stderr, "stderr")
        self.started_at = now()
        self.waiting = ("", "")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.exit_code is None

    def poll(self) -> bool:
        """Whether the process has ended (recording how)."""
        if self.proc is None or self.exit_code is not None:
            return self.exit_code is not None
        code = self.proc.poll()
        if code is None:
            return False
        self.exit_code = 128 - code if code < 0 else code
        self.finished_at = now()
        self.reason = self.killed_as or ("Completed" if self.exit_code == 0 else "Error")
        self.ready = False
        return True

    def signal(self, sig: int) -> None:
        """Signal the whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; waits for the end."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=max(grace, 0))
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.signal(signal.SIGKILL)  # anything the main process left behind in its group
        self.poll()

    def rss(self) -> int:
        """Resident memory of the process tree, in bytes."""
        if self.proc is None:
            return 0
        try:
            top = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [top, *top.children(recursive=True)])
        except psutil.Error:
            return 0

    def status(self, image: str, previous: Container | None, uid: str) -> dict[str, Any]:
        """This container's entry in ``containerStatuses``."""
        state: dict[str, Any]
        if self.exit_code is not None:
            state = {"terminated": self._terminated(uid)}
        elif self.proc is not None:
            state = {"running": {"startedAt": self.started_at}}
        else:
            reason, message = self.waiting
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status: dict[str, Any] = {
            "name": self.name, "image": image, "imageID": f"jmk-node-agent://{image}", "ready": self.ready,
            "restartCount": self.restart_count, "started": self.running, "state": state,
            "lastState": {"terminated": previous._terminated(uid)} if previous and previous.exit_code is not None else {},
        }
        if self.proc is not None:
            status["containerID"] = self.container_id(uid)
        return status

    def container_id(self, uid: str) -> str:
        return f"jmk://{uid}-{self.name}-{self.restart_count}"

    def _terminated(self, uid: str) -> dict[str, Any]:
        out = {"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at or None,
               "finishedAt": self.finished_at, "containerID": self.container_id(uid)}
        if self.message:
            out["message"] = self.message
        return out


# --------------------------------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------------------------------


class PodWorker:
    """Runs one pod to its end: volumes, init containers, containers, probes, status, deletion."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any]) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.dir = agent.root / "pods" / self.uid
        self.spec: dict[str, Any] = pod["spec"]
        self.restart_policy: str = self.spec.get("restartPolicy", "Always")
        self.history: dict[str, list[Container]] = {}
        self.mounts: dict[str, str] = {}
        self.gpus: list[int] = []
        self.phase = "Pending"
        self.pod_reason = ""
        self.pod_message = ""
        self.start_time = now()
        self.initialized = False
        self.delete_grace: float | None = None
        self.wake = threading.Event()
        self.done = threading.Event()
        self.probe_state: dict[tuple[str, str], list[int]] = {}
        self._published: str = ""
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"pod-{self.namespace}-{self.name}")

    # -- events from the watch -----------------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        """A newer version of the pod object (annotations may carry test hooks; deletion may start)."""
        self.pod = pod
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") and self.delete_grace is None:
            self.delete_grace = float(meta.get("deletionGracePeriodSeconds")
                                      or self.spec.get("terminationGracePeriodSeconds") or 0)
        self.wake.set()

    # -- the pod's life ------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: agent error", self.namespace, self.name)
            self.phase, self.pod_reason, self.pod_message = "Failed", "NodeAgentError", "the node agent failed"
            self.stop_all(0)
            self.publish()
        finally:
            self.agent.release_gpus(self.gpus)
            self.publish_final()
            if self.delete_grace is not None:
                self.finalize_deletion()
            self.done.set()

    def _run(self) -> None:
        self.publish()
        if not self.prepare():
            return
        for spec in self.spec.get("initContainers") or []:
            if not self.run_init(spec):
                return
        self.initialized = True
        for spec in self.spec["containers"]:
            self.launch(spec, restart_count=0)
        self.supervise()

    def prepare(self) -> bool:
        """Volumes, GPUs and image pulls; waits (Pending) while something is missing, like the kubelet."""
        backoff = 1.0
        while self.delete_grace is None:
            try:
                self.check_images()
                self.mount_volumes()
                self.gpus = self.agent.allocate_gpus(self.gpu_request())
                return True
            except PodFailure as failure:
                self.set_waiting(failure.reason, failure.message)
                self.agent.event(self.pod, "Warning", "Failed" if "Image" in failure.reason else "FailedMount",
                                 failure.message)
                self.publish()
                if failure.reason == "ErrImagePull":
                    self.wake.wait(1)
                    self.set_waiting("ImagePullBackOff", f"Back-off pulling image: {failure.message}")
                    self.publish()
                self.wake.wait(backoff)
                self.wake.clear()
                backoff = min(backoff * 2, 10)
        return False

    def check_images(self) -> None:
        injected = self.pod["metadata"].get("annotations", {}).get(INJECT, "")
        for spec in [*(self.spec.get("initContainers") or []), *self.spec["containers"]]:
            host = spec.get("image", "").split("/")[0]
            if injected == "ErrImagePull" or ("/" in spec.get("image", "") and host.endswith(".invalid")):
                raise PodFailure("ErrImagePull", f'failed to pull image "{spec.get("image")}": '
                                 "rpc error: code = Unknown desc = failed to resolve reference: "
                                 f"dial tcp: lookup {host}: no such host")

    def set_waiting(self, reason: str, message: str) -> None:
        for spec in [*(self.spec.get("initContainers") or []), *self.spec["containers"]]:
            runs = self.history.setdefault(spec["name"], [])
            if not runs:
                runs.append(Container(spec, 0, self.log_path(spec["name"], 0), init=False))
            if runs[-1].proc is None:
                runs[-1].waiting = (reason, message)

    def gpu_request(self) -> int:
        total = 0
        for spec in self.spec["containers"]:
            limits = (spec.get("resources") or {}).get("limits") or {}
            total += int(limits.get(GPU, 0))
        return total

    def run_init(self, spec: dict[str, Any]) -> bool:
        """Run one init container to success (restarting per policy); False when the pod ended instead."""
        restart_count = 0
        while True:
            container = self.launch(spec, restart_count, init=True)
            while not container.poll():
                if self.wait_or_delete(0.1):
                    return False
            self.publish()
            if container.exit_code == 0:
                return True
            if self.restart_policy == "Never":
                self.phase = "Failed"
                self.publish()
                return False
            restart_count += 1
            if self.back_off(container, restart_count):
                return False

    def launch(self, spec: dict[str, Any], restart_count: int, init: bool = False) -> Container:
        container = Container(spec, restart_count, self.log_path(spec["name"], restart_count), init)
        runs = self.history.setdefault(spec["name"], [])
        if runs and runs[-1].proc is None:
            runs[-1] = container
        else:
            runs.append(container)
        try:
            argv, env, cwd = self.agent.process_for(self, spec)
            container.start(argv, env, cwd)
        except PodFailure as failure:
            container.exit_code, container.reason, container.message = 128, failure.reason, failure.message
            container.finished_at = now()
            self.agent.event(self.pod, "Warning", "Failed", failure.message)
        else:
            self.agent.event(self.pod, "Normal", "Started", f"Started container {container.name}")
        self.publish()
        return container

    def log_path(self, container: str, restart_count: int) -> Path:
        return self.dir / "logs" / container / f"{restart_count}.log"

    def current(self) -> list[Container]:
        return [self.history[spec["name"]][-1] for spec in self.spec["containers"] if self.history.get(spec["name"])]

    def supervise(self) -> None:
        """Watch the containers until the pod ends or is deleted."""
        deadline = self.spec.get("activeDeadlineSeconds")
        started = time.monotonic()
        restart_at: dict[str, float] = {}
        while True:
            if self.wait_or_delete(0.1):
                return
            if self.hooks():
                return
            if deadline is not None and time.monotonic() - started > float(deadline):
                self.stop_all(float(self.spec.get("terminationGracePeriodSeconds") or 30))
                self.phase, self.pod_reason = "Failed", "DeadlineExceeded"
                self.pod_message = "Pod was active on the node longer than the specified deadline"
                self.publish()
                return
            for container in self.current():
                if container.running:
                    self.enforce_memory(container)
                    self.probe(container)
                if container.exit_code is None and container.poll():
                    self.finish(container)
                    if self.should_restart(container):
                        restart_at[container.name] = time.monotonic() + self.backoff_delay(container.restart_count + 1)
                        self.agent.event(self.pod, "Warning", "BackOff",
                                         f"Back-off restarting failed container {container.name}")
            for name, at in list(restart_at.items()):
                if time.monotonic() >= at:
                    del restart_at[name]
                    previous = self.history[name][-1]
                    self.launch(previous.spec, previous.restart_count + 1)
            if not restart_at and all(c.exit_code is not None for c in self.current()):
                self.phase = "Failed" if any(c.exit_code for c in self.current()) else "Succeeded"
                self.publish()
                return
            self.publish()

    def should_restart(self, container: Container) -> bool:
        return self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and container.exit_code != 0)

    @staticmethod
    def backoff_delay(restart_count: int) -> float:
        return float(min(2 ** (restart_count - 1), 10))

    def back_off(self, container: Container, restart_count: int) -> bool:
        """Wait before a restart; True when the pod was deleted meanwhile."""
        container.waiting = ("CrashLoopBackOff", f"back-off restarting failed container {container.name}")
        return self.wait_or_delete(self.backoff_delay(restart_count))

    def finish(self, container: Container) -> None:
        """Record a container's end: termination message, event."""
        policy = container.spec.get("terminationMessagePolicy", "File")
        path = Path(self.mounts.get(f"termination:{container.name}", ""))
        message = ""
        if path.name and path.is_file():
            message = path.read_text(errors="replace")[-4096:]
        if not message and policy == "FallbackToLogsOnError" and container.exit_code:
            assert container.logs is not None
            container.logs.closed.wait(5)
            records = read_records(container.log_path)[-80:]
            message = b"".join(render(r, False) for r in records).decode(errors="replace")[-2048:]
        container.message = container.message or message
        self.publish()

    def wait_or_delete(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; on a deletion request stop everything and return True."""
        self.wake.wait(seconds)
        self.wake.clear()
        if self.delete_grace is None:
            return False
        self.agent.event(self.pod, "Normal", "Killing", "Stopping containers")
        self.stop_all(self.delete_grace)
        self.publish()
        return True

    def hooks(self) -> bool:
        """Test hooks from the annotation; True when the pod ended."""
        injected = self.pod["metadata"].get("annotations", {}).get(INJECT, "")
        if injected.startswith("OOMKilled"):
            target = injected.partition(":")[2]
            for container in self.current():
                if container.running and target in ("", container.name):
                    self.oom_kill(container)
                    break
        elif injected == "Evicted":
            self.stop_all(0)
            self.phase, self.pod_reason = "Failed", "Evicted"
            self.pod_message = "The node was low on resource: memory. Container was using more than its request."
            self.agent.event(self.pod, "Warning", "Evicted", self.pod_message)
            self.publish()
            return True
        return False

    def enforce_memory(self, container: Container) -> None:
        limit = ((container.spec.get("resources") or {}).get("limits") or {}).get("memory")
        if limit and container.rss() > parse_quantity(limit):
            self.oom_kill(container)

    def oom_kill(self, container: Container) -> None:
        container.killed_as = "OOMKilled"
        container.signal(signal.SIGKILL)
        assert container.proc is not None
        container.proc.wait()
        self.agent.event(self.pod, "Warning", "OOMKilling", f"Memory cgroup out of memory: killed {container.name}")

    def probe(self, container: Container) -> None:
        """Readiness and liveness probes, at their periods."""
        for kind in ("readinessProbe", "livenessProbe"):
            spec = container.spec.get(kind)
            if kind == "readinessProbe" and spec is None:
                container.ready = True
                continue
            if spec is None:
                continue
            key = (container.name, kind)
            state = self.probe_state.setdefault(key, [0, 0, 0])  # next-at (ms), successes, failures
            elapsed_ms = int(time.monotonic() * 1000)
            if state[0] == 0:
                state[0] = elapsed_ms + int(1000 * float(spec.get("initialDelaySeconds", 0)))
            if elapsed_ms < state[0]:
                continue
            state[0] = elapsed_ms + int(1000 * float(spec.get("periodSeconds", 10)))
            ok = self.agent.run_probe(self, container, spec)
            state[1], state[2] = (state[1] + 1, 0) if ok else (0, state[2] + 1)
            if kind == "readinessProbe":
                if ok and state[1] >= int(spec.get("successThreshold", 1)):
                    container.ready = True
                elif not ok and state[2] >= int(spec.get("failureThreshold", 3)):
                    container.ready = False
            elif not ok and state[2] >= int(spec.get("failureThreshold", 3)):
                self.agent.event(self.pod, "Warning", "Unhealthy", f"Liveness probe failed for {container.name}")
                container.stop(float(self.spec.get("terminationGracePeriodSeconds") or 30))
                self.probe_state.pop(key, None)

    def stop_all(self, grace: float) -> None:
        """Stop every running container in parallel, each with the same grace period."""
        running = [c for runs in self.history.values() for c in runs if c.running]
        threads = [threading.Thread(target=c.stop, args=(grace,)) for c in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # -- status --------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        images = {c["name"]: c.get("image", "") for c in [*(self.spec.get("initContainers") or []),
                                                         *self.spec["containers"]]}

        def statuses(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for spec in specs:
                runs = self.history.get(spec["name"]) or [Container(spec, 0, Path(), init=False)]
                previous = runs[-2] if len(runs) > 1 else None
                out.append(runs[-1].status(images[spec["name"]], previous, self.uid))
            return out

        containers = statuses(self.spec["containers"])
        phase = self.phase
        if phase == "Pending" and self.initialized and any("running" in s["state"] for s in containers):
            phase = "Running"
        if phase == "Pending" and self.initialized and all("waiting" not in s["state"] for s in containers):
            phase = "Running"
        self.phase = phase
        ready = phase == "Running" and all(s["ready"] for s in containers)
        stamp = now()
        conditions = [
            {"type": "Initialized", "status": str(self.initialized), "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": stamp},
            {"type": "Ready", "status": str(ready), "lastTransitionTime": stamp},
        ]
        status: dict[str, Any] = {
            "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time, "conditions": conditions, "containerStatuses": containers,
        }
        if self.spec.get("initContainers"):
            status["initContainerStatuses"] = statuses(self.spec["initContainers"])
        if self.pod_reason:
            status["reason"], status["message"] = self.pod_reason, self.pod_message
        return status

    def publish(self) -> bool:
        """Patch the pod's status when it changed (ignoring timestamps); False when the API did not take it."""
        status = self.status()
        fingerprint = json.dumps({**status, "conditions": [(c["type"], c["status"]) for c in status["conditions"]]},
                                 sort_keys=True)
        if fingerprint == self._published:
            return True
        previous = {c["type"]: c for c in self.pod.get("status", {}).get("conditions", [])}
        for condition in status["conditions"]:
            old = previous.get(condition["type"])
            if old and old.get("status") == condition["status"] and old.get("lastTransitionTime"):
                condition["lastTransitionTime"] = old["lastTransitionTime"]
        try:
            self.agent.core.patch_namespaced_pod_status(self.name, self.namespace, {"status": status},
                                                        _content_type=STRATEGIC)
            self._published = fingerprint
            return True
        except ApiException as exc:
            if exc.status == 404:
                return True  # the pod is gone: nothing left to report
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, exc.reason)
        except Exception as exc:  # the API server is restarting, say: the next publish retries
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, exc)
        return False

    def publish_final(self) -> None:
        """The last status must reach the API, even across an API server restart."""
        while not self.publish() and not self.agent.stopping.wait(0.5):
            pass

    def finalize_deletion(self) -> None:
        """Remove the pod object once its processes are gone, as the kubelet does (retried until it is gone)."""
        while True:
            try:
                # With a body, the API server reads the options from it alone: the grace period goes there too.
                self.agent.core.delete_namespaced_pod(
                    self.name, self.namespace, body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
                return
            except ApiException as exc:
                if exc.status in (404, 409):  # gone, or another pod of that name (the uid precondition)
                    return
                log.warning("pod %s/%s: final delete failed: %s %s", self.namespace, self.name, exc.status, exc.body)
            except Exception as exc:
                log.warning("pod %s/%s: final delete failed: %s", self.namespace, self.name, exc)
            if self.agent.stopping.wait(0.5):
                return

    # -- volumes ---------------------------------------------------------------------------------------

    def mount_volumes(self) -> None:
        volumes = {}
        for volume in self.spec.get("volumes") or []:
            volumes[volume["name"]] = self.agent.materialize_volume(self, volume)
        self.mounts = {}
        for spec in [*(self.spec.get("initContainers") or []), *self.spec["containers"]]:
            for mount in spec.get("volumeMounts") or []:
                source = volumes.get(mount["name"])
                if source is None:
                    raise PodFailure("CreateContainerConfigError", f"volume {mount['name']!r} is not defined")
                target = source / mount["subPath"] if mount.get("subPath") else source
                self.mounts[mount["mountPath"].rstrip("/") or "/"] = str(target)
            path = spec.get("terminationMessagePath", "/dev/termination-log")
            local = self.dir / "termination" / spec["name"]
            local.parent.mkdir(parents=True, exist_ok=True)
            self.mounts[f"termination:{spec['name']}"] = str(local)
            self.mounts.setdefault(f"termination-path:{spec['name']}", path)


# --------------------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------------------


class NodeAgent:
    """The Node, its heartbeats, the pod watch and the log server."""

    def __init__(self, api: kubernetes.client.ApiClient, node_name: str, port: int, root: Path, gpus: int) -> None:
        self.api = api
        self.core = kubernetes.client.CoreV1Api(api)
        self.leases = kubernetes.client.CoordinationV1Api(api)
        self.node_name = node_name
        self.port = port
        self.root = root
        self.gpu_count = gpus
        self.free_gpus = list(range(gpus))
        self.gpu_lock = threading.Lock()
        self.workers: dict[str, PodWorker] = {}
        self.by_name: dict[tuple[str, str], PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        host = urllib.parse.urlsplit(api.configuration.host)
        self.api_host, self.api_port = host.hostname or "127.0.0.1", str(host.port or 443)
        self.boot = now()

    # -- node ----------------------------------------------------------------------------------------

    def node_status(self) -> dict[str, Any]:
        memory = psutil.virtual_memory().total
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory // 1024}Ki", "pods": "110",
                    "ephemeral-storage": f"{shutil.disk_usage(self.root).total // 1024}Ki", GPU: str(self.gpu_count)}
        stamp = now()

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": stamp, "lastTransitionTime": self.boot}

        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "node agent has sufficient memory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "node agent has sufficient PID"),
                condition("Ready", "True", "KubeletReady", "node agent is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": uuid.getnode().__format__("x"), "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name)),
                "bootID": self.boot, "kernelVersion": platform.release(), "osImage": "jmk node agent",
                "containerRuntimeVersion": "jmk-node-agent://1", "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": arch,
            },
        }

    def register(self) -> None:
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": {
            "kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
            "node.jmk.io/agent": "true"}}, "spec": {}, "status": self.node_status()}
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self.heartbeat()

    def heartbeat(self) -> None:
        self.core.patch_node_status(self.node_name, {"status": self.node_status()}, _content_type=STRATEGIC)
        renew = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": renew}}
        try:
            self.leases.patch_namespaced_lease(self.node_name, "kube-node-lease", {"spec": lease["spec"]},
                                               _content_type=MERGE)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.leases.create_namespaced_lease("kube-node-lease", lease)

    def heartbeats(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception as exc:  # the API server may be restarting; keep trying
                log.warning("heartbeat failed: %s", exc)

    # -- pods ------------------------------------------------------------------------------------------

    def watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self.stopping.is_set():
            try:
                listed = json.loads(self.core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False).data)
                present = set()
                for pod in listed["items"]:
                    present.add(pod["metadata"]["uid"])
                    self.sync(pod)
                with self.lock:
                    gone = [w for uid, w in self.workers.items() if uid not in present]
                for worker in gone:
                    self.forget(worker.pod)
                version = listed["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    response = self.core.list_pod_for_all_namespaces(
                        field_selector=selector, watch=True, resource_version=version, timeout_seconds=30,
                        allow_watch_bookmarks=True, _preload_content=False)
                    expired = False
                    for line in iter_resp_lines(response):
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            expired = True
                            break
                        version = obj["metadata"].get("resourceVersion", version)
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self.sync(obj)
                        elif event["type"] == "DELETED":
                            self.forget(obj)
                    response.release_conn()
                    if expired:
                        break
            except Exception as exc:
                if not self.stopping.is_set():
                    log.warning("pod watch: %s; listing again", exc)
                    self.stopping.wait(1)

    def sync(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return  # finished before this agent started
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                self.by_name[(worker.namespace, worker.name)] = worker
                worker.update(pod)
                worker.thread.start()
                return
        worker.update(pod)

    def forget(self, pod: dict[str, Any]) -> None:
        """The pod object is gone: make sure its processes are too, and drop its files."""
        with self.lock:
            worker = self.workers.pop(pod["metadata"]["uid"], None)
            if worker is None:
                return
            if self.by_name.get((worker.namespace, worker.name)) is worker:
                del self.by_name[(worker.namespace, worker.name)]
        if worker.delete_grace is None:
            worker.delete_grace = 0
            worker.wake.set()
        worker.done.wait(60)
        shutil.rmtree(worker.dir, ignore_errors=True)

    def allocate_gpus(self, count: int) -> list[int]:
        with self.gpu_lock:
            if count > len(self.free_gpus):
                raise PodFailure("UnexpectedAdmissionError",
                                 f"requested {count} {GPU}, {len(self.free_gpus)} free on the node")
            taken, self.free_gpus = self.free_gpus[:count], self.free_gpus[count:]
            return taken

    def release_gpus(self, gpus: list[int]) -> None:
        with self.gpu_lock:
            self.free_gpus = sorted(set(self.free_gpus) | set(gpus))
        gpus.clear()

    # -- building a container's process ---------------------------------------------------------------

    def process_for(self, worker: PodWorker, spec: dict[str, Any]) -> tuple[list[str], dict[str, str], str]:
        """argv, environment and working directory of a container, with mount paths rewritten."""
        argv_template = list(spec.get("command") or []) + list(spec.get("args") or [])
        if not spec.get("command"):
            raise PodFailure("CreateContainerError",
                             f"container {spec['name']!r} has no command: the node agent ignores images, so the "
                             "command must be given")
        home = worker.dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        mounts = {k: v for k, v in worker.mounts.items() if not k.startswith("termination")}
        mounts[worker.mounts[f"termination-path:{spec['name']}"]] = worker.mounts[f"termination:{spec['name']}"]
        env: dict[str, str] = {
            # This environment's python comes first: it stands in for the image's.
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(home), "HOSTNAME": worker.name,
            "KUBERNETES_SERVICE_HOST": self.api_host, "KUBERNETES_SERVICE_PORT": self.api_port,
            "JMK_NODE_AGENT_POD": f"{worker.namespace}/{worker.name}",
        }
        if "JMK_TEST_CLUSTER_ID" in os.environ:
            env["JMK_TEST_CLUSTER_ID"] = os.environ["JMK_TEST_CLUSTER_ID"]
        if worker.gpus and spec in worker.spec["containers"]:
            wanted = int(((spec.get("resources") or {}).get("limits") or {}).get(GPU, 0))
            used = sum(int(((c.get("resources") or {}).get("limits") or {}).get(GPU, 0))
                       for c in worker.spec["containers"][: worker.spec["containers"].index(spec)])
            ids = ",".join(str(i) for i in worker.gpus[used : used + wanted])
            if wanted:
                env["NVIDIA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"] = ids
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for key, value in self.env_source(worker, source).items():
                env[prefix + key] = value
        for var in spec.get("env") or []:
            env[var["name"]] = (expand(var["value"], env) if "value" in var
                                else self.env_value(worker, spec, var.get("valueFrom") or {}))
        cwd = spec.get("workingDir") or ""
        rewrite = path_rewriter(mounts)
        if cwd:
            cwd = rewrite(cwd)
            if cwd == spec["workingDir"] and not Path(cwd).is_dir():
                local = worker.dir / "rootfs" / cwd.lstrip("/")
                local.mkdir(parents=True, exist_ok=True)
                mounts[cwd] = str(local)
                cwd = str(local)
        else:
            cwd = str(home)
        env = {k: rewrite(v) for k, v in env.items()}
        env["JMK_MOUNTS"] = json.dumps(mounts)
        argv = [rewrite(expand(a, env)) for a in argv_template]
        return argv, env, cwd

    def env_source(self, worker: PodWorker, source: dict[str, Any]) -> dict[str, str]:
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = self.read_config(worker.namespace, "configmap", ref["name"], ref.get("optional"))
        else:
            ref = source["secretRef"]
            data = self.read_config(worker.namespace, "secret", ref["name"], ref.get("optional"))
        return data

    def env_value(self, worker: PodWorker, spec: dict[str, Any], source: dict[str, Any]) -> str:
        meta = worker.pod["metadata"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fields = {"metadata.name": worker.name, "metadata.namespace": worker.namespace, "metadata.uid": worker.uid,
                      "spec.nodeName": self.node_name, "spec.serviceAccountName": worker.spec.get("serviceAccountName", ""),
                      "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1", "status.podIPs": "127.0.0.1"}
            if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
                return str((meta.get(match[1]) or {}).get(match[2], ""))
            if path in fields:
                return fields[path]
            raise PodFailure("CreateContainerConfigError", f"unsupported fieldRef {path!r}")
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            target = next((c for c in worker.spec["containers"] if c["name"] == ref.get("containerName", spec["name"])),
                          spec)
            kind, _, resource = ref["resource"].partition(".")
            value = ((target.get("resources") or {}).get(kind) or {}).get(resource)
            if value is None:
                value = {"cpu": str(os.cpu_count() or 1), "memory": str(psutil.virtual_memory().total)}.get(resource, "0")
            amount = parse_quantity(value) / parse_quantity(ref.get("divisor", "1"))
            return str(amount.to_integral_value(rounding=ROUND_UP))
        for key, kind in (("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")):
            if key in source:
                ref = source[key]
                data = self.read_config(worker.namespace, kind, ref["name"], ref.get("optional"))
                if ref["key"] not in data and not ref.get("optional"):
                    raise PodFailure("CreateContainerConfigError",
                                     f"couldn't find key {ref['key']} in {kind.title()} {worker.namespace}/{ref['name']}")
                return data.get(ref["key"], "")
        raise PodFailure("CreateContainerConfigError", f"unsupported valueFrom {sorted(source)}")

    def read_config(self, namespace: str, kind: str, name: str, optional: bool | None) -> dict[str, str]:
        """A ConfigMap's or Secret's data as text, for the environment."""
        data = self.read_data(namespace, kind, name, optional,
                              "CreateContainerConfigError", f'{kind} "{name}" not found')
        return {k: v.decode(errors="replace") for k, v in data.items()}

    def read_data(self, namespace: str, kind: str, name: str, optional: bool | None, reason: str = "ContainerCreating",
                  missing: str = "") -> dict[str, bytes]:
        """A ConfigMap's or Secret's data as bytes (volumes); a missing one fails with ``reason`` unless optional."""
        try:
            if kind == "configmap":
                obj = json.loads(self.core.read_namespaced_config_map(name, namespace, _preload_content=False).data)
                return {**{k: v.encode() for k, v in (obj.get("data") or {}).items()},
                        **{k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}}
            obj = json.loads(self.core.read_namespaced_secret(name, namespace, _preload_content=False).data)
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            if exc.status == 404:
                raise PodFailure(reason, missing or f'MountVolume.SetUp failed: {kind} "{name}" not found') from exc
            raise

    def materialize_volume(self, worker: PodWorker, volume: dict[str, Any]) -> Path:
        """Create a volume's files under the pod's directory (or the claim's, for a PVC)."""
        name = volume["name"]
        target = worker.dir / "volumes" / name
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            return target
        if "hostPath" in volume:
            return Path(volume["hostPath"]["path"])
        if "persistentVolumeClaim" in volume:
            claim = self.root / "claims" / worker.namespace / volume["persistentVolumeClaim"]["claimName"]
            claim.mkdir(parents=True, exist_ok=True)
            return claim
        files: dict[str, bytes]
        if "configMap" in volume or "secret" in volume:
            kind = "configmap" if "configMap" in volume else "secret"
            source = volume["configMap"] if kind == "configmap" else volume["secret"]
            ref_name = source.get("name") or source.get("secretName", "")
            data = self.read_data(worker.namespace, kind, ref_name, source.get("optional"))
            items = source.get("items")
            files = {item["path"]: data[item["key"]] for item in items if item["key"] in data} if items else data
            mode = int(source.get("defaultMode", 0o644))
        elif "downwardAPI" in volume:
            meta = worker.pod["metadata"]
            fields = {"metadata.name": worker.name, "metadata.namespace": worker.namespace, "metadata.uid": worker.uid,
                      "metadata.labels": "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get("labels") or {}).items())),
                      "metadata.annotations": "\n".join(
                          f'{k}="{v}"' for k, v in sorted((meta.get("annotations") or {}).items()))}
            files = {item["path"]: fields.get(item.get("fieldRef", {}).get("fieldPath", ""), "").encode()
                     for item in volume["downwardAPI"].get("items", [])}
            mode = int(volume["downwardAPI"].get("defaultMode", 0o644))
        else:
            raise PodFailure("CreateContainerConfigError",
                             f"volume {name!r}: the node agent supports emptyDir, configMap, secret, downwardAPI, "
                             f"hostPath and persistentVolumeClaim, not {sorted(set(volume) - {'name'})}")
        target.mkdir(parents=True, exist_ok=True)
        for relative, content in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)
        return target

    def run_probe(self, worker: PodWorker, container: Container, spec: dict[str, Any]) -> bool:
        """One probe attempt."""
        timeout = float(spec.get("timeoutSeconds", 1))
        ports = {p.get("name"): p["containerPort"] for p in container.spec.get("ports") or []}
        try:
            if "exec" in spec:
                argv, env, cwd = self.process_for(worker, {**container.spec, "command": spec["exec"]["command"],
                                                           "args": []})
                return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=timeout,
                                      check=False).returncode == 0
            if "httpGet" in spec:
                get = spec["httpGet"]
                port = ports.get(get["port"], get["port"])
                url = f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{port}{get.get('path', '/')}"
                context = ssl._create_unverified_context()
                with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
                    return 200 <= response.status < 400
            if "tcpSocket" in spec:
                port = ports.get(spec["tcpSocket"]["port"], spec["tcpSocket"]["port"])
                with socket.create_connection(("127.0.0.1", int(port)), timeout=timeout):
                    return True
        except (OSError, subprocess.TimeoutExpired, urllib.error.URLError, PodFailure):
            return False
        return False

    def event(self, pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Post an event about a pod, as the kubelet does (failures are not fatal)."""
        meta = pod["metadata"]
        stamp = now()
        body = {"metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
                "involvedObject": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                                   "uid": meta["uid"], "apiVersion": "v1"},
                "reason": reason, "message": message, "type": kind, "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
                "source": {"component": "kubelet", "host": self.node_name}}
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except Exception as exc:  # the namespace may be terminating
            log.debug("event %s for %s/%s not posted: %s", reason, meta["namespace"], meta["name"], exc)

    # -- logs ----------------------------------------------------------------------------------------

    def find_log(self, namespace: str, pod: str, container: str, previous: bool) -> tuple[Container, PodWorker]:
        with self.lock:
            worker = self.by_name.get((namespace, pod))
        if worker is None:
            raise LookupError(404, f'pod "{pod}" in namespace "{namespace}" is not on node {self.node_name}')
        runs = worker.history.get(container)
        names = [c["name"] for c in [*(worker.spec.get("initContainers") or []), *worker.spec["containers"]]]
        if container not in names:
            raise LookupError(400, f'container "{container}" is not valid for pod "{pod}"')
        started = [r for r in runs or [] if r.proc is not None]
        if previous:
            if len(started) < 2:
                raise LookupError(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            return started[-2], worker
        if not started or (runs and runs[-1].proc is None and runs[-1].exit_code is None):
            reason = runs[-1].waiting[0] if runs else "ContainerCreating"
            raise LookupError(400, f'container "{container}" in pod "{pod}" is waiting to start: {reason}')
        return started[-1], worker

    def stream_log(self, container: Container, worker: PodWorker, query: dict[str, str]) -> Iterator[bytes]:
        """The kubelet's log response: records filtered by the query, then (with follow) new ones as they come."""
        timestamps = query.get("timestamps") == "true"
        since = None
        if "sinceSeconds" in query:
            since = time.time() - int(query["sinceSeconds"])
        elif "sinceTime" in query:
            since = parse_time(query["sinceTime"])
        budget = int(query["limitBytes"]) if "limitBytes" in query else None
        records = read_records(container.log_path)
        if since is not None:
            records = [r for r in records if parse_time(r[0]) >= since]
        if "tailLines" in query:
            records = records[-int(query["tailLines"]) :] if int(query["tailLines"]) > 0 else []
        with container.log_path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            offset = handle.tell()
        for record in records:
            chunk = render(record, timestamps)
            if budget is not None:
                chunk, budget = chunk[:budget], budget - len(chunk)
            if chunk:
                yield chunk
            if budget is not None and budget <= 0:
                return
        if query.get("follow") != "true":
            return
        assert container.logs is not None
        pending = b""
        with container.log_path.open("rb") as handle:
            handle.seek(offset)
            while True:
                closed = container.logs.closed.is_set()
                data = handle.read()
                pending += data
                lines = pending.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    stamp, _stream, tag, content = line.split(b" ", 3)
                    chunk = render((stamp.decode(), tag, content), timestamps)
                    if budget is not None:
                        chunk, budget = chunk[:budget], budget - len(chunk)
                    yield chunk
                    if budget is not None and budget <= 0:
                        return
                if closed and not data:
                    return
                if not data:
                    container.logs.closed.wait(0.05)

    def serve(self, cert: Path, key: Path) -> http.server.ThreadingHTTPServer:
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                parts = url.path.strip("/").split("/")
                if url.path == "/healthz":
                    self.reply(200, b"ok")
                    return
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.reply(404, b"the node agent serves /containerLogs/{namespace}/{pod}/{container} and /healthz")
                    return
                try:
                    container, worker = agent.find_log(parts[1], parts[2], parts[3], query.get("previous") == "true")
                except LookupError as exc:
                    code, message = exc.args
                    self.reply(code, message.encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in agent.stream_log(container, worker, query):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.close_connection = True

            def reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True, name="log-server").start()
        return server

    # -- lifetime --------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every pod process (no API calls: the control plane may already be gone)."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop_all(2)


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are replaced, ``$$`` escapes, others stay."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return re.sub(r"\$\$|\$\(([A-Za-z_][-._A-Za-z0-9]*)\)", replace, value)


def path_rewriter(mounts: dict[str, str]) -> Any:
    """A function replacing each mount path (as a whole path component) by its local directory."""
    ordered = sorted((m for m in mounts if m.startswith("/") and m != "/"), key=len, reverse=True)
    if not ordered:
        return lambda s: s
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(m) for m in ordered) + r")(?=/|$|[^\w.-])")
    return lambda s: pattern.sub(lambda m: mounts[m[1]], s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default="jmk-node")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--gpus", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack into the log
    args.root.mkdir(parents=True, exist_ok=True)
    api = kubernetes.config.new_client_from_config(config_file=args.kubeconfig)
    agent = NodeAgent(api, args.node_name, args.port, args.root, args.gpus)
    server = agent.serve(args.cert, args.key)
    agent.register()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=agent.heartbeats, daemon=True, name="heartbeat").start()
    threading.Thread(target=agent.watch_pods, daemon=True, name="pod-watch").start()
    log.info("node %s ready: logs on https://127.0.0.1:%d, %d GPUs", args.node_name, args.port, args.gpus)
    stop.wait()
    log.info("stopping: ending every pod process")
    agent.shutdown()
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
