"""Kubernetes jobs on the test cluster: one job's latency, and API requests while many run.

Usage::

    python benchmarks/k8s_jobs.py [--repeat 5] [--jobs 50] [--sleep 20] [--keep]

It starts its own test cluster (``tests/cluster``: etcd, kube-apiserver, controller manager and
scheduler 1.20, and the real node: kubelet, containerd and runc running the runner image built from
docker/runner/Dockerfile; the node agent where no real node can run) in a temporary directory, and stops
it at the end. The ``kubernetes`` backend is configured as in ``tests/test_k8s_backend.py``: no shared
filesystem (the payload in a Secret, results through the pod log) and an ``mlflow server`` that the pods
reach over the pod network. Only one real node runs per machine: stop any other test cluster first.

1. **One job, ``--repeat`` times** (after one warm-up round, interleaved), the cell
   ``import time; print('first', flush=True); time.sleep(1)``:

   - ours: ``JobService.submit`` of a ``kubernetes`` job; "Running" is the first time
     ``JobService.get`` (polled every 20 ms in a thread) says ``running``; "first line" is when
     ``JobService.follow`` yields the line (the watch, the pod log streamed into the job's log);
   - the local backend: the same through ``JobService`` with ``backend="local"``;
   - bare Pod: the official client creates a Pod of the same image running ``python -c CELL`` directly (no Job, no
     Secret, no payload, no MLflow), watches it until its container runs, then streams its log with
     ``follow=True`` until the line: the fastest a client can get a line out of this cluster;
   - bare Job: the same with a batch/v1 Job (adds the Job controller's pod creation).

2. **``--jobs`` jobs at once** whose cell sleeps ``--sleep`` s, submitted one after the other,
   followed until all have ended by a loop that calls ``JobService.get`` on every job once a second
   (what a UI does). Requests are counted at the ``ApiClient`` (every HTTP request the backend
   makes) and through ``ClusterWatch.requests`` (its lists and watches, plus pod log reads).
   Round A runs ours alone (a clean wall-clock). Round B does the same with the peer running at
   the same time, in its own process, on the same Jobs: once a second, for every Job it knows and
   has not seen end, ``read_namespaced_job_status`` + ``list_namespaced_pod(label_selector=
   "job-name=...")``, and one ``read_namespaced_pod_log`` when it sees the Job end (ours also reads
   each log once, at the end); it stops when ours has seen every job end.

It prints tables (metric | ours | peer | ratio); it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine import code_state, cpu_model, memory_total, package_versions, table
from machine import os_name as machine_os_name

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
CELL = "import time; print('first', flush=True); time.sleep(1)"
MARKER = b"first"
GET_POLL_S = 0.02
JOB_TIMEOUT_S = 120.0


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- counting requests


class RequestCounter:
    """Counts every HTTP request an ``ApiClient`` makes (its ``call_api``), by kind."""

    def __init__(self, api: Any) -> None:
        self.kinds: Counter[str] = Counter()
        self._lock = threading.Lock()
        original = api.call_api

        def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.kinds[classify(method, url)] += 1
            return original(method, url, *args, **kwargs)

        api.call_api = counted

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.kinds.values())

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.kinds)


def classify(method: str, url: str) -> str:
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if parts and parts[-1] == "log":
        return "pod log"
    if parts and parts[-1] == "status":
        return f"{method} {parts[-3]}/status" if len(parts) >= 3 else f"{method} status"
    watch = "watch=true" in query.lower()
    if len(parts) >= 2 and parts[-2] == "namespaces":
        return f"{method} namespaces/name"
    # .../namespaces/NS/KIND or .../namespaces/NS/KIND/NAME
    kind = next((parts[i + 2] for i in range(len(parts) - 2) if parts[i] == "namespaces"), parts[-1] if parts else "")
    named = len(parts) >= 2 and parts[-2] == kind
    if method == "GET":
        return f"WATCH {kind}" if watch else (f"GET {kind}/name" if named else f"LIST {kind}")
    return f"{method} {kind}"


# ----------------------------------------------------------------------------- statistics, machine


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def minimum(values: Sequence[float]) -> float | None:
    return min(values) if values else None


def secs(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None or peer == 0:
        return "-"
    return f"{ours / peer:.2f}"




def machine_description() -> list[tuple[str, str]]:
    cpu, memory = cpu_model(), memory_total()
    os_name = machine_os_name()
    versions = package_versions(("jupyter_mlflow_k8s", "kubernetes", "mlflow"))
    tree = code_state(ROOT)
    return [
        ("code", tree),
        ("CPU", f"{cpu}, {os.cpu_count()} logical cores"),
        ("memory", memory),
        ("OS", os_name),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("packages", versions),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


# ----------------------------------------------------------------------------- the environment


@dataclass
class Bench:
    """The cluster, an API client of our own (for the peers) and the backend's configuration."""

    root: Path
    cluster: Any
    api: Any  # ApiClient for the peers and housekeeping (not the backend's)
    image: str  # the image pods run (the runner image on the real node)
    services: list[Any] = field(default_factory=list)

    def namespace(self, stem: str) -> str:
        import kubernetes

        name = f"{stem}-{uuid.uuid4().hex[:6]}"
        kubernetes.client.CoreV1Api(self.api).create_namespace({"metadata": {"name": name}})
        return name

    def service(self, namespace: str) -> Any:
        """A JobService whose kubernetes backend uses ``namespace`` (and a fresh ApiClient)."""
        from traitlets.config import Config

        from jupyter_mlflow_k8s.config import load_settings
        from jupyter_mlflow_k8s.jobs import JobService

        config = Config()
        config.KubernetesBackend.kubeconfig = str(self.cluster.kubeconfig)
        config.KubernetesBackend.namespace = namespace
        config.KubernetesBackend.image = self.image
        config.KubernetesBackend.pods_share_filesystem = False
        service = JobService(load_settings(state_dir=str(self.root / "state")), backend_config=config)
        self.services.append(service)
        return service


