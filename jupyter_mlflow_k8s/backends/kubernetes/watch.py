"""Watching jobs: one list-then-watch per namespace of every job's Job and pods, and the log pump.

:class:`ClusterWatch` keeps every job's Job and pods in memory (a list, then a watch resumed from the
last resourceVersion, re-listed after 410 Gone, retried with back-off), so following many jobs costs
no request per job. :class:`LogPump` copies a job's pod log into its local log file, reconnecting
from the last timestamp written. Neither makes a request itself: the backend hands them its own
(listing, reading a pod's log), so that every request the backend makes stays in one place.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ...logchannel import FrameCollector
from ...models import JobRecord
from ...storage import get_storage
from .diagnosis import _container_done, _container_started, node_outage
from .manifests import COMPLETION_INDEX_ANNOTATION, JOB_ID_LABEL

if TYPE_CHECKING:
    from . import KubernetesBackend

CONTAINER = "train"
DELETED_PODS_KEPT = 500  # per namespace watch
# A pod log stream that broke (the node's kubelet or the API server restarting, the node NotReady) is asked for
# again after 0.2 s, doubling up to this: the log goes on within seconds of the node answering again.
LOG_RETRY_MAX_SECONDS = 2.0
# What a gang's worker puts before each line it prints (its global rank); results' frames come after it.
_RANK_PREFIX = re.compile(r"^\[rank \d+\] ")
# (kind, namespace, **options) -> the raw response of a list (or, with watch=True, a watch) of our Jobs or pods
Lister = Callable[..., Any]


def result_storage(record: JobRecord) -> Any:
    """The storage the job's results belong in (where ``result_uri`` points)."""
    suffix = f"jobs/{record.job_id}/result.json"
    return get_storage(str(record.result_uri)[: -len(suffix)].rstrip("/"))


