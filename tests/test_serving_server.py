"""The inference server as a real process over real HTTP, against ``mlflow models serve`` on the same model."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.serving_fixtures import FEATURES, Served

pytestmark = pytest.mark.slow
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``python -m jupyter_mlflow_k8s.serving`` process, stopped at the end."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [PYTHON, "-m", "jupyter_mlflow_k8s.serving", *args, "--port", str(self.port)]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = ""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output += line
            if "jmk-serve: listening on" in line:
                return
        raise AssertionError(f"the server exited ({self.process.wait()}):\n{self.output}")

    def post(self, body: Any, content_type: str = "application/json") -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(f"{self.url}/invocations", data=data, headers={"Content-Type": content_type}, timeout=60)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return parse_metrics(requests.get(f"{self.url}/metrics", timeout=30).text)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of Prometheus text: (name, labels) -> value."""
    samples = {}
    pattern = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = pattern.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@pytest.fixture
def env(mlflow_uri: str, tmp_path: Path) -> dict[str, str]:
    path = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow models serve runs uvicorn
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "JMK_STATE_DIR": str(tmp_path / "state"), "PATH": path}


@pytest.fixture
def server(served_model: Served, env: dict[str, str]) -> Iterator[Server]:
    running = Server(f"models:/{served_model.name}@prod", "--max-wait-ms", "20", env=env)
    yield running
    running.stop()


def split(frame: Any) -> dict[str, Any]:
    return {"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}}


def requests_of(frame: Any) -> list[tuple[Any, str]]:
    """The same rows in every form the scoring protocol takes."""
    rows = frame.to_dict(orient="records")
    return [
        (split(frame), "application/json"),
        ({"dataframe_records": rows}, "application/json"),
        ({"instances": rows}, "application/json"),
        ({"inputs": {c: frame[c].tolist() for c in frame.columns}}, "application/json"),
        (frame.to_csv(index=False), "text/csv"),
        ({"dataframe_split": {"columns": list(reversed(frame.columns)),
                              "data": frame[list(reversed(frame.columns))].to_numpy().tolist()}}, "application/json"),
    ]


def test_same_answers_as_mlflow_models_serve(served_model: Served, env: dict[str, str], server: Server) -> None:
    port = free_port()
    reference = subprocess.Popen(
        [PYTHON, "-m", "mlflow", "models", "serve", "-m", f"models:/{served_model.name}@prod", "--env-manager",
         "local", "--port", str(port), "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except requests.ConnectionError:
                assert time.time() < deadline and reference.poll() is None, "mlflow models serve did not start"
                time.sleep(0.2)
        frame = served_model.frame.head(25)
        bad = [({"dataframe_split": {"columns": list(FEATURES), "data": [["a", 1, 2, 3]]}}, "application/json"),
               ({"dataframe_records": [{"sepal_length": 1.0}]}, "application/json"),
               ({"nonsense": []}, "application/json")]
        for body, kind in requests_of(frame):
            ours = server.post(body, kind)
            theirs = requests.post(f"http://127.0.0.1:{port}/invocations",
                                   data=body if isinstance(body, str) else json.dumps(body),
                                   headers={"Content-Type": kind}, timeout=60)
            assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), body
            expected = served_model.models[0].predict(frame).tolist()
            assert ours.json() == {"predictions": expected}
        for body, kind in bad:
            ours = server.post(body, kind)
            theirs = requests.post(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body),
                                   headers={"Content-Type": kind}, timeout=60)
            assert ours.status_code == theirs.status_code == 400, (body, ours.text, theirs.text)
    finally:
        reference.terminate()
        reference.wait(timeout=30)


def test_signature_violations_get_a_400_that_says_what_is_wrong(server: Server) -> None:
    missing = server.post({"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length"],
                                               "data": [[5.1, 3.5, 1.4]]}})
    assert missing.status_code == 400
    assert "Missing column 'petal_width'" in missing.json()["message"]
    assert "sepal_length (double)" in missing.json()["message"]
    wrong = server.post({"dataframe_records": [dict.fromkeys(FEATURES, 1.0), {**dict.fromkeys(FEATURES, 1.0),
                                                                             "petal_width": "wide"}]})
    assert wrong.status_code == 400
    assert "Column 'petal_width', row 1: \"wide\" is not a double" in wrong.json()["message"]
    assert server.post(b"{not json").status_code == 400
    assert "valid JSON" in server.post(b"{not json").json()["message"]
    assert server.post("1,2\n", "text/plain").status_code == 415
    huge = server.post(b"x" * (21 * 1024 * 1024))
    assert huge.status_code == 413 and "--max-body-mb" in huge.json()["message"]
    assert server.post(split(_frame(3))).status_code == 200  # and it still answers


def _frame(rows: int, shift: float = 0.0, seed: int = 1) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    data = rng.normal(loc=[5.8, 3.0, 3.8, 1.2], scale=[0.8, 0.4, 1.7, 0.7], size=(rows, 4))
    data[:, 2] += shift * 1.7
    return pd.DataFrame(data, columns=list(FEATURES))