@contextlib.contextmanager
def environment(keep: bool) -> Iterator[Bench]:
    sys.path.insert(0, str(TESTS))
    from cluster.control import Cluster

    root = Path(tempfile.mkdtemp(prefix="jmk-bench-k8s-"))
    saved = {k: os.environ.get(k) for k in ("JMK_STATE_DIR", "MLFLOW_TRACKING_URI", "JMK_STORAGE_URL",
                                            "JMK_BACKEND", "KUBECONFIG", "JMK_K8S_NAMESPACE")}
    for key in saved:
        os.environ.pop(key, None)
    os.environ["JMK_STATE_DIR"] = str(root / "state")
    cluster = Cluster(root / "cluster")
    (root / "mlflow").mkdir()
    bench: Bench | None = None
    tracking = None
    try:
        progress(f"starting the test cluster in {root / 'cluster'}")
        started = time.perf_counter()
        cluster.start()
        progress(f"cluster ready in {time.perf_counter() - started:.1f} s "
                 f"({'real node' if cluster.real_node else 'node agent: ' + cluster.node_fallback_reason})")
        import kubernetes
        from cluster.node import NODE_IP
        from servers import _mlflow_env, start_mlflow

        host = NODE_IP if cluster.real_node else "127.0.0.1"
        tracking, os.environ["MLFLOW_TRACKING_URI"] = start_mlflow(
            root / "mlflow", ["--serve-artifacts", "--artifacts-destination", str(root / "mlflow" / "artifacts")],
            _mlflow_env(), host=host)
        api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        image = cluster.images["runner"] if cluster.real_node else "python:3.11-slim"
        bench = Bench(root, cluster, api, image)
        yield bench
    finally:
        if bench is not None:
            stop_watches()
        if tracking is not None:
            tracking.stop()
        progress("stopping the cluster")
        cluster.stop()
        left = cluster.leftovers()
        if left:
            progress(f"LEFTOVERS after stop: {left}; killing processes")
            cluster.kill_leftovers()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def stop_watches() -> None:
    from jupyter_mlflow_k8s.backends.kubernetes import ClusterWatch

    with ClusterWatch._instances_lock:
        for watch in ClusterWatch._instances.values():
            watch.stop()
        ClusterWatch._instances.clear()