class ClusterWatch:
    """Every job's Job and pods in one namespace, kept current by two watches (not a poll per job)."""

    _instances: ClassVar[dict[tuple[str, str], ClusterWatch]] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def for_namespace(cls, api: Any, namespace: str, lister: Lister) -> ClusterWatch:
        """The process's watch of ``namespace`` on ``api``'s cluster, listed once before it returns.

        ``lister(kind, namespace, **options)`` lists (or watches) our ``"jobs"`` or ``"pods"`` there.
        """
        key = (api.configuration.host, namespace)
        with cls._instances_lock:
            watch = cls._instances.get(key)
            if watch is None or not watch.alive:
                watch = cls(api, namespace, lister)
                cls._instances[key] = watch
                watch.start()
        watch.wait_synced(10)
        return watch

    @classmethod
    def stop_all(cls) -> None:
        """Stop every watch of this process (a kernel shutting down, a test ending)."""
        with cls._instances_lock:
            for watch in cls._instances.values():
                watch.stop()
            cls._instances.clear()

    def __init__(self, api: Any, namespace: str, lister: Lister) -> None:
        self.api, self.namespace, self.lister = api, namespace, lister
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pod_objects: dict[str, dict[str, Any]] = {}
        # The last state of pods deleted while we watched (how a preempted or evicted pod ended), newest last.
        self.deleted_pods: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.requests = 0  # API requests made, for benchmarks
        self.failing_since: float | None = None  # when the API stopped answering (None: it answers)
        self.last_error = ""
        self._synced = {"jobs": threading.Event(), "pods": threading.Event()}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    @property
    def synced(self) -> bool:
        """Whether both lists have come back at least once."""
        return all(e.is_set() for e in self._synced.values())

    @property
    def alive(self) -> bool:
        """Whether the watch threads still run."""
        return not self._stop.is_set() and all(t.is_alive() for t in self._threads)

    def wait_synced(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the first lists."""
        deadline = time.monotonic() + timeout
        for event in self._synced.values():
            event.wait(max(0.0, deadline - time.monotonic()))

    def start(self) -> None:
        """Start watching Jobs and pods."""
        for kind in ("jobs", "pods"):
            thread = threading.Thread(target=self._run, args=(kind,), daemon=True, name=f"jmk-k8s-watch-{kind}")
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Stop after the current watch request ends."""
        self._stop.set()

    def job(self, name: str) -> dict[str, Any] | None:
        """The Job named ``name`` as last seen (None: not there)."""
        with self.lock:
            return self.jobs.get(name)

    def pods(self, job: str, with_deleted: bool = False) -> list[dict[str, Any]]:
        """The pods of Job ``job`` as last seen; ``with_deleted``: also those deleted since (their last state)."""
        with self.lock:
            found = list(self.pod_objects.values()) + (list(self.deleted_pods.values()) if with_deleted else [])
            return [p for p in found if p["metadata"].get("labels", {}).get("job-name") == job]

    def job_pods(self, job_id: str, with_deleted: bool = False) -> list[dict[str, Any]]:
        """Every pod of job ``job_id`` (label ``jmk.io/job-id``): all ranks of a gang, whatever its Jobs."""
        with self.lock:
            found = list(self.pod_objects.values()) + (list(self.deleted_pods.values()) if with_deleted else [])
            return [p for p in found if p["metadata"].get("labels", {}).get(JOB_ID_LABEL) == job_id]

    def _list(self, kind: str, **kwargs: Any) -> Any:
        self.requests += 1
        return self.lister(kind, self.namespace, **kwargs)

    def _store(self, kind: str) -> dict[str, dict[str, Any]]:
        return self.jobs if kind == "jobs" else self.pod_objects

    def _run(self, kind: str) -> None:
        """List, then watch from the list's resourceVersion; relist after 410 Gone; back off on errors."""
        from kubernetes.watch.watch import iter_resp_lines

        backoff = 0.2
        while not self._stop.is_set():
            try:
                listed = json.loads(self._list(kind).data)
                with self.lock:
                    self._store(kind).clear()
                    for obj in listed["items"]:
                        self._store(kind)[obj["metadata"]["name"]] = obj
                self._synced[kind].set()
                self.failing_since, self.last_error = None, ""
                version = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    response = self._list(kind, watch=True, resource_version=version, timeout_seconds=60,
                                          allow_watch_bookmarks=True)
                    gone = False
                    for line in iter_resp_lines(response):
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":  # 410 Gone (too old a version), or another error
                            gone = True
                            break
                        version = obj["metadata"].get("resourceVersion", version)
                        if event["type"] == "BOOKMARK":
                            continue
                        with self.lock:
                            if event["type"] == "DELETED":
                                self._store(kind).pop(obj["metadata"]["name"], None)
                                if kind == "pods":
                                    self.deleted_pods[obj["metadata"]["name"]] = obj
                                    while len(self.deleted_pods) > DELETED_PODS_KEPT:
                                        self.deleted_pods.popitem(last=False)
                            else:
                                self._store(kind)[obj["metadata"]["name"]] = obj
                    response.release_conn()
                    backoff = 0.2
                    if gone:
                        break
            except Exception as exc:
                self.failing_since = self.failing_since or time.time()
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 10.0)


def _stamp_key(stamp: str) -> tuple[str, int]:
    """An RFC 3339 timestamp of a log line as a key that sorts as the times do.

    The kubelet trims trailing zeros from the nanoseconds, so as strings ``...:05.1Z`` sorts after
    ``...:05.12Z``, though it is earlier.
    """
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    digits = "".join(c for c in fraction if c.isdigit())
    return whole, int(digits[:9].ljust(9, "0") or 0)


