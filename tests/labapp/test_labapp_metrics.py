"""Endpoint metrics for the sidebar: the Prometheus text parser, rates and quantiles from bucket deltas,
and the REST endpoints against a real serving process (ServingManager) behind a real Jupyter server."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labapp_client import EventStream
from serving_fixtures import Served
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_mlflow_k8s.labapp.metrics_client import (
    MetricsTracker,
    ParseError,
    Scrape,
    ScrapeError,
    histogram_quantile,
    parse_prometheus,
    snapshot,
)
from jupyter_mlflow_k8s.serving.metrics import Registry

# --- parsing and arithmetic, no server ------------------------------------------------------------


def test_the_parser_reads_what_the_servers_registry_renders() -> None:
    registry = Registry()
    requests = registry.counter("jmk_requests_total", "Requests.", ("model", "version", "code"))
    requests.labels(model='we"ird\\name\nx', version="1", code="200").inc(3)
    duration = registry.histogram("jmk_request_duration_seconds", "Latency.", ("model", "version"), buckets=(0.1, 1))
    duration.labels(model="m", version="1").observe(0.05)
    duration.labels(model="m", version="1").observe(5)
    registry.gauge("jmk_requests_in_flight", "In flight.").set(float("nan"))
    samples = parse_prometheus(registry.render().decode())
    assert samples["jmk_requests_total"] == [({"model": 'we"ird\\name\nx', "version": "1", "code": "200"}, 3.0)]
    assert [(s[0]["le"], s[1]) for s in samples["jmk_request_duration_seconds_bucket"]] == [
        ("0.1", 1.0), ("1.0", 1.0), ("+Inf", 2.0)]
    assert samples["jmk_request_duration_seconds_count"] == [({"model": "m", "version": "1"}, 2.0)]
    assert math.isnan(samples["jmk_requests_in_flight"][0][1])
    assert parse_prometheus('# HELP x y\n\nx{a="1",} 2 1700000000000\ny -Inf\n') == {"x": [({"a": "1"}, 2.0)],
                                                                                        "y": [({}, -math.inf)]}
    for bad in ('x{a="1" 2', "x", "x abc", 'x{a=1} 2'):
        with pytest.raises(ParseError, match="line 1"):
            parse_prometheus(bad)


def test_quantiles_interpolate_in_buckets_as_prometheus_does() -> None:
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (math.inf, 40.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: the top of the first bucket
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)  # rank 20: half way through (0.1, 0.2]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.2 * (39.6 - 30) / 10)
    assert histogram_quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1  # in +Inf: the largest finite bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None


def _exposition(requests: dict[tuple[str, str], float], buckets: dict[str, dict[str, float]],
                roles: dict[str, str] | None = None, psi: float | None = None) -> dict[str, Any]:
    samples: dict[str, Any] = {"jmk_requests_total": [], "jmk_request_duration_seconds_bucket": [],
                               "jmk_requests_in_flight": [], "jmk_model_info": [], "jmk_feature_drift_psi": []}
    for (version, code), value in requests.items():
        samples["jmk_requests_total"].append(({"model": "m", "version": version, "code": code}, value))
    for version, counts in buckets.items():
        for le, value in counts.items():
            samples["jmk_request_duration_seconds_bucket"].append(({"model": "m", "version": version, "le": le}, value))
        samples["jmk_requests_in_flight"].append(({"model": "m", "version": version}, 1.0))
        role = (roles or {}).get(version, "primary")
        samples["jmk_model_info"].append(({"model": "m", "version": version, "uri": f"models:/m/{version}",
                                           "role": role}, 1.0))
        if psi is not None:
            samples["jmk_feature_drift_psi"].append(({"model": "m", "version": version, "feature": "x"}, psi))
    return samples


def test_snapshots_use_the_deltas_since_the_previous_scrape() -> None:
    before = Scrape(100.0, _exposition({("1", "200"): 100, ("1", "400"): 5},
                                       {"1": {"0.01": 100, "0.1": 105, "+Inf": 105}}))
    after = Scrape(102.0, _exposition({("1", "200"): 118, ("1", "400"): 7},
                                      {"1": {"0.01": 100, "0.1": 120, "+Inf": 125}}, psi=0.3))
    snap = snapshot(after, before)
    assert snap["time"] == 102.0 and snap["interval"] == 2.0
    assert snap["requests_total"] == 125 and snap["errors_total"] == 7
    assert snap["requests_per_second"] == pytest.approx(10.0) and snap["errors_per_second"] == pytest.approx(1.0)
    assert snap["error_rate"] == pytest.approx(0.1)
    # The 20 requests of the interval: 15 in (0.01, 0.1], 5 above; the lifetime's 100 fast ones do not count.
    assert snap["p50_ms"] == pytest.approx((0.01 + 0.09 * 10 / 15) * 1000)
    assert snap["p99_ms"] == pytest.approx(100.0)
    assert snap["in_flight"] == 1.0 and snap["drift"] == {"x": 0.3}
    assert snap["versions"]["1"]["requests_total"] == 125 and snap["versions"]["1"]["role"] == "primary"

    first = snapshot(before, None, started=90.0)  # no previous scrape: the whole life since the start
    assert first["interval"] == 10.0 and first["requests_per_second"] == pytest.approx(10.5)
    assert first["p50_ms"] == pytest.approx(10 * 52.5 / 100)
    assert snapshot(before, None)["requests_per_second"] is None

    restarted = Scrape(103.0, _exposition({("1", "200"): 4}, {"1": {"0.01": 4, "0.1": 4, "+Inf": 4}}))
    reset = snapshot(restarted, after)  # the counters went down: the server restarted, count from zero
    assert reset["requests_per_second"] == pytest.approx(4.0) and reset["p99_ms"] == pytest.approx(9.9)

    quiet = snapshot(Scrape(104.0, after.samples), after)
    assert quiet["requests_per_second"] == 0 and quiet["p50_ms"] is None and quiet["error_rate"] is None


def test_a_shadow_version_is_reported_but_not_counted_in_the_totals() -> None:
    samples = _exposition({("1", "200"): 10, ("2", "200"): 10, ("2", "500"): 3},
                          {"1": {"0.1": 10, "+Inf": 10}, "2": {"0.1": 0, "+Inf": 13}}, roles={"2": "shadow"}, psi=0.1)
    snap = snapshot(Scrape(10.0, samples), Scrape(5.0, {}))
    assert snap["requests_total"] == 10 and snap["errors_total"] == 0 and snap["requests_per_second"] == 2.0
    assert snap["versions"]["2"]["role"] == "shadow" and snap["versions"]["2"]["errors_total"] == 3
    assert list(snap["versions"]) == ["1", "2"]


def test_a_scrape_of_nothing_is_a_clear_error() -> None:
    with pytest.raises(ScrapeError, match=r"Could not read http://127\.0\.0\.1:9/metrics"):
        MetricsTracker(timeout=1).snapshot("gone", "http://127.0.0.1:9")
    with pytest.raises(ScrapeError, match="not an http"):
        MetricsTracker().snapshot("odd", "file:///etc")


# --- against a real serving process and a real Jupyter server ---------------------------------


@pytest.fixture
def jp_server_config(state_dir: Path) -> Config:
    return Config({"ServerApp": {"jpserver_extensions": {"jupyter_mlflow_k8s.labapp": True}}})


@pytest.fixture
def endpoint(state_dir: Path, served_model: Served) -> Iterator[Any]:
    """Version 1 served by a real local process (no batching: one request, one observation)."""
    from jupyter_mlflow_k8s.serving.manager import ServingManager

    manager = ServingManager()
    started = manager.start(served_model.uri("1"), name="sidebar-metrics", no_batching=True)
    yield started
    for found in manager.list():
        if found.running:
            manager.stop(found.name)


async def _get(jp_fetch: Any, *parts: str, **params: Any) -> tuple[int, Any]:
    try:
        response = await jp_fetch("jmk", "api", *parts, params=params)
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, json.loads(exc.response.body)
    return response.code, json.loads(response.body)


def _predict(url: str, rows: list[dict[str, float]], times: list[float]) -> int:
    import urllib.error
    import urllib.request

    body = json.dumps({"dataframe_records": rows}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    times.append(time.perf_counter() - started)
    return status


@pytest.mark.slow
async def test_endpoint_metrics_after_known_requests(jp_fetch: Any, jp_http_port: int, jp_base_url: str,
                                                     jp_serverapp: Any, endpoint: Any, served_model: Served) -> None:
    from jupyter_mlflow_k8s.serving.server import DURATION_BUCKETS

    status, body = await _get(jp_fetch, "endpoints")
    assert status == 200
    (listed,) = [e for e in body["endpoints"] if e["name"] == "sidebar-metrics"]
    assert listed["status"] == "running" and listed["url"] == endpoint.url and listed["pid"] == endpoint.pid
    assert listed["model_uri"] == served_model.uri("1") and listed["backend"] == "local"

    status, first = await _get(jp_fetch, "endpoints", "sidebar-metrics", "metrics")
    assert status == 200 and first["requests_total"] == 0 and first["p50_ms"] is None

    rows = served_model.frame.iloc[:3].to_dict(orient="records")
    times: list[float] = []
    codes = [await asyncio.to_thread(_predict, endpoint.url, rows, times) for _ in range(20)]
    bad = [{"petal_wdth": 1.0}]
    codes += [await asyncio.to_thread(_predict, endpoint.url, bad, times) for _ in range(3)]
    assert codes == [200] * 20 + [400] * 3

    status, snap = await _get(jp_fetch, "endpoints", "sidebar-metrics", "metrics")
    assert status == 200
    assert snap["requests_total"] == 23 and snap["errors_total"] == 3
    assert snap["interval"] > 0 and snap["requests_per_second"] == pytest.approx(23 / snap["interval"])
    assert snap["error_rate"] == pytest.approx(3 / 23)
    ceiling = min(b for b in DURATION_BUCKETS if b >= max(times)) * 1000  # answered faster than the client saw
    assert 0 < snap["p50_ms"] <= snap["p99_ms"] <= ceiling
    assert snap["in_flight"] == 0
    version = snap["versions"][served_model.versions[0]]
    assert version["requests_total"] == 23 and version["role"] == "primary"
    assert set(snap["drift"]) <= {"sepal_length", "sepal_width", "petal_length", "petal_width"}

    status, quiet = await _get(jp_fetch, "endpoints", "sidebar-metrics", "metrics")
    assert quiet["requests_total"] == 23 and quiet["requests_per_second"] == 0 and quiet["p99_ms"] is None

    token = jp_serverapp.identity_provider.token
    path = f"{jp_base_url}jmk/api/endpoints/sidebar-metrics/metrics/stream?interval=0.3"
    stream = await EventStream.open(jp_http_port, path, token)
    assert stream.status == 200
    got = [await stream.next(timeout=10) for _ in range(2)]
    assert [e.event for e in got if e] == ["metrics", "metrics"]
    assert got[1].data["time"] > got[0].data["time"] and got[1].data["requests_total"] == 23  # type: ignore[union-attr]
    stream.close()

    for parts, params, code in ((("endpoints", "nope", "metrics"), {}, 404),
                                (("endpoints", "NOPE!", "metrics"), {}, 404),
                                (("endpoints", "sidebar-metrics", "metrics", "stream"), {"interval": "0"}, 400),
                                (("endpoints", "sidebar-metrics", "metrics", "stream"), {"interval": "x"}, 400)):
        status, error = await _get(jp_fetch, *parts, **params)
        assert status == code, (parts, error)

    from jupyter_mlflow_k8s.serving.manager import ServingManager

    await asyncio.to_thread(ServingManager().stop, "sidebar-metrics")
    status, error = await _get(jp_fetch, "endpoints", "sidebar-metrics", "metrics")
    assert status == 409 and "stopped" in error["message"]
