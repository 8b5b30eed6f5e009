"""Prometheus metrics of the serving package on prometheus_client: the exact text exposition (no
``_created`` series), its parse back, escaping, special values, thread safety, the multiprocess modes
of the gauges across forked processes, and the per-feature input statistics."""

from __future__ import annotations

import json
import math
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest

from jupyter_mlflow_k8s.serving.metrics import GAUGE_MODES, FeatureStats, MetricsTextError, Registry, read_samples
from jupyter_mlflow_k8s.serving.workers import multiprocess_metrics

# -- the exposition ---------------------------------------------------------------------------------

EXPECTED = """\
# HELP jmk_requests_total Requests answered, by HTTP status.
# TYPE jmk_requests_total counter
jmk_requests_total{code="200",model="iris",version="1"} 3.0
jmk_requests_total{code="400",model="iris",version="1"} 1.0
jmk_requests_total{code="200",model="iris",version="2"} 1.0
# HELP jmk_request_duration_seconds Time to answer.
# TYPE jmk_request_duration_seconds histogram
jmk_request_duration_seconds_bucket{le="0.01",model="iris",version="1"} 1.0
jmk_request_duration_seconds_bucket{le="0.1",model="iris",version="1"} 3.0
jmk_request_duration_seconds_bucket{le="1.0",model="iris",version="1"} 3.0
jmk_request_duration_seconds_bucket{le="+Inf",model="iris",version="1"} 4.0
jmk_request_duration_seconds_count{model="iris",version="1"} 4.0
jmk_request_duration_seconds_sum{model="iris",version="1"} 2.16
# HELP jmk_requests_in_flight Requests being answered.
# TYPE jmk_requests_in_flight gauge
jmk_requests_in_flight{model="iris",version="1"} 1.0
"""


def test_known_sequence_renders_exactly_without_created_series() -> None:
    registry = Registry()
    requests = registry.counter("jmk_requests_total", "Requests answered, by HTTP status.", ("model", "version", "code"))
    duration = registry.histogram("jmk_request_duration_seconds", "Time to answer.", ("model", "version"), (1, 0.1, 0.01))
    in_flight = registry.gauge("jmk_requests_in_flight", "Requests being answered.", labels=("model", "version"))
    for code in ("200", "200", "400", "200"):
        requests.labels(model="iris", version="1", code=code).inc()
    requests.labels(model="iris", version="2", code=200).inc()  # a non-str label value is str()-ed
    for seconds in (0.005, 0.1, 0.055, 2.0):  # 0.1 sits on a bound: le is "less or equal"
        duration.labels(model="iris", version="1").observe(seconds)
    child = in_flight.labels(model="iris", version="1")
    child.inc()
    child.inc()
    child.dec()
    text = registry.render().decode()
    assert text == EXPECTED
    assert "_created" not in text
    samples = read_samples(text)
    assert samples["jmk_requests_total"][0] == ({"code": "200", "model": "iris", "version": "1"}, 3.0)
    assert samples["jmk_request_duration_seconds_bucket"][3] == ({"le": "+Inf", "model": "iris", "version": "1"}, 4.0)


def test_collect_matches_render_and_is_json() -> None:
    registry = Registry()
    registry.counter("a_total", "A.", ("x",)).labels(x="1").inc(2.5)
    histogram = registry.histogram("h", "H.", buckets=(1.0, 2.0))
    histogram.observe(1.5)
    histogram.observe(7)
    assert registry.collect() == {
        "a_total": [({"x": "1"}, 2.5)],
        "h": [({}, {"buckets": {"1.0": 0.0, "2.0": 1.0, "+Inf": 2.0}, "sum": 8.5, "count": 2.0})],
    }
    json.dumps(registry.collect())


def test_label_values_and_help_are_escaped_and_read_back() -> None:
    registry = Registry()
    nasty = 'C:\\dir "quoted"\nnext line'
    registry.counter("c_total", 'Help with \\ and\nnewline and "quotes".', ("path",)).labels(path=nasty).inc()
    histogram = registry.histogram("h", "H.", ("path",), buckets=(1,))
    histogram.labels(path=nasty).observe(0.5)
    text = registry.render().decode()
    assert '# HELP c_total Help with \\\\ and\\nnewline and "quotes".\n' in text
    assert 'c_total{path="C:\\\\dir \\"quoted\\"\\nnext line"} 1.0\n' in text
    assert 'h_bucket{le="1.0",path="C:\\\\dir \\"quoted\\"\\nnext line"} 1.0\n' in text
    assert read_samples(text)["c_total"] == [({"path": nasty}, 1.0)]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 3.0, -0.0, 1e15, 0.25, 1.5e-7, 2.0**60])
