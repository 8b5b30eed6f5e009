"""A real Prometheus scraping a served model: every query of docs/serving.md, checked against the traffic sent.

The server (``--workers 1`` and ``--workers 2``) answers known traffic; Prometheus (Debian's
package, :mod:`tests.prometheus_server`) scrapes it every second; then every expression of
:data:`jupyter_mlflow_k8s.serving.promql.QUERIES` and every alert of ``ALERTS`` goes through
Prometheus' HTTP API, evaluated at one instant, and each answer is checked:

- the raw counters and histograms equal what was sent, exactly (with two workers this is what
  shows that one scrape sees both);
- the ``rate()`` expressions agree with the raw increases within what ``rate()``'s extrapolation
  allows: Prometheus stretches each series' increase from its first to its last sample in the
  range by at most 1.1 average scrape intervals at each end, so each series' rate is its raw
  increase times a factor in [1, 1 + 2.2/(n - 1)] (n samples in the range), and a ratio of sums
  lies within that factor of the raw ratio; a quantile lies in the buckets such a factor can reach;
- PSI equals, exactly, the PSI of the rows each worker's drift window holds (the window is
  ``len(frame)`` rows and the drift traffic is whole shifted copies of the training frame, so a
  worker that got one holds exactly one) and the value the server's own ``/metrics`` shows. Each
  worker keeps its own window, so each must get at least one whole frame (300 rows; 600 in all
  with two workers): frames are sent ``workers`` at a time until ``jmk_drift_window_rows``, summed
  over the workers, says every window is full (the small requests hold fewer rows than a window).

Before the measured traffic one good and one bad request are sent and scraped, so every series
(each status code, each histogram) is already in Prometheus: a series that first appears with its
final value has no increase for ``rate()`` to see.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_server import PrometheusServer, Sample

from jupyter_mlflow_k8s.serving.drift import DriftMonitor
from jupyter_mlflow_k8s.serving.promql import ALERTS, BY, ERROR_RATIO_THRESHOLD, PSI_THRESHOLD, QUERIES
from jupyter_mlflow_k8s.tracking.baseline import feature_summary
from tests.serving_fixtures import Served
from tests.test_serving_server import PYTHON, Server, _concurrently, parse_metrics, split, value

pytestmark = pytest.mark.slow

GOOD, BAD = 40, 10  # measured requests: good ones of 1..5 rows, bad ones (400) of two kinds
SHIFT = 3.0  # added to petal_length in the drift traffic: about 1.8 of its standard deviations
SHIFTED, UNSHIFTED = "petal_length", "sepal_width"
SAMPLES = 12  # scrapes of every series before the queries: rate() stretches increases by at most 20% then
ROUNDS = 30  # the most rounds of drift traffic before giving up on every worker getting a shifted frame


@pytest.fixture
def env(mlflow_uri: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "JMK_STATE_DIR": str(tmp_path / "state"),
            "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


class Traffic:
    """What was sent to one server, and what the client measured."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.good = self.bad = self.rows = 0
        self.latencies: list[float] = []

    def post(self, body: Any, content_type: str = "application/json", expect: int = 200) -> None:
        started = time.perf_counter()
        response = self.server.post(body, content_type)
        self.latencies.append(time.perf_counter() - started)
        assert response.status_code == expect, response.text
        if expect == 200:
            self.good += 1
            self.rows += len(response.json()["predictions"])
        else:
            self.bad += 1

    def bad_request(self, i: int) -> None:
        if i % 2:
            self.post({"dataframe_records": [{"sepal_length": 1.0}]}, expect=400)  # columns missing
        else:
            self.post(b"{not json", expect=400)


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def served(served_model: Served, env: dict[str, str], workers: int) -> Iterator[Server]:
    window = len(served_model.frame)  # one whole frame: a worker's window is its last shifted frame
    server = Server(served_model.uri("1"), "--workers", str(workers), "--drift-window", str(window), env=env)
    yield server
    server.stop()