def test_metrics_after_a_known_sequence(served_model: Served, server: Server) -> None:
    for rows in (1, 2, 3):
        assert server.post(split(_frame(rows))).status_code == 200
    assert server.post({"dataframe_records": [{"sepal_length": 1.0}]}).status_code == 400
    samples = server.metrics()
    labels = {"model": served_model.name, "version": served_model.versions[0]}
    assert value(samples, "jmk_requests_total", code="200", **labels) == 3
    assert value(samples, "jmk_requests_total", code="400", **labels) == 1
    assert value(samples, "jmk_request_duration_seconds_count", **labels) == 4
    assert value(samples, "jmk_batch_size_count", **labels) == 3  # the 400 never reached the model
    assert value(samples, "jmk_batch_size_sum", **labels) == 6
    assert value(samples, "jmk_batch_size_bucket", le="2.0", **labels) == 2
    assert value(samples, "jmk_requests_in_flight", **labels) == 0
    assert value(samples, "jmk_model_info", role="primary", uri=f"models:/{served_model.name}@prod", **labels) == 1
    assert value(samples, "jmk_input_feature_count_total", feature="petal_length", **labels) == 6
    sent = np.concatenate([_frame(r)["petal_length"].to_numpy() for r in (1, 2, 3)])
    assert math.isclose(value(samples, "jmk_input_feature_sum", feature="petal_length", **labels), sent.sum())
    assert value(samples, "jmk_drift_baseline_available", **labels) == 1
    assert value(samples, "jmk_drift_window_rows", **labels) == 6


async def _concurrently(url: str, bodies: list[Any]) -> list[tuple[int, Any]]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async def one(body: Any) -> tuple[int, Any]:
            async with session.post(f"{url}/invocations", json=body) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def test_batches_form_under_concurrency_and_answers_stay_apart(served_model: Served, server: Server) -> None:
    frames = [_frame(1 + i % 3, seed=i) for i in range(64)]
    answers = asyncio.run(_concurrently(server.url, [split(f) for f in frames]))
    for frame, (status, body) in zip(frames, answers, strict=True):
        assert status == 200 and body["predictions"] == served_model.models[0].predict(frame).tolist()
    samples = server.metrics()
    labels = {"model": served_model.name, "version": served_model.versions[0]}
    calls = value(samples, "jmk_batch_size_count", **labels)
    assert value(samples, "jmk_batch_size_sum", **labels) == sum(len(f) for f in frames)
    assert calls < 64 / 2, f"64 concurrent requests took {calls} model calls"


def test_no_batching_makes_one_call_per_request(served_model: Served, env: dict[str, str]) -> None:
    server = Server(served_model.uri("1"), "--no-batching", env=env)
    try:
        frames = [_frame(2, seed=i) for i in range(32)]
        answers = asyncio.run(_concurrently(server.url, [split(f) for f in frames]))
        assert all(status == 200 for status, _ in answers)
        labels = {"model": served_model.name, "version": "1"}
        assert value(server.metrics(), "jmk_batch_size_count", **labels) == 32
    finally:
        server.stop()


def test_canary_split_is_within_tolerance(served_model: Served, env: dict[str, str]) -> None:
    server = Server(served_model.uri("1"), "--canary", served_model.uri("2"), "--canary-fraction", "0.25", env=env)
    try:
        total, fraction = 800, 0.25
        versions = [server.post(split(_frame(1, seed=i))).headers["X-JMK-Model-Version"] for i in range(total)]
        canary = versions.count(served_model.versions[1])
        sigma = math.sqrt(total * fraction * (1 - fraction))
        assert abs(canary - total * fraction) < 5 * sigma, canary  # 5 sigma: fails once in ~1.7 million runs
        samples = server.metrics()
        assert value(samples, "jmk_requests_total", version=served_model.versions[1]) == canary
        assert value(samples, "jmk_requests_total", version=served_model.versions[0]) == total - canary
        assert value(samples, "jmk_model_info", role="canary", version=served_model.versions[1]) == 1
        assert requests.get(f"{server.url}/version", timeout=10).json()["canary"]["version"] == "2"
    finally:
        server.stop()


def test_shadow_gets_a_copy_and_never_answers(served_model: Served, env: dict[str, str]) -> None:
    server = Server(served_model.uri("1"), "--shadow", served_model.uri("2"), env=env)
    try:
        for i in range(20):
            response = server.post(split(_frame(2, seed=i)))
            assert response.headers["X-JMK-Model-Version"] == "1"
            assert response.json()["predictions"] == served_model.models[0].predict(_frame(2, seed=i)).tolist()
        deadline = time.time() + 20
        while value(server.metrics(), "jmk_requests_total", version="2", code="200") < 20:
            assert time.time() < deadline, server.metrics()
            time.sleep(0.1)
        assert value(server.metrics(), "jmk_batch_size_sum", version="2") == 40
    finally:
        server.stop()


