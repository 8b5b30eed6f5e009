"""Serving under real faults (issue 16): a worker SIGKILLed under load, a supervisor killed, a new version
that cannot load while the old one serves.

Every fault is real: a real server process with a model from the real registry, real HTTP clients, real
signals. Each test counts what the clients saw (answers, connection errors, hangs) and checks that the
server is whole again afterwards, and that the user was told.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from helpers import process_gone, wait_for

from jupyter_mlflow_k8s.errors import JMKUsageError
from jupyter_mlflow_k8s.serving.errors import EndpointNotFound
from jupyter_mlflow_k8s.serving.manager import ServerStartError, ServingManager
from tests.serving_fixtures import FEATURES, Served, make_broken
from tests.test_serving_server import Server, parse_metrics, split, value

pytestmark = pytest.mark.slow

WORKERS = 3
CLIENTS = 6
CLIENT_TIMEOUT = 20.0


@pytest.fixture
def env(mlflow_uri: str, tmp_path: Path) -> dict[str, str]:
    # TMPDIR: a server with workers keeps its metrics in a directory made there, so a killed one's stays in tmp_path
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "JMK_STATE_DIR": str(tmp_path / "state"),
            "TMPDIR": str(tmp_path)}


@pytest.fixture
def workers(served_model: Served, env: dict[str, str]) -> Iterator[Server]:
    running = Server(served_model.uri("1"), "--workers", str(WORKERS), env=env)
    yield running
    running.stop()


def worker_pids(server: Server) -> set[int]:
    """The live worker processes of a server (its children that are not zombies)."""
    try:
        children = psutil.Process(server.process.pid).children()
    except psutil.NoSuchProcess:
        return set()
    return {child.pid for child in children if not process_gone(child.pid)}


def all_workers(server: Server, count: int = WORKERS) -> set[int]:
    """The worker pids once ``count`` of them run."""
    found: set[int] = set()

    def complete() -> bool:
        found.clear()
        found.update(worker_pids(server))
        return len(found) == count

    wait_for(complete, timeout=15)
    return set(found)


def rest_of_output(server: Server) -> str:
    """What the server printed after it said it was listening (read once it has exited)."""
    assert server.process.stdout is not None and server.process.poll() is not None
    return server.output + server.process.stdout.read()


class Load:
    """Clients posting the same rows over and over, each on a new connection, until stopped; outcomes counted."""

    def __init__(self, url: str, frame: Any, expected: list[Any]) -> None:
        self.url, self.body, self.expected = f"{url}/invocations", split(frame), expected
        self.outcomes: Counter[str] = Counter()
        self.wrong: list[str] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=CLIENT_TIMEOUT + 5)
        assert not any(thread.is_alive() for thread in self.threads), "a client hung past its timeout"

    def _client(self) -> None:
        while not self.stopped.is_set():
            try:
                response = requests.post(self.url, json=self.body, timeout=CLIENT_TIMEOUT)
                outcome = "answered" if response.status_code == 200 and \
                    response.json()["predictions"] == self.expected else "wrong"
                if outcome == "wrong":
                    self.wrong.append(f"{response.status_code}: {response.text[:200]}")
            except requests.Timeout:  # before ConnectionError: a connect timeout is both
                outcome = "timed out"
            except requests.ConnectionError:
                outcome = "connection error"
            with self.lock:
                self.outcomes[outcome] += 1

    def answered(self) -> int:
        with self.lock:
            return self.outcomes["answered"]


def test_a_worker_killed_under_load_is_replaced_counted_and_logged(served_model: Served, workers: Server) -> None:
    rows = served_model.frame.head(5)[list(FEATURES)]
    expected = served_model.models[0].predict(rows).tolist()
    before = all_workers(workers)

    with Load(workers.url, rows, expected) as load:
        wait_for(lambda: load.answered() >= 100, timeout=30)
        victim = sorted(before)[1]
        os.kill(victim, signal.SIGKILL)  # the fault: a worker dies mid-request, its connections with it
        killed_at = load.answered()
        wait_for(lambda: len(worker_pids(workers) - before) == 1 and victim not in worker_pids(workers), timeout=15)
        wait_for(lambda: load.answered() >= killed_at + 100, timeout=30)  # the replacement and the others answer

    outcomes = load.outcomes
    print(f"\nclients saw: {dict(outcomes)}")
    assert set(outcomes) <= {"answered", "connection error"}, (dict(outcomes), load.wrong[:3])
    assert outcomes["answered"] >= 200
    after = worker_pids(workers)
    assert len(after) == WORKERS and victim not in after and len(after & before) == WORKERS - 1

    for _ in range(2 * WORKERS):  # each scrape may reach another worker: every one reads the same count
        samples = parse_metrics(requests.get(f"{workers.url}/metrics", timeout=10).text)
        assert value(samples, "jmk_worker_restarts_total") == 1
    assert workers.post(split(rows)).json()["predictions"] == expected

    workers.process.send_signal(signal.SIGTERM)  # and SIGTERM still stops every worker, the new one too
    assert workers.process.wait(timeout=30) == 0
    assert all(process_gone(pid) for pid in before | after)
    log = rest_of_output(workers)
    assert f"(pid {victim}) killed by SIGKILL" in log and "starting a new one (restart 1)" in log, log


def test_workers_do_not_outlive_a_killed_supervisor(workers: Server, tmp_path: Path) -> None:
    pids = all_workers(workers)
    workers.process.kill()  # nothing can forward a SIGKILL: the kernel tells each worker (PR_SET_PDEATHSIG)
    workers.process.wait(timeout=10)
    wait_for(lambda: all(process_gone(pid) for pid in pids), timeout=20)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{workers.url}/ping", timeout=5)
    # the documented limit: nothing is left to remove the workers' metrics directory after a SIGKILL
    assert [path.name.startswith("jmk-metrics-") for path in tmp_path.iterdir() if path.is_dir()].count(True) == 1


def test_workers_that_keep_dying_at_once_stop_the_server_with_a_reason(served_model: Served,
                                                                         env: dict[str, str]) -> None:
    server = Server(served_model.uri("1"), "--workers", "2", env=env)
    killed: set[int] = set()

    def kill_every_worker() -> bool:
        for pid in worker_pids(server) - killed:
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        return server.process.poll() is not None

    try:
        wait_for(kill_every_worker, timeout=30, interval=0.02)
    finally:
        server.stop()
    assert server.process.returncode == 1
    log = rest_of_output(server)
    assert "workers in a row died within 2 s of starting, so the server stops" in log, log
    assert all(process_gone(pid) for pid in killed)


def test_one_worker_serves_without_a_supervisor(served_model: Served, env: dict[str, str]) -> None:
    server = Server(served_model.uri("1"), env=env)
    try:
        assert worker_pids(server) == set(), "--workers 1 forks nothing"
        samples = parse_metrics(requests.get(f"{server.url}/metrics", timeout=10).text)
        assert value(samples, "jmk_worker_restarts_total") == 0
    finally:
        server.stop()
    assert server.process.returncode == 0


# -- a new version that cannot load, while the old one serves ---------------------------------------


def test_a_local_version_that_cannot_load_is_reported_and_the_running_one_keeps_serving(
    served_model: Served, mlflow_uri: str, state_dir: Path
) -> None:
    """A local endpoint is a process on its port: a second version starts beside it under another name and
    replaces it only once it answers (the user stops the old one). Asking for the running name is refused."""
    rows = served_model.frame.head(5)[list(FEATURES)]
    expected = served_model.models[0].predict(rows).tolist()
    manager = ServingManager()
    live = manager.start(served_model.uri("1"), name="iris-live")
    try:
        with pytest.raises(JMKUsageError, match=r"already running .* it keeps serving.*start the new one under another"):
            manager.start(served_model.uri("2"), name="iris-live")
        for damage, reason in (("corrupt", "BadZipFile: File is not a zip file"),
                               ("missing", "[Errno 2] No such file or directory")):
            broken = make_broken("iris-damaged", mlflow_uri, served_model, damage)
            with pytest.raises(ServerStartError) as failed:
                manager.start(broken, name="iris-next")
            message = str(failed.value)
            assert failed.value.exit_code == 2, message
            assert f"{broken}: the model could not be loaded ({reason}" in message, message
            assert "register a version that does" in message, message
            with pytest.raises(EndpointNotFound):  # no record of the failed one, no process left
                manager.get("iris-next")
            assert manager.predict("iris-live", rows) == expected
        assert manager.get("iris-live").running and manager.get("iris-live").pid == live.pid
    finally:
        manager.stop("iris-live")


@pytest.mark.k8s
def test_a_rollout_to_a_version_that_cannot_load_is_undone_and_the_old_pods_keep_answering(
    real_node: Any, k8s_api: Any, k8s_namespace: str, k8s_served_model: Served, k8s_mlflow_server: str
) -> None:
    """maxUnavailable 0: the old pod serves while the new one fails to load; deploy says why and undoes the rollout."""
    import kubernetes
    import mlflow

    from jupyter_mlflow_k8s.k8s.pods import PodSettings
    from jupyter_mlflow_k8s.serving.kubernetes import EndpointNotReady, EndpointSpec, deploy, list_endpoints, undeploy
    from tests.test_serving_k8s import address, free_port, predict, version_served

    served, rows = k8s_served_model, k8s_served_model.frame.head(5)[list(FEATURES)]
    settings = PodSettings(namespace=k8s_namespace, image=real_node.pod_image)
    endpoint = EndpointSpec(name="iris", model_uri=served.uri("1"), port=free_port(), tracking_uri=k8s_mlflow_server)
    assert (endpoint.max_surge, endpoint.max_unavailable) == (1, 0)
    deploy(k8s_api, endpoint, settings, credentials={}, wait=180)
    base = address(real_node, k8s_api, k8s_namespace, "iris", endpoint.port)
    assert wait_for(lambda: version_served(base), timeout=30, interval=0.5) == "1"
    old_pods = {pod.metadata.name for pod in kubernetes.client.CoreV1Api(k8s_api).list_namespaced_pod(
        k8s_namespace).items}
    before = mlflow.get_tracking_uri()
    try:
        broken = make_broken("iris-damaged", k8s_mlflow_server, served)
    finally:
        mlflow.set_tracking_uri(before)

    answers: Counter[str] = Counter()
    done = threading.Event()

    def keep_asking() -> None:  # a client of the endpoint through the whole failed rollout
        while not done.is_set():
            answers[version_served(base) or "no answer"] += 1
            done.wait(0.2)

    client = threading.Thread(target=keep_asking, daemon=True)
    client.start()
    try:
        with pytest.raises(EndpointNotReady) as failed:
            deploy(k8s_api, replace(endpoint, model_uri=broken), settings, credentials={}, wait=120)
    finally:
        done.set()
        client.join(timeout=15)
    message = str(failed.value)
    print(f"\nanswers during the rollout: {dict(answers)}\n{message}")
    assert f"the new version {broken} did not come up, so the rollout was undone: {served.uri('1')} still serves" \
        in message, message
    assert "exited with code 2 (bad arguments or a model URI that cannot be loaded)" in message, message
    assert f"{broken}: the model could not be loaded (BadZipFile" in message, message
    assert set(answers) == {"1"}, answers  # every request during the rollout answered, by the old version

    [listed] = list_endpoints(k8s_api, k8s_namespace)
    assert (listed.model_uri, listed.version, listed.ready) == (served.uri("1"), "1", True)
    core = kubernetes.client.CoreV1Api(k8s_api)
    wait_for(lambda: {p.metadata.name for p in core.list_namespaced_pod(k8s_namespace).items} == old_pods, timeout=60)
    assert predict(base, rows) == served.models[0].predict(rows).tolist()
    undeploy(k8s_api, "iris", k8s_namespace)