def test_every_documented_query_answers_as_the_traffic_says(served_model: Served, served: Server, workers: int,
                                                            tmp_path: Path) -> None:
    labels = {"model": served_model.name, "version": "1"}
    frame = served_model.frame
    traffic = Traffic(served)
    with PrometheusServer([f"127.0.0.1:{served.port}"], tmp_path / "prometheus") as prometheus:
        prometheus.wait_for('up{job="jmk-serving"}', lambda s: [v for _, v in s] == [1.0], why="the first scrape")
        traffic.post(split(frame.head(1)))  # the priming pair: every series exists before the measured traffic
        traffic.bad_request(0)
        _scraped(prometheus, traffic)
        for i in range(GOOD + BAD):
            if i % 5 == 4:
                traffic.bad_request(i)
            else:
                rows = 1 + i % 5
                traffic.post(split(frame.iloc[i:i + rows]))
        assert traffic.rows < len(frame), "the small requests must not fill a drift window"
        shifted = frame.assign(**{SHIFTED: frame[SHIFTED] + SHIFT})
        _send_drift_traffic(served, traffic, shifted, workers, labels)
        _scraped(prometheus, traffic)
        expected_psi = _psi_of_window(served_model, shifted)
        for feature, psi in expected_psi.items():
            prometheus.wait_for(f'{QUERIES["drift_psi"]}', lambda s, f=feature, p=psi: any(
                ls.get("feature") == f and math.isclose(v, p, rel_tol=1e-9) for ls, v in s),
                why=f"PSI of {feature} after the drift traffic")
        prometheus.wait_for('count_over_time(jmk_requests_total{code="400"}[5m])',
                            lambda s: len(s) == 1 and s[0][1] >= SAMPLES, why=f"{SAMPLES} scrapes of every series")
        at = time.time()
        answers = {name: _by_labels(prometheus.query(expr, at=at), labels) for name, expr in QUERIES.items()}
        checked = _check(prometheus, at, answers, traffic, labels, expected_psi, served)
        assert checked == set(QUERIES), f"queries not checked: {set(QUERIES) - checked}"
        firing = {alert.name: prometheus.query(alert.expr, at=at) for alert in ALERTS}
        assert [ls for ls, _ in firing["JMKEndpointErrorRatio"]] == [labels], firing
        drifting = sorted(ls["feature"] for ls, _ in firing["JMKFeatureDrift"])
        assert drifting == sorted(f for f, p in expected_psi.items() if p > PSI_THRESHOLD), firing
        assert SHIFTED in drifting and UNSHIFTED not in drifting


def _scraped(prometheus: PrometheusServer, traffic: Traffic) -> None:
    """Wait until Prometheus' latest scrape has every request sent so far (all workers in one scrape)."""
    total = traffic.good + traffic.bad
    prometheus.wait_for("sum(jmk_requests_total)", lambda s: [v for _, v in s] == [float(total)],
                        why=f"a scrape with all {total} requests")


def _send_drift_traffic(server: Server, traffic: Traffic, shifted: Any, workers: int, labels: dict[str, str]) -> None:
    """Whole shifted frames, ``workers`` at a time, until every worker's drift window is full (holds one)."""
    window = len(shifted)
    for _ in range(ROUNDS):
        answers = asyncio.run(_concurrently(server.url, [split(shifted)] * workers))
        assert [status for status, _ in answers] == [200] * workers, answers
        traffic.good += workers
        traffic.rows += window * workers
        deadline = time.monotonic() + 5  # with several workers each refreshes its drift gauges once a second
        while time.monotonic() < deadline:
            rows = value(served_metrics(server), "jmk_drift_window_rows", **labels)
            if rows == window * workers:  # the small requests hold fewer rows than a window: each got a frame
                return
            time.sleep(0.2)
    pytest.fail(f"after {ROUNDS} rounds of {workers} concurrent requests some worker never got one: "
                f"jmk_drift_window_rows is {rows}, not {window * workers}")