def test_special_values_survive_the_round_trip(value: float) -> None:
    registry = Registry()
    registry.gauge("jmk_feature_drift_psi", "G.").set(value)
    parsed = read_samples(registry.render().decode())["jmk_feature_drift_psi"][0][1]
    assert parsed == value or (math.isnan(parsed) and math.isnan(value))


def test_threads_count_exactly() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "C.", ("t",))
    histogram = registry.histogram("h", "H.", buckets=(0.5,))
    gauge = registry.gauge("jmk_requests_in_flight", "G.")

    def work(i: int) -> None:
        child = counter.labels(t=str(i % 2))  # two threads per child, children created concurrently
        for _ in range(20_000):
            child.inc()
            histogram.observe(0.25)
            gauge.inc()
            gauge.dec(0.5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads interleave inside inc/observe as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    collected = registry.collect()
    assert sorted(v for _, v in collected["c_total"]) == [40_000, 40_000]
    assert collected["h"] == [({}, {"buckets": {"0.5": 80_000, "+Inf": 80_000}, "sum": 20_000.0, "count": 80_000})]
    assert collected["jmk_requests_in_flight"] == [({}, 40_000.0)]


def test_mistakes_are_refused() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "C.", ("a", "b"))
    with pytest.raises(ValueError, match="Incorrect label"):
        counter.labels(a="1")
    with pytest.raises(ValueError, match="only be incremented by non-negative"):
        counter.labels(a="1", b="2").inc(-1)
    assert registry.counter("c_total", "other help", ("a", "b")) is counter  # get-or-create
    with pytest.raises(ValueError, match="already exists"):
        registry.counter("c_total", "C.", ("a",))
    with pytest.raises(ValueError, match="no multiprocess mode"):
        registry.gauge("jmk_uptime_seconds", "a gauge nobody said how to merge")
    registry.histogram("h2", "x", buckets=(1,))
    with pytest.raises(ValueError, match="already exists"):
        registry.histogram("h2", "x", buckets=(2,))


def test_bad_text_names_its_line() -> None:
    assert read_samples('# HELP x y\n\nx{a="1",} 2 1700000000000\ny -Inf\n') == {"x": [({"a": "1"}, 2.0)],
                                                                                  "y": [({}, -math.inf)]}
    for bad, line in (('x{a="1" 2', 1), ("ok 1\nx", 2), ("ok 1\n\nx abc", 3), ("x{a=1} 2", 1), ("<html>", 1)):
        with pytest.raises(MetricsTextError, match=f"line {line} is not a Prometheus sample"):
            read_samples(bad)


# -- several processes: prometheus_client's multiprocess mode ---------------------------------------


def _worker(role: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """A forked process: its own registry, values that the parent's scrape merges by mode."""
    registry = Registry()
    labels = {"model": "m", "version": "1"}
    registry.counter("jmk_requests_total", "R.", ("model", "version")).labels(**labels).inc(3 if role == "a" else 4)
    registry.gauge("jmk_requests_in_flight", "F.", ("model", "version")).labels(**labels).set(1)
    registry.gauge("jmk_model_info", "I.", ("model", "version")).labels(**labels).set(1)
    registry.gauge("jmk_feature_drift_psi", "P.", ("model", "version")).labels(**labels).set(
        0.5 if role == "a" else 0.2)
    registry.gauge("jmk_input_feature_min", "M.", ("model", "version")).labels(**labels).set(
        -1.0 if role == "a" else 2.0)
    registry.histogram("h", "H.", buckets=(1.0,)).observe(0.5 if role == "a" else 3.0)
    results.put(role)


def test_forked_processes_merge_by_gauge_mode_and_a_dead_ones_live_gauges_go() -> None:
    from prometheus_client.multiprocess import mark_process_dead

    assert {"livesum", "max", "livemax", "livemin", "sum"} >= set(GAUGE_MODES.values())
    fork = multiprocessing.get_context("fork")
    with multiprocess_metrics() as directory:
        assert directory is not None
        results = fork.Queue()
        processes = [fork.Process(target=_worker, args=(role, results)) for role in ("a", "b")]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
        assert sorted(results.get(timeout=5) for _ in processes) == ["a", "b"]
        collected = Registry().collect()  # a scrape: every process's files in the directory
        labels = {"model": "m", "version": "1"}
        assert collected["jmk_requests_total"] == [(labels, 7.0)]  # summed
        assert collected["jmk_requests_in_flight"] == [(labels, 2.0)]  # livesum
        assert collected["jmk_model_info"] == [(labels, 1.0)]  # max: one row per version, not per worker
        assert collected["jmk_feature_drift_psi"] == [(labels, 0.5)]  # livemax
        assert collected["jmk_input_feature_min"] == [(labels, -1.0)]  # livemin
        assert collected["h"] == [({}, {"buckets": {"1.0": 1.0, "+Inf": 2.0}, "sum": 3.5, "count": 2.0})]

        mark_process_dead(processes[0].pid, directory)  # what the supervisor does for a dead worker
        collected = Registry().collect()
        assert collected["jmk_requests_total"] == [(labels, 7.0)]  # its counts stay
        assert collected["jmk_model_info"] == [(labels, 1.0)]
        assert collected["jmk_requests_in_flight"] == [(labels, 1.0)]  # its live gauges go
        assert collected["jmk_feature_drift_psi"] == [(labels, 0.2)]
        assert collected["jmk_input_feature_min"] == [(labels, 2.0)]
        assert "_created" not in Registry().render().decode()
    assert not Path(directory).exists()


def test_one_process_ignores_an_inherited_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with multiprocess_metrics(enabled=False) as directory:
        assert directory is None
        registry = Registry()
        registry.counter("c_total", "C.").inc()
        assert registry.collect() == {"c_total": [({}, 1.0)]}
    assert list(tmp_path.iterdir()) == []
    import os

    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)  # put back


