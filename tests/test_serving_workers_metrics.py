"""``--workers 2`` with prometheus_client's multiprocess mode: one scrape sees every worker.

A real server process with two forked workers serves a model from the real registry; real HTTP
clients send traffic until both workers have answered some of it (each worker's own metrics file
says so). One scrape must then count every request exactly once, merge each gauge by its mode
(``GAUGE_MODES``), and, after a worker is SIGKILLed and replaced, keep the dead worker's counts
while its live gauges drop out.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from helpers import process_gone, wait_for
from prometheus_client.multiprocess import MultiProcessCollector

from tests.serving_fixtures import FEATURES, Served
from tests.test_serving_server import Server, parse_metrics, split, value

pytestmark = pytest.mark.slow

ROWS = 2  # rows per request: both workers' windows stay far below --drift-window


@pytest.fixture
def workers(served_model: Served, mlflow_uri: str, tmp_path: Path) -> Iterator[Server]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "JMK_STATE_DIR": str(tmp_path / "state")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    running = Server(served_model.uri("1"), "--workers", "2", "--drift-window", "1000", env=env)
    yield running
    running.stop()


def worker_pids(server: Server) -> set[int]:
    children = psutil.Process(server.process.pid).children()
    return {child.pid for child in children if not process_gone(child.pid)}


def metrics_directory(pid: int) -> Path:
    """The multiprocess directory, found from the metric files a worker holds open."""
    found = {Path(f.path).parent for f in psutil.Process(pid).open_files()
             if f.path.endswith(".db") and Path(f.path).parent.name.startswith("jmk-metrics-")}
    assert len(found) == 1, found
    return found.pop()


def own_values(directory: Path, kind: str, pid: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """What one worker wrote in its own file (``counter``, ``histogram``, ``gauge_livemax``, ...)."""
    path = directory / f"{kind}_{pid}.db"
    if not path.exists():
        return {}
    return {(s.name, frozenset(s.labels.items())): s.value
            for metric in MultiProcessCollector.merge([str(path)]) for s in metric.samples}


def own(directory: Path, kind: str, pid: int, name: str, **labels: str) -> float:
    return value(own_values(directory, kind, pid), name, **labels)


def send(url: str, body: object, count: int) -> None:
    """``count`` requests at once, each on a connection of its own, all answered 200."""
    statuses: list[int] = []

    def one() -> None:
        statuses.append(requests.post(f"{url}/invocations", json=body, timeout=60,
                                      headers={"Connection": "close"}).status_code)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * count


def test_one_scrape_sees_every_worker_and_a_killed_one_keeps_its_counts(served_model: Served,
                                                                        workers: Server) -> None:
    pids = wait_for(lambda: pids if len(pids := worker_pids(workers)) == 2 else None, timeout=15)
    directory = metrics_directory(min(pids))
    assert metrics_directory(max(pids)) == directory
    labels = {"model": served_model.name, "version": "1"}
    rows = served_model.frame.head(ROWS)[list(FEATURES)]
    body = split(rows)

    sent = 0
    for _ in range(40):  # until both workers answered some: the kernel picks which accepts
        send(workers.url, body, 8)
        sent += 8
        answered = {pid: own(directory, "counter", pid, "jmk_requests_total", code="200") for pid in pids}
        if all(answered.values()):
            break
    assert all(answered.values()), f"one worker took every request: {answered}"
    assert sum(answered.values()) == sent

    samples = workers.metrics()  # one scrape, whichever worker answers it
    assert value(samples, "jmk_requests_total", code="200", **labels) == sent  # summed over workers, exactly
    assert value(samples, "jmk_request_duration_seconds_count", **labels) == sent
    assert value(samples, "jmk_request_duration_seconds_bucket", le="+Inf", **labels) == sent
    assert value(samples, "jmk_input_feature_count_total", feature="petal_length", **labels) == sent * ROWS
    assert math.isclose(value(samples, "jmk_input_feature_sum", feature="petal_length", **labels),
                        sent * float(rows["petal_length"].sum()))  # mode sum
    assert value(samples, "jmk_model_info", role="primary", **labels) == 1  # mode max: not one per worker
    assert value(samples, "jmk_requests_in_flight", **labels) == 0  # mode livesum
    assert value(samples, "jmk_worker_restarts_total") == 0
    assert not any("pid" in dict(key) for _, key in samples), "a gauge without a merging mode"

    def refreshed() -> bool:  # each worker rewrites its drift gauges every second
        now = workers.metrics()
        return value(now, "jmk_drift_window_rows", **labels) == sent * ROWS  # livesum of the two windows

    wait_for(refreshed, timeout=15)
    samples = workers.metrics()
    for feature in FEATURES:
        psi = [own(directory, "gauge_livemax", pid, "jmk_feature_drift_psi", feature=feature, **labels)
               for pid in pids]
        lowest = [own(directory, "gauge_livemin", pid, "jmk_input_feature_min", feature=feature, **labels)
                  for pid in pids]
        assert value(samples, "jmk_feature_drift_psi", feature=feature, **labels) == max(psi)  # livemax
        assert value(samples, "jmk_input_feature_min", feature=feature, **labels) == min(lowest)  # livemin
    assert value(samples, "jmk_drift_baseline_available", **labels) == 1

    victim, survivor = sorted(pids)
    victim_rows = own(directory, "gauge_livesum", victim, "jmk_drift_window_rows", **labels)
    survivor_rows = own(directory, "gauge_livesum", survivor, "jmk_drift_window_rows", **labels)
    assert victim_rows + survivor_rows == sent * ROWS
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(worker_pids(workers) - {survivor}) == 1 and victim not in worker_pids(workers), timeout=15)

    assert (directory / f"counter_{victim}.db").exists()  # its counts stay in the sums ...
    assert not list(directory.glob(f"gauge_live*_{victim}.db"))  # ... its live gauges are gone
    samples = workers.metrics()
    assert value(samples, "jmk_requests_total", code="200", **labels) == sent
    assert value(samples, "jmk_input_feature_count_total", feature="petal_length", **labels) == sent * ROWS
    assert value(samples, "jmk_worker_restarts_total") == 1  # counted by the supervisor
    assert value(samples, "jmk_model_info", role="primary", **labels) == 1
    assert value(samples, "jmk_requests_in_flight", **labels) == 0
    wait_for(lambda: value(workers.metrics(), "jmk_drift_window_rows", **labels) == survivor_rows, timeout=15)

    send(workers.url, body, 4)
    after = parse_metrics(requests.get(f"{workers.url}/metrics", timeout=30).text)
    assert value(after, "jmk_requests_total", code="200", **labels) == sent + 4

    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(timeout=30) == 0
    assert not directory.exists()  # the supervisor removes its directory on the way out