def test_drift_rises_when_shifted_data_is_sent(served_model: Served, env: dict[str, str]) -> None:
    server = Server(served_model.uri("1"), "--drift-window", "400", env=env)
    try:
        labels = {"model": served_model.name, "version": "1", "feature": "petal_length"}
        psi = []
        for step, shift in enumerate((0.0, 0.5, 1.5)):
            for i in range(20):
                assert server.post(split(_frame(20, shift=shift, seed=100 * step + i))).status_code == 200
            psi.append(value(server.metrics(), "jmk_feature_drift_psi", **labels))
        assert psi[0] < 0.1 < psi[1] < psi[2] and psi[2] > 0.25, psi
        unshifted = value(server.metrics(), "jmk_feature_drift_psi", **{**labels, "feature": "sepal_width"})
        assert unshifted < 0.1
    finally:
        server.stop()


def test_unknown_model_and_taken_port_fail_clearly(served_model: Served, env: dict[str, str]) -> None:
    unknown = subprocess.run([PYTHON, "-m", "jupyter_mlflow_k8s.serving", "models:/iris-serving@nope",
                              "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2
    assert "no such model version" in unknown.stderr and "aliases prod" in unknown.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([PYTHON, "-m", "jupyter_mlflow_k8s.serving", served_model.uri("1"), "--port",
                               str(port)], env=env, capture_output=True, text=True, timeout=120)
    assert busy.returncode == 3 and f"Port {port} on 127.0.0.1 is already in use" in busy.stderr
    bad = subprocess.run([PYTHON, "-m", "jupyter_mlflow_k8s.serving", served_model.uri("1"), "--max-batch-size",
                          "0", "--canary-fraction", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--max-batch-size 0" in bad.stderr and "--canary-fraction 2" in bad.stderr


def test_health_version_and_ping(served_model: Served, server: Server) -> None:
    assert requests.get(f"{server.url}/ping", timeout=10).status_code == 200
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["version"] == served_model.versions[0]
    version = requests.get(f"{server.url}/version", timeout=10).json()
    assert version["model"] == served_model.name and version["uri"] == f"models:/{served_model.name}@prod"
    metrics = requests.get(f"{server.url}/metrics", timeout=10)
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_tensor_models_batch_and_answer_as_mlflow_does(served_tensor_model: Served, env: dict[str, str]) -> None:
    """A one-tensor signature (as a torch model registered with an input example gets): arrays batch too."""
    server = Server(served_tensor_model.uri(), "--max-wait-ms", "20", env=env)
    try:
        arrays = [_frame(1 + i % 4, seed=i).to_numpy(dtype="float32") for i in range(48)]
        bodies = [{"instances" if i % 2 else "inputs": a.tolist()} for i, a in enumerate(arrays)]
        answers = asyncio.run(_concurrently(server.url, bodies))
        for array, (status, body) in zip(arrays, answers, strict=True):
            assert status == 200 and body["predictions"] == served_tensor_model.models[0].predict(array).tolist()
        samples = server.metrics()
        labels = {"model": "iris-tensor", "version": served_tensor_model.versions[0]}
        assert value(samples, "jmk_batch_size_sum", **labels) == sum(len(a) for a in arrays)
        assert value(samples, "jmk_batch_size_count", **labels) < 48 / 2
        assert value(samples, "jmk_input_feature_count_total", feature="2", **labels) == sum(len(a) for a in arrays)
        wrong = server.post({"instances": [[1.0, 2.0, 3.0]]})
        assert wrong.status_code == 400
        assert "shape (1, 3)" in wrong.json()["message"] and "(any, 4)" in wrong.json()["message"]
        text = server.post({"instances": [["a", "b", "c", "d"]]})
        assert text.status_code == 400  # MLflow's own words for a value that is not a number
    finally:
        server.stop()


def test_a_model_name_with_a_quote_resolves_and_serves(mlflow_uri: str, env: dict[str, str]) -> None:
    """Bug: the server listed a model's versions with the filter ``name='NAME'``, which a quote in NAME breaks;
    and ``models:/NAME/latest`` was looked up as a version called "latest"."""
    import uuid

    from tests.serving_fixtures import make_served

    quoted = make_served(f"o'brien-{uuid.uuid4().hex[:6]}", mlflow_uri)
    unknown = subprocess.run([PYTHON, "-m", "jupyter_mlflow_k8s.serving", f"models:/{quoted.name}@nope",
                              "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2
    assert f"{quoted.name} has versions 1, 2 and aliases prod" in unknown.stderr, unknown.stderr
    server = Server(f"models:/{quoted.name}/latest", env=env)
    try:
        assert requests.get(f"{server.url}/health", timeout=10).json()["version"] == quoted.versions[1]
        frame = _frame(5)
        answer = server.post(split(frame))
        assert answer.status_code == 200 and answer.headers["X-JMK-Model-Version"] == quoted.versions[1]
        assert answer.json()["predictions"] == quoted.models[1].predict(frame).tolist()
    finally:
        server.stop()