# -- per-feature input statistics -------------------------------------------------------------------


def _feature(collected: dict[str, list[tuple[dict[str, str], object]]], name: str, feature: str) -> object:
    return next(v for labels, v in collected[name] if labels["feature"] == feature)


def test_feature_stats_sums_and_window_extremes() -> None:
    registry = Registry()
    stats = FeatureStats(registry, "iris", "3", window=4)
    stats.update({"x": np.array([1.0, -2.0, 3.0]), "y": np.array([10, 20]), "label": np.array(["a", "b"])})
    stats.update({"x": np.array([np.nan, 4.0, np.inf, 0.5]), "y": np.array([], dtype=float)})
    stats.publish()
    collected = registry.collect()
    assert _feature(collected, "jmk_input_feature_count_total", "x") == 5
    assert _feature(collected, "jmk_input_feature_sum", "x") == 6.5
    assert _feature(collected, "jmk_input_feature_sum_squares", "x") == 1 + 4 + 9 + 16 + 0.25
    assert _feature(collected, "jmk_input_feature_min", "x") == -2.0  # window: -2, 3, 4, 0.5
    assert _feature(collected, "jmk_input_feature_max", "x") == 4.0
    assert _feature(collected, "jmk_input_feature_sum", "y") == 30
    assert (_feature(collected, "jmk_input_feature_min", "y"), _feature(collected, "jmk_input_feature_max", "y")) == (
        10.0,
        20.0,
    )  # a window not yet full
    assert all(labels["feature"] != "label" for labels, _ in collected["jmk_input_feature_count_total"])
    stats.update({"x": np.array([0.0, 1.0, 2.0])})  # -2, 3 and 4 slide out of the window of 4
    stats.publish()
    collected = registry.collect()
    assert _feature(collected, "jmk_input_feature_min", "x") == 0.0
    assert _feature(collected, "jmk_input_feature_max", "x") == 2.0
    assert _feature(collected, "jmk_input_feature_count_total", "x") == 8
    text = registry.render().decode()
    assert "# TYPE jmk_input_feature_sum gauge" in text  # a sum of negative inputs goes down
    assert "# TYPE jmk_input_feature_sum_squares gauge" in text
    assert "# TYPE jmk_input_feature_count_total counter" in text
    assert 'jmk_input_feature_max{feature="x",model="iris",version="3"} 2.0\n' in text


def test_feature_stats_versions_share_a_registry_and_features_are_capped() -> None:
    registry = Registry()
    one, two = FeatureStats(registry, "m", "1", max_features=2), FeatureStats(registry, "m", "2")
    one.update({"a": np.ones(3), "b": np.ones(3), "c": np.ones(3)})
    two.update({"a": np.full(2, 5.0)})
    counts = registry.collect()["jmk_input_feature_count_total"]
    assert counts == [
        ({"model": "m", "version": "1", "feature": "a"}, 3),
        ({"model": "m", "version": "1", "feature": "b"}, 3),
        ({"model": "m", "version": "2", "feature": "a"}, 2),
    ]