class LogPump:
    """Copies a job's pod logs into its local log file, reconnecting without losing or doubling lines.

    The log stream is served by the pod's node (its kubelet): it breaks when the kubelet or containerd
    restarts or the node goes NotReady, while the container runs on. The pump then asks again, quietly,
    with a bounded back-off, from the last line written; a node NotReady is said once in the log, and
    that the log goes on once lines come again.

    A distributed job's pods all run at once, so the pump follows each in a thread of its own (a
    pod's log would otherwise wait for the pods before it to end), writing whole lines under one lock:
    lines of different ranks interleave, never their characters. Each line already says its rank
    (``[rank 1] ...``), so no pod headers are written for a gang.

    A batch prediction's Indexed Job (its spec's ``batch_shards``) runs its shards' pods at once too,
    each retried in a new pod: the pump follows each as it does a gang's, writes a header for each
    pod (its name, its completion index and the shard that index runs) and puts ``[shard S]`` (or,
    where the cluster gave no index, ``[pod NAME]``) before each of its lines.
    """

    def __init__(self, backend: KubernetesBackend, record: JobRecord) -> None:
        self.backend, self.record = backend, record
        self.path = Path(str(record.log_path))
        self.state_path = self.path.with_suffix(".pump.json")
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one line, or the position file, written at a time
        self._responses: set[Any] = set()
        self.gang = bool(record.backend_ref.get("form"))
        self.shards = record.spec.batch_shards  # a batch Indexed Job: every pod followed at once, like a gang's
        self._followers: dict[str, threading.Thread] = {}  # gang pod name -> the thread following its log
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"jmk-k8s-log-{record.job_id}")
        try:
            self.position: dict[str, str] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            self.position = {}  # pod name -> last timestamp written
        self.frames = FrameCollector(result_storage(record), self.path.parent / "frames") if record.result_uri else None
        self.outage = ""  # the node outage last told in the log (until lines come again)
        self.last_error = ""  # why the stream last broke, for debugging (never shown: it is retried)

    def stop(self) -> None:
        """Stop following (closing a stream in progress)."""
        self._stop.set()
        for response in list(self._responses):
            with contextlib.suppress(Exception):
                response.close()
        self.thread.join(timeout=5)
        for follower in list(self._followers.values()):
            follower.join(timeout=5)

    def finish(self) -> None:
        """Stop following and fetch whatever the pods still have."""
        self.stop()
        self.catch_up()

    def catch_up(self) -> None:
        """Append every pod's log lines that are not in the file yet (no follow)."""
        for pod in self._pods():
            with contextlib.suppress(Exception):
                self._copy(pod, follow=False)

    def _pods(self) -> list[dict[str, Any]]:
        watch = self.backend.watch_of(self.record)
        pods = watch.job_pods(self.record.job_id) if self.gang else watch.pods(self.record.backend_ref["name"])
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))

    def _run(self) -> None:
        if self.gang or self.shards:
            self._run_gang()
            return
        backoff = 0.2
        while not self._stop.is_set():
            started = [p for p in self._pods() if _container_started(p)]
            live = [p for p in started if not _container_done(p) or p["metadata"]["name"] not in self.position]
            if not live:
                self._stop.wait(0.1)
                continue
            self._tell_outage(live[0])
            try:
                written = self._copy(live[0], follow=True)
            except Exception as exc:  # the node or the API server went away: ask again, quietly
                self.last_error, written = f"{type(exc).__name__}: {exc}"[:300], 0
            if written:
                backoff = 0.2
                self._stop.wait(0.05)  # the stream ended: the pod finished, or the connection dropped
                continue
            if self._stop.wait(backoff):  # nothing came (the node does not answer, or the pod just ended)
                return
            backoff = min(backoff * 2, LOG_RETRY_MAX_SECONDS)

    def _run_gang(self) -> None:
        """Follow every pod of a gang at once: a thread per pod, started when its container starts."""
        while not self._stop.is_set():
            for pod in self._pods():
                name = pod["metadata"]["name"]
                if name in self._followers or not _container_started(pod):
                    continue
                follower = threading.Thread(target=self._follow, args=(name,), daemon=True, name=f"jmk-k8s-log-{name}")
                self._followers[name] = follower
                follower.start()
            self._stop.wait(0.1)

    def _follow(self, name: str) -> None:
        """Follow one gang pod's log until its container has ended and all its lines are in (or the pod is gone)."""
        backoff = 0.2
        while not self._stop.is_set():
            pod = next((p for p in self._pods() if p["metadata"]["name"] == name), None)
            if pod is None:
                return
            done = _container_done(pod)
            self._tell_outage(pod)
            try:
                written = self._copy(pod, follow=not done)
            except Exception as exc:  # the node or the API server went away: ask again, quietly
                self.last_error, written = f"{type(exc).__name__}: {exc}"[:300], 0
            else:
                if done:
                    return
            if written:
                backoff = 0.2
                self._stop.wait(0.05)
                continue
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, LOG_RETRY_MAX_SECONDS)

    def _batch_pod(self, pod: dict[str, Any]) -> tuple[str, bytes]:
        """A batch Indexed Job's pod: its header (name, completion index, shard) and the prefix of its lines."""
        meta = pod["metadata"]
        index = (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION) or (meta.get("labels") or {}).get(
            COMPLETION_INDEX_ANNOTATION)
        if index is not None and index.isdigit() and int(index) < len(self.shards):
            shard = self.shards[int(index)]
            return f"pod {meta['name']}: completion index {index}, shard {shard}", f"[shard {shard}] ".encode()
        return (f"pod {meta['name']}: no completion index (the cluster dropped the Job's completionMode)",
                f"[pod {meta['name']}] ".encode())

    def _tell_outage(self, pod: dict[str, Any]) -> None:
        """Say once in the log that the pod's node is NotReady (the stream stays broken until it is back)."""
        outage = node_outage(pod)
        if outage and not self.outage:
            self.outage = outage
            with self._lock, self.path.open("ab") as out:
                out.write(f"[jmk] {outage}\n".encode())

    def _copy(self, pod: dict[str, Any], follow: bool) -> int:
        """Stream one pod's log from the last timestamp written; write each new line once; return how many."""
        from kubernetes.watch.watch import iter_resp_lines

        name = pod["metadata"]["name"]
        last = self.position.get(name, "")
        kwargs: dict[str, Any] = {"container": CONTAINER, "follow": follow, "timestamps": True}
        if last:  # from the start of the last line's second (the API's sinceTime is in seconds); skip what was written
            kwargs["since_time"] = last[:19] + "Z"
        watch = self.backend.watch_of(self.record)
        watch.requests += 1
        response = self.backend.read_pod_log(name, self.record.backend_ref["namespace"], **kwargs)
        self._responses.add(response)
        header = not self.gang and name not in self.position and (bool(self.shards) or len(self._pods()) > 1)
        prefix = b""
        written = 0
        try:
            with self.path.open("ab") as out:
                if self.shards:
                    title, prefix = self._batch_pod(pod)
                    if header:
                        with self._lock:
                            out.write(f"[jmk] {title}\n".encode())
                            out.flush()
                elif header:
                    out.write(f"[jmk] pod {name}\n".encode())
                self.position.setdefault(name, "")
                for line in iter_resp_lines(response):
                    stamp, _, text = line.partition(" ")
                    if last and _stamp_key(stamp) <= _stamp_key(last):
                        continue  # already written before a reconnect
                    with self._lock:
                        if self.outage:
                            node = pod.get("spec", {}).get("nodeName", "")
                            out.write(f"[jmk] node {node} answers again: the log goes on\n".encode())
                            self.outage = ""
                        if self.frames is None or not self.frames.feed(_RANK_PREFIX.sub("", text, count=1)):
                            out.write(prefix + text.encode() + b"\n")
                        out.flush()
                    last = self.position[name] = stamp
                    written += 1
            return written
        finally:
            self._responses.discard(response)
            response.release_conn()
            with self._lock, contextlib.suppress(OSError):
                self.state_path.write_text(json.dumps(dict(self.position)))