# ----------------------------------------------------------------------------- 1. one job


@dataclass
class Sample:
    submit: float | None = None  # the submit call (or create) returned
    running: float | None = None
    first: float | None = None
    end: float | None = None
    state: str = ""


def run_service_job(service: Any, backend: str) -> Sample:
    """Submit CELL through JobService; Running through get() in a thread, the line through follow()."""
    from jupyter_mlflow_k8s.models import JobRecord, JobSpec, JobState

    sample = Sample()
    spec = JobSpec(code=CELL, backend=backend)
    start = time.perf_counter()
    record = service.submit(spec, {})
    sample.submit = time.perf_counter() - start
    done = threading.Event()

    def poll_running() -> None:
        while not done.is_set():
            state = service.get(record.job_id).state
            if state is JobState.RUNNING or state.terminal:
                sample.running = time.perf_counter() - start
                return
            time.sleep(GET_POLL_S)

    poller = threading.Thread(target=poll_running, daemon=True)
    poller.start()
    seen = b""
    try:
        for item in service.follow(record.job_id):
            if isinstance(item, JobRecord):
                sample.end = time.perf_counter() - start
                sample.state = item.state.value
                break
            if sample.first is None and item:
                seen += item
                if MARKER in seen:
                    sample.first = time.perf_counter() - start
            if time.perf_counter() - start > JOB_TIMEOUT_S:
                service.cancel(record.job_id)
                sample.state = "timeout"
                break
    finally:
        done.set()
        poller.join(timeout=5)
    if backend == "local":  # let the supervisor exit before the next measurement
        import psutil

        pid = service.store.load(record.job_id).pid
        if pid:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=15)
    return sample


def pod_manifest(name: str, image: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"bench": "bare"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "command": ["python", "-c", CELL]}],
        },
    }