def served_metrics(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse_metrics(requests.get(f"{server.url}/metrics", timeout=30).text)


def _psi_of_window(served_model: Served, shifted: Any) -> dict[str, float]:
    """PSI per feature of a window holding exactly the shifted frame, against the registered baseline."""
    monitor = DriftMonitor(feature_summary(served_model.frame), window=len(shifted))
    monitor.update({c: shifted[c].to_numpy() for c in shifted.columns})
    return monitor.psi()


def _by_labels(samples: list[Sample], labels: dict[str, str]) -> list[Sample]:
    """The samples of our model version, each with the labels ``by (model, version)`` must leave."""
    ours = [(ls, v) for ls, v in samples if ls.get("model") == labels["model"] and ls.get("version") == labels["version"]]
    assert ours, f"no series for {labels} in {samples}"
    for ls, _ in ours:
        assert set(ls) - {"feature"} == {"model", "version"}, f"{ls}: every query keeps {BY} (and nothing else)"
    return ours


def _one(samples: list[Sample]) -> float:
    assert len(samples) == 1, samples
    return samples[0][1]


def _check(prometheus: PrometheusServer, at: float, answers: dict[str, list[Sample]], traffic: Traffic,
           labels: dict[str, str], expected_psi: dict[str, float], server: Server) -> set[str]:
    """Check each query's answer; returns the names checked."""
    selector = f'{{model="{labels["model"]}",version="{labels["version"]}"}}'
    checked: set[str] = set()
    # the raw counters: exactly the traffic, in one scrape
    codes = {ls["code"]: v for ls, v in prometheus.query(f"sum by (code) (jmk_requests_total{selector})", at=at)}
    assert {c: v for c, v in codes.items() if v} == {"200": traffic.good, "400": traffic.bad}
    assert prometheus.value(f"sum(jmk_request_duration_seconds_count{selector})", at=at) == traffic.good + traffic.bad
    assert prometheus.value(f"sum(jmk_batch_size_sum{selector})", at=at) == traffic.rows

    requests_5m = _increases(prometheus, f"jmk_requests_total{selector}[5m]", at)
    slack = _slack(requests_5m)
    errors = sum(d for ls, (_, d, _) in requests_5m if not ls["code"].startswith("2"))
    total = sum(d for _, (_, d, _) in requests_5m)
    unseen = sum(first for ls, (first, _, _) in requests_5m if not ls["code"].startswith("2"))
    assert errors == traffic.bad - unseen, "rate() sees the bad requests after the first sample of their series"
    ratio = _one(answers["error_ratio"])
    assert errors / total / slack <= ratio <= errors / total * slack, (ratio, errors, total, slack)
    assert ratio > ERROR_RATIO_THRESHOLD
    checked.add("error_ratio")

    requests_1m = _increases(prometheus, f"jmk_requests_total{selector}[1m]", at)
    rate = _one(answers["request_rate"])
    seen = sum(d for _, (_, d, _) in requests_1m)
    assert seen / 60 / _slack(requests_1m) <= rate <= seen / 60 * _slack(requests_1m), (rate, seen)
    assert rate > 0
    checked.add("request_rate")

    assert _one(answers["in_flight"]) == 0
    checked.add("in_flight")

    sums = _increases(prometheus, f"jmk_batch_size_sum{selector}[5m]", at)
    counts = _increases(prometheus, f"jmk_batch_size_count{selector}[5m]", at)
    [(_, (_, rows, _))], [(_, (_, calls, _))] = sums, counts
    mean = _one(answers["batch_size_mean"])
    factor = max(_slack(sums), _slack(counts))
    assert rows / calls / factor <= mean <= rows / calls * factor, (mean, rows, calls)
    checked.add("batch_size_mean")

    for name, histogram, q in (("latency_p50", "jmk_request_duration_seconds", 0.5),
                               ("latency_p90", "jmk_request_duration_seconds", 0.9),
                               ("latency_p99", "jmk_request_duration_seconds", 0.99),
                               ("batch_size_p90", "jmk_batch_size", 0.9)):
        buckets = _increases(prometheus, f"{histogram}_bucket{selector}[5m]", at)
        low, high = _quantile_bounds(buckets, q)
        answer = _one(answers[name])
        assert low <= answer <= high, f"{name} = {answer}, outside [{low}, {high}] ({buckets})"
        checked.add(name)
    slowest = max(traffic.latencies)  # every server-side duration is at most its request's client-side latency
    bounds = sorted(float(ls["le"]) for ls, _ in buckets if ls["le"] != "+Inf")
    if slowest <= bounds[-1]:
        assert _one(answers["latency_p99"]) <= bounds[bisect.bisect_left(bounds, slowest)]
    assert _one(answers["latency_p50"]) <= _one(answers["latency_p90"]) <= _one(answers["latency_p99"])

    psi = {ls["feature"]: v for ls, v in answers["drift_psi"]}
    assert psi.keys() == expected_psi.keys()
    own = served_metrics(server)
    for feature, expected in expected_psi.items():
        assert math.isclose(psi[feature], expected, rel_tol=1e-9), (feature, psi[feature], expected)
        assert math.isclose(value(own, "jmk_feature_drift_psi", feature=feature, **labels), psi[feature],
                            rel_tol=1e-9), feature
    assert psi[SHIFTED] > PSI_THRESHOLD > psi[UNSHIFTED]
    checked.add("drift_psi")
    return checked


#: One series' raw samples in a range: (first value, increase from first to last sample, number of samples).
Increase = tuple[float, float, int]


def _increases(prometheus: PrometheusServer, selector: str, at: float) -> list[tuple[dict[str, str], Increase]]:
    """Each series of a range selector: its first value, its raw increase and its sample count (no resets here)."""
    data = prometheus.api("query", query=selector, time=f"{at:.3f}")
    assert data["resultType"] == "matrix", data
    result = []
    for item in data["result"]:
        values = [float(v) for _, v in item["values"]]
        assert values == sorted(values), f"a counter went down (a reset): {item}"
        result.append((dict(item["metric"]), (values[0], values[-1] - values[0], len(values))))
    assert result, f"no samples for {selector}"
    return result


def _slack(series: list[tuple[dict[str, str], Increase]]) -> float:
    """The most ``rate()`` can stretch these series' raw increases: 1 + 2.2 / (n - 1) for the fewest samples n."""
    fewest = min(n for _, (_, _, n) in series)
    assert fewest >= 3, f"too few samples in the range for rate(): {series}"
    return 1 + 2.2 / (fewest - 1)


def _quantile_bounds(buckets: list[tuple[dict[str, str], Increase]], q: float) -> tuple[float, float]:
    """Where ``histogram_quantile(q, ...)`` over the rates of these cumulative buckets can land.

    Each bucket's rate is its raw increase times its own factor in [1, slack], so the fraction
    below a bound moves by at most that factor either way: the quantile is in a bucket between the
    first reaching q / slack and the first reaching q * slack, or the first whose samples are the
    +Inf bucket's (the same samples get the same factor, so that bucket reaches every fraction).
    """
    slack = _slack(buckets)
    ordered = sorted(buckets, key=lambda bucket: float(bucket[0]["le"]))
    cumulative = [(float(ls["le"]), d) for ls, (_, d, _) in ordered]
    total = cumulative[-1][1]
    assert total > 0, buckets
    uppers = [le for le, _ in cumulative]

    def first_reaching(fraction: float) -> int:
        return next(i for i, (_, c) in enumerate(cumulative) if c >= fraction * total)

    top = next(d for ls, d in buckets if ls["le"] == "+Inf")  # a bucket with +Inf's samples has +Inf's rate
    low_index = first_reaching(q / slack)
    high_index = min(first_reaching(q * slack) if q * slack <= 1 else len(cumulative) - 1,
                     next(i for i, (ls, d) in enumerate(ordered) if d == top))
    low = uppers[low_index - 1] if low_index > 0 else 0.0
    high = uppers[high_index] if math.isfinite(uppers[high_index]) else uppers[-2]  # +Inf answers the last bound
    return min(low, high), high


def test_psi_traffic_is_whole_frames(served_model: Served) -> None:
    """The drift check's premise: a window of exactly the unshifted frame has tiny PSI, and a shifted one large."""
    frame = served_model.frame
    same = _psi_of_window(served_model, frame)
    moved = _psi_of_window(served_model, frame.assign(**{SHIFTED: frame[SHIFTED] + SHIFT}))
    assert max(same.values()) < 0.01
    assert moved[SHIFTED] > PSI_THRESHOLD and moved[UNSHIFTED] == same[UNSHIFTED]
    assert np.isfinite(list(moved.values())).all()