def run_bare(api: Any, namespace: str, as_job: bool, image: str) -> Sample:
    """Create a Pod (or a Job) running ``python -c CELL``; watch until it runs; follow its log."""
    import kubernetes
    from kubernetes.watch.watch import iter_resp_lines

    core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
    name = f"bare-{'job' if as_job else 'pod'}-{uuid.uuid4().hex[:6]}"
    sample = Sample()
    start = time.perf_counter()
    if as_job:
        template = pod_manifest(name, image)
        template["metadata"] = {"labels": {"bench": "bare"}}
        job = {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": template}}
        batch.create_namespaced_job(namespace, job, _preload_content=False).release_conn()
        selector: dict[str, str] = {"label_selector": f"job-name={name}"}
    else:
        core.create_namespaced_pod(namespace, pod_manifest(name, image), _preload_content=False).release_conn()
        selector = {"field_selector": f"metadata.name={name}"}
    sample.submit = time.perf_counter() - start
    pod_name = None
    response = core.list_namespaced_pod(namespace, watch=True, timeout_seconds=60, _preload_content=False, **selector)
    try:
        for line in iter_resp_lines(response):
            obj = json.loads(line)["object"]
            statuses = obj.get("status", {}).get("containerStatuses") or []
            state = statuses[0].get("state", {}) if statuses else {}
            if "running" in state or "terminated" in state:
                sample.running = time.perf_counter() - start
                pod_name = obj["metadata"]["name"]
                break
    finally:
        response.close()
        response.release_conn()
    if pod_name is None:
        sample.state = "timeout"
        return sample
    log = core.read_namespaced_pod_log(pod_name, namespace, follow=True, _preload_content=False)
    try:
        for line in iter_resp_lines(log):
            if sample.first is None and MARKER.decode() in line:
                sample.first = time.perf_counter() - start
        sample.end = time.perf_counter() - start  # the stream ends when the process has exited
        sample.state = "ended"
    finally:
        log.release_conn()
    with contextlib.suppress(kubernetes.client.ApiException):
        if as_job:
            batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        else:
            core.delete_namespaced_pod(name, namespace)
    return sample


def latency(bench: Bench, repeat: int) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    namespace = bench.namespace("bench-latency")
    service = bench.service(namespace)
    backend = service.backend("kubernetes")
    counter = RequestCounter(backend.api)
    runs: dict[str, Callable[[], Sample]] = {
        "ours": lambda: run_service_job(service, "kubernetes"),
        "local": lambda: run_service_job(service, "local"),
        "bare pod": lambda: run_bare(bench.api, namespace, as_job=False, image=bench.image),
        "bare job": lambda: run_bare(bench.api, namespace, as_job=True, image=bench.image),
    }
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    progress("latency: warm-up round (first kubernetes job starts the watch; MLflow import, SQLite store)")
    cold = {name: run() for name, run in runs.items()}
    for round_ in range(repeat):
        progress(f"latency: round {round_ + 1}/{repeat}")
        for name, run in runs.items():
            sample = run()
            if sample.state not in ("succeeded", "ended"):
                progress(f"  {name}: ended as {sample.state!r}")
            samples[name].append(sample)
            time.sleep(0.3)
    extra = {"cold": cold, "requests per ours job": counter.snapshot(), "jobs": repeat + 1}
    return samples, extra


def latency_tables(samples: dict[str, list[Sample]], extra: dict[str, Any]) -> str:
    def stat(name: str, attribute: str, pick: Callable[[Sequence[float]], float | None]) -> float | None:
        return pick([v for s in samples[name] if (v := getattr(s, attribute)) is not None])

    out = []
    peers = ("bare pod", "bare job", "local")
    rows = []
    for label, attribute in (("submit call returns", "submit"), ("submit -> Running", "running"),
                              ("submit -> first log line", "first"), ("submit -> job ended", "end")):
        for kind, pick in (("median", median), ("min", minimum)):
            ours = stat("ours", attribute, pick)
            row = [f"{label} ({kind}, s)", secs(ours)]
            for peer in peers:
                theirs = stat(peer, attribute, pick)
                row += [secs(theirs), ratio(ours, theirs)]
            rows.append(row)
    header = ["metric", "ours"]
    for peer in peers:
        header += [peer, "ratio"]
    out.append(table(f"\nOne job, {len(samples['ours'])} runs (ratio = ours / the peer on its left)", header, rows))
    cold = extra["cold"]
    rows = [[name, secs(s.submit), secs(s.running), secs(s.first), secs(s.end)] for name, s in cold.items()]
    out.append(table("\nWarm-up round (not in the tables above), s from submit",
                     ["what", "submit returns", "Running", "first line", "ended"], rows))
    per_job = extra["requests per ours job"]
    rows = [[kind, f"{count / extra['jobs']:.1f}"] for kind, count in sorted(per_job.items())]
    rows.append(["total", f"{sum(per_job.values()) / extra['jobs']:.1f}"])
    out.append(table(f"\nOurs: HTTP requests per followed job (ApiClient, {extra['jobs']} jobs, watch included)",
                     ["request", "per job"], rows))
    return "\n".join(out)


# ----------------------------------------------------------------------------- 2. many jobs


def sleep_cell(seconds: float) -> str:
    return f"import time\nprint('start', flush=True)\ntime.sleep({seconds})\nprint('done', flush=True)"


@dataclass
class ManyResult:
    jobs: int
    submit_s: float = 0.0  # submitting all of them
    submit_calls: list[float] = field(default_factory=list)
    all_running_s: float | None = None
    to_running_s: list[float] = field(default_factory=list)  # per job: submit -> seen Running
    start_wall: float = 0.0  # time.time() at the first submit, for the peer's times
    wall_s: float = 0.0  # first submit -> every job seen ended (1 Hz)
    per_job_s: list[float] = field(default_factory=list)  # submit -> seen ended
    watch_requests: int = 0  # ClusterWatch.requests (lists, watches, log reads)
    http: Counter[str] = field(default_factory=Counter)  # every request of the backend's ApiClient
    states: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    ticks: int = 0
    late_ticks: int = 0
    get_calls: int = 0
    peer: dict[str, Any] | None = None


def start_peer(bench: Bench, namespace: str) -> subprocess.Popen[str]:
    peer = subprocess.Popen(
        [sys.executable, __file__, "--peer", str(bench.cluster.kubeconfig), namespace],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert peer.stdout is not None
    if peer.stdout.readline().strip() != "ready":
        peer.kill()
        raise RuntimeError("the peer did not start")
    return peer


def many_jobs(bench: Bench, jobs: int, sleep_s: float, with_peer: bool) -> ManyResult:
    from jupyter_mlflow_k8s.models import JobSpec, JobState

    namespace = bench.namespace("bench-many")
    service = bench.service(namespace)
    backend = service.backend("kubernetes")
    counter = RequestCounter(backend.api)
    peer = start_peer(bench, namespace) if with_peer else None
    http0 = counter.snapshot()
    watch = backend.watch()  # this namespace's watch: its first lists and watches are counted
    result = ManyResult(jobs)
    ids: list[str] = []
    submitted_at: dict[str, float] = {}
    running: dict[str, float] = {}
    ended: dict[str, float] = {}
    all_submitted = threading.Event()
    lock = threading.Lock()
    failure: list[BaseException] = []

    start = time.perf_counter()
    result.start_wall = time.time()

    def ui_loop() -> None:
        """Every second: JobService.get on every job not yet ended."""
        next_tick = time.perf_counter()
        try:
            while True:
                with lock:
                    pending = [j for j in ids if j not in ended]
                    complete = all_submitted.is_set() and len(ended) == len(ids)
                if complete:
                    return
                for job_id in pending:
                    record = service.get(job_id)
                    result.get_calls += 1
                    now = time.perf_counter() - start
                    if record.state is JobState.RUNNING or record.state.terminal:
                        running.setdefault(job_id, now)
                    if record.state.terminal:
                        with lock:
                            ended[job_id] = now
                        result.states[record.state.value] += 1
                        if record.state is not JobState.SUCCEEDED:
                            result.problems.append(f"{job_id}: {record.state.value}: {record.message[:200]}")
                result.ticks += 1
                next_tick += 1.0
                delay = next_tick - time.perf_counter()
                if delay < 0:
                    result.late_ticks += 1
                    next_tick = time.perf_counter()
                else:
                    time.sleep(delay)
                if time.perf_counter() - start > sleep_s + 240:
                    raise TimeoutError(f"{len(ids) - len(ended)} jobs not ended after {sleep_s + 240:.0f} s")
        except BaseException as exc:
            failure.append(exc)

    loop = threading.Thread(target=ui_loop, daemon=True, name="bench-ui-loop")
    loop.start()
    try:
        for _ in range(jobs):
            call = time.perf_counter()
            record = service.submit(JobSpec(code=sleep_cell(sleep_s), backend="kubernetes"), {})
            result.submit_calls.append(time.perf_counter() - call)
            with lock:
                ids.append(record.job_id)
                submitted_at[record.job_id] = call - start
            if peer is not None and peer.stdin is not None:
                peer.stdin.write(f"job {record.backend_ref['name']}\n")
                peer.stdin.flush()
        result.submit_s = time.perf_counter() - start
        all_submitted.set()
        loop.join()
    finally:
        all_submitted.set()
        if peer is not None:
            result.peer = stop_peer(peer)
    if failure:
        raise failure[0]
    result.wall_s = max(ended.values())
    result.all_running_s = max(running.values()) if len(running) == jobs else None
    result.to_running_s = [running[j] - submitted_at[j] for j in ids if j in running]
    result.per_job_s = [ended[j] - submitted_at[j] for j in ids]
    result.watch_requests = watch.requests
    result.http = counter.snapshot() - http0
    # Every job's log should hold its two lines, once each.
    for job_id in ids:
        record = service.store.load(job_id)
        text = Path(str(record.log_path)).read_text(errors="replace") if record.log_path else ""
        lines = [line for line in text.splitlines() if line in ("start", "done")]
        if lines != ["start", "done"]:
            result.problems.append(f"{job_id}: log lines {lines!r} (expected ['start', 'done'])")
    return result


def stop_peer(peer: subprocess.Popen[str]) -> dict[str, Any] | None:
    try:
        out, _ = peer.communicate("stop\n", timeout=60)
    except subprocess.TimeoutExpired:
        peer.kill()
        peer.communicate()
        return None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def many_tables(alone: ManyResult | None, both: ManyResult, sleep_s: float) -> str:
    out = []
    rounds = [res for res in (alone, both) if res is not None]

    def submission(res: ManyResult) -> int:
        return sum(v for k, v in res.http.items() if not k.startswith(("WATCH", "LIST", "pod log")))

    lines: list[tuple[str, Callable[[ManyResult], str]]] = [
        (f"submit {both.jobs} jobs, one after another (s)", lambda r: secs(r.submit_s)),
        ("submit call, median / max (s)", lambda r: f"{secs(median(r.submit_calls))} / {secs(max(r.submit_calls))}"),
        ("first submit -> all seen Running (s)", lambda r: secs(r.all_running_s)),
        ("per job, submit -> seen Running, median / max (s)",
         lambda r: f"{secs(median(r.to_running_s))} / {secs(max(r.to_running_s, default=None))}"),
        ("first submit -> all seen ended (s)", lambda r: secs(r.wall_s)),
        (f"per job, submit -> seen ended, median / max (s; the cell sleeps {sleep_s:g})",
         lambda r: f"{secs(median(r.per_job_s))} / {secs(max(r.per_job_s))}"),
        ("HTTP requests of ours, all (ApiClient)", lambda r: str(sum(r.http.values()))),
        ("  of which submission (check + launch)", lambda r: f"{submission(r)} ({submission(r) / r.jobs:.0f}/job)"),
        ("  of which following (lists, watches, logs)", lambda r: str(sum(r.http.values()) - submission(r))),
        ("UI loop: ticks (late) / get() calls", lambda r: f"{r.ticks} ({r.late_ticks}) / {r.get_calls}"),
        ("job states", lambda r: " ".join(f"{k}={v}" for k, v in sorted(r.states.items()))),
    ]
    names = {id(alone): "A: ours alone", id(both): "B: ours + peer"}
    rows = [[label, *(render(r) for r in rounds)] for label, render in lines]
    out.append(table(f"\n{both.jobs} jobs at once, followed by JobService.get on each once a second (times as seen "
                     "at 1 Hz)", ["metric", *(names[id(r)] for r in rounds)], rows))

    peer = both.peer or {}

    def since(stamp: float | None) -> float | None:
        return None if stamp is None else stamp - both.start_wall

    ours_follow = both.watch_requests
    peer_status = peer.get("job_status", 0) + peer.get("pod_list", 0)
    peer_logs = peer.get("log", 0)
    peer_total = peer.get("http_total")
    follow_http = sum(v for k, v in both.http.items() if k.startswith(("WATCH", "LIST", "pod log")))
    ours_logs = both.http.get("pod log", 0)
    rows = [
        ["requests to follow every job to its end", str(ours_follow), str(peer_total),
         ratio(ours_follow, peer_total)],
        ["  of which Job/pod status (lists, watches / polls)", str(follow_http - ours_logs), str(peer_status),
         ratio(follow_http - ours_logs, peer_status)],
        ["  of which pod log reads", str(ours_logs), str(peer_logs), ratio(ours_logs, peer_logs)],
        ["requests per second (over our follow window)", f"{ours_follow / both.wall_s:.2f}",
         f"{(peer_total or 0) / both.wall_s:.2f}", ratio(ours_follow, peer_total)],
        ["jobs seen ended", str(sum(both.states.values())), str(peer.get("finished", "-")), ""],
        ["first submit -> all seen Running (s)", secs(both.all_running_s), secs(since(peer.get("all_running_at"))), ""],
        ["first submit -> all seen ended (s)", secs(both.wall_s), secs(since(peer.get("all_finished_at"))), ""],
    ]
    checks = (f"ClusterWatch.requests {ours_follow} vs the ApiClient's lists+watches+logs {follow_http}; "
              f"peer: counted calls {peer_status + peer_logs} vs its ApiClient {peer_total}")
    out.append(table(f"\nRound B, the same {both.jobs} Jobs, one window: requests, ours vs per-job poll loop "
                     f"({checks})", ["metric", "ours", "peer", "ratio = ours / peer"], rows))
    problems = [*(alone.problems if alone else []), *both.problems]
    out.append(f"\nproblems (jobs not succeeded, logs not as printed): {problems or 'none'}")
    out.append(f"peer: {peer.get('ticks')} ticks ({peer.get('late_ticks')} late), {secs(peer.get('cpu_s'))} s CPU "
               f"in its process, requests {peer.get('http')}")
    out.append(f"ours, round B: requests by kind {dict(both.http)}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- the peer process


def peer_main(kubeconfig: str, namespace: str) -> int:
    """Per-job poll loop: job status + pod list for every known Job, once a second; stdin feeds it names."""
    import kubernetes

    api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    counter = RequestCounter(api)
    batch, core = kubernetes.client.BatchV1Api(api), kubernetes.client.CoreV1Api(api)
    names: list[str] = []
    finished: dict[str, float] = {}
    running: dict[str, float] = {}
    counts = Counter[str]()
    lock = threading.Lock()
    stop = threading.Event()

    def read_commands() -> None:
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "job":
                with lock:
                    names.append(argument)
            elif command == "stop":
                break
        stop.set()

    threading.Thread(target=read_commands, daemon=True).start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    print("ready", flush=True)
    ticks = late = 0
    next_tick = time.perf_counter()
    while not stop.is_set():
        with lock:
            pending = [n for n in names if n not in finished]
        for name in pending:
            job = batch.read_namespaced_job_status(name, namespace)
            counts["job_status"] += 1
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}")
            counts["pod_list"] += 1
            conditions = {c.type for c in (job.status.conditions or []) if c.status == "True"}
            for pod in pods.items:
                state = pod.status.container_statuses[0].state if pod.status.container_statuses else None
                if state is not None and (state.running or state.terminated):
                    running.setdefault(name, time.time())
            if conditions & {"Complete", "Failed"}:
                running.setdefault(name, time.time())
                finished[name] = time.time()
                for pod in pods.items:
                    core.read_namespaced_pod_log(pod.metadata.name, namespace)
                    counts["log"] += 1
        ticks += 1
        next_tick += 1.0
        delay = next_tick - time.perf_counter()
        if delay < 0:
            late += 1
            next_tick = time.perf_counter()
        else:
            stop.wait(delay)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        **counts, "http_total": counter.total, "http": dict(counter.snapshot()), "ticks": ticks, "late_ticks": late,
        "finished": len(finished), "known": len(names),
        "all_running_at": max(running.values()) if names and len(running) == len(names) else None,
        "all_finished_at": max(finished.values()) if names and len(finished) == len(names) else None,
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }), flush=True)
    return 0


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="measured one-job rounds (default 5)")
    parser.add_argument("--jobs", type=int, default=50, help="jobs at once (default 50)")
    parser.add_argument("--sleep", type=float, default=20.0, help="seconds each of those jobs sleeps (default 20)")
    parser.add_argument("--skip-alone", action="store_true", help="skip round A (ours alone)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--peer", nargs=2, metavar=("KUBECONFIG", "NAMESPACE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        return peer_main(*args.peer)

    began = time.perf_counter()
    machine = machine_description()
    with environment(args.keep) as bench:
        samples, extra = latency(bench, max(1, args.repeat))
        alone = None
        if not args.skip_alone:
            progress(f"round A: {args.jobs} jobs, ours alone")
            alone = many_jobs(bench, args.jobs, args.sleep, with_peer=False)
        progress(f"round B: {args.jobs} jobs, ours + the per-job poll loop")
        both = many_jobs(bench, args.jobs, args.sleep, with_peer=True)
    print("Machine")
    for label, value in machine:
        print(f"  {label}: {value}")
    print("  cluster: tests/cluster (Kubernetes 1.20 control plane; "
          + ("a real node: kubelet, containerd 1.6, runc, the runner image)" if bench.cluster.real_node
             else "the node agent runs pods as local processes)"))
    print(latency_tables(samples, extra))
    print(many_tables(alone, both, args.sleep))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nwhole benchmark: {time.perf_counter() - began:.0f} s; load average at the end: {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
