"""Prometheus metrics of the serving package: exact text exposition, a strict parse of it, escaping,
special values, thread safety and the per-feature input statistics."""

from __future__ import annotations

import json
import math
import re
import threading

import numpy as np
import pytest

from jupyter_mlflow_k8s.serving.metrics import FeatureStats, Registry, format_value

# -- a strict parser of the text format 0.0.4 (prometheus_client is not installed here) -------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)\Z")
_VALUE = re.compile(r"[+-]?Inf\Z|NaN\Z|[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def _value(text: str) -> float:
    assert _VALUE.match(text), f"not a Prometheus float: {text!r}"
    return float(text.replace("Inf", "inf"))


def parse(text: str) -> dict[str, dict[str, object]]:
    """``{family: {"type", "help", "samples": [(name, labels, value)]}}``; fails on anything off-format."""
    assert text.endswith("\n")
    families: dict[str, dict[str, object]] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in families, line
            assert re.fullmatch(r"(?:[^\\\n]|\\[\\n])*", help_text), f"bad escape in HELP: {line}"
            families[name] = {"help": _unescape(help_text), "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and "type" not in families[name], f"TYPE must follow its HELP: {line}"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name]["type"] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            assert current is not None and "type" in families[current]
            name = match.group(1)
            family_type = families[current]["type"]
            allowed = {current} if family_type != "histogram" else {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
            assert name in allowed, f"{name} outside its family {current}"
            labels = {m.group(1): _unescape(m.group(2)) for m in re.finditer(_LABEL, match.group(2) or "")}
            assert len(labels) == len(re.findall(_LABEL, match.group(2) or "")), "repeated label"
            samples = families[current]["samples"]
            assert isinstance(samples, list)
            samples.append((name, labels, _value(match.group(match.lastindex or 0))))
    for name, family in families.items():
        if family["type"] == "histogram":
            _check_histogram(name, family["samples"])  # type: ignore[arg-type]
    return families


def _check_histogram(name: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
    """Buckets cumulative and ending in +Inf, equal to _count, per label set."""
    series: dict[tuple[tuple[str, str], ...], list[tuple[str, dict[str, str], float]]] = {}
    for sample in samples:
        key = tuple(sorted((k, v) for k, v in sample[1].items() if k != "le"))
        series.setdefault(key, []).append(sample)
    for rows in series.values():
        buckets = [(float(s[1]["le"].replace("Inf", "inf")), s[2]) for s in rows if s[0] == f"{name}_bucket"]
        assert buckets and buckets[-1][0] == math.inf
        assert [b[0] for b in buckets] == sorted(b[0] for b in buckets)
        assert [b[1] for b in buckets] == sorted(b[1] for b in buckets)
        count = [s[2] for s in rows if s[0] == f"{name}_count"]
        assert count == [buckets[-1][1]]
        assert len([s for s in rows if s[0] == f"{name}_sum"]) == 1


# -- the exposition ---------------------------------------------------------------------------------

EXPECTED = """\
# HELP jmk_requests_total Requests answered, by HTTP status.
# TYPE jmk_requests_total counter
jmk_requests_total{model="iris",version="1",code="200"} 3
jmk_requests_total{model="iris",version="1",code="400"} 1
jmk_requests_total{model="iris",version="2",code="200"} 1
# HELP jmk_request_duration_seconds Time to answer.
# TYPE jmk_request_duration_seconds histogram
jmk_request_duration_seconds_bucket{model="iris",version="1",le="0.01"} 1
jmk_request_duration_seconds_bucket{model="iris",version="1",le="0.1"} 3
jmk_request_duration_seconds_bucket{model="iris",version="1",le="1"} 3
jmk_request_duration_seconds_bucket{model="iris",version="1",le="+Inf"} 4
jmk_request_duration_seconds_sum{model="iris",version="1"} 2.16
jmk_request_duration_seconds_count{model="iris",version="1"} 4
# HELP jmk_requests_in_flight Requests being answered.
# TYPE jmk_requests_in_flight gauge
jmk_requests_in_flight{model="iris",version="1"} 1
# HELP jmk_uptime_seconds No labels.
# TYPE jmk_uptime_seconds gauge
jmk_uptime_seconds 0
"""


def test_known_sequence_renders_exactly() -> None:
    registry = Registry()
    requests = registry.counter("jmk_requests_total", "Requests answered, by HTTP status.", ("model", "version", "code"))
    duration = registry.histogram("jmk_request_duration_seconds", "Time to answer.", ("model", "version"), (1, 0.1, 0.01))
    in_flight = registry.gauge("jmk_requests_in_flight", "Requests being answered.", labels=("model", "version"))
    registry.gauge("jmk_uptime_seconds", "No labels.")
    for code in ("200", "200", "400", "200"):
        requests.labels(model="iris", version="1", code=code).inc()
    requests.labels(model="iris", version="2", code=200).inc()  # a non-str label value is str()-ed
    for seconds in (0.005, 0.1, 0.055, 2.0):  # 0.1 sits on a bound: le is "less or equal"
        duration.labels(model="iris", version="1").observe(seconds)
    child = in_flight.labels(model="iris", version="1")
    child.inc()
    child.inc()
    child.dec()
    assert registry.render() == EXPECTED
    families = parse(registry.render())
    assert families["jmk_requests_total"]["type"] == "counter"
    assert families["jmk_request_duration_seconds"]["samples"][3] == (  # type: ignore[index]
        "jmk_request_duration_seconds_bucket",
        {"model": "iris", "version": "1", "le": "+Inf"},
        4.0,
    )


def test_collect_matches_render_and_is_json() -> None:
    registry = Registry()
    registry.counter("a_total", "A.", ("x",)).labels(x="1").inc(2.5)
    histogram = registry.histogram("h", "H.", buckets=(1.0, 2.0))
    histogram.observe(1.5)
    histogram.observe(7)
    assert registry.collect() == {
        "a_total": [({"x": "1"}, 2.5)],
        "h": [({}, {"buckets": {"1": 0, "2": 1, "+Inf": 2}, "sum": 8.5, "count": 2})],
    }
    json.dumps(registry.collect())


def test_label_values_and_help_are_escaped() -> None:
    registry = Registry()
    nasty = 'C:\\dir "quoted"\nnext line'
    registry.gauge("g", 'Help with \\ and\nnewline and "quotes".', ("path",)).labels(path=nasty).set(1)
    histogram = registry.histogram("h", "H.", ("path",), buckets=(1,))
    histogram.labels(path=nasty).observe(0.5)
    text = registry.render()
    assert '# HELP g Help with \\\\ and\\nnewline and "quotes".\n' in text
    assert 'g{path="C:\\\\dir \\"quoted\\"\\nnext line"} 1\n' in text
    assert 'h_bucket{path="C:\\\\dir \\"quoted\\"\\nnext line",le="1"} 1\n' in text
    families = parse(text)
    assert families["g"]["help"] == 'Help with \\ and\nnewline and "quotes".'
    assert families["g"]["samples"] == [("g", {"path": nasty}, 1.0)]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (3.0, "3"),
        (-0.0, "0"),
        (1e15, "1000000000000000"),
        (0.25, "0.25"),
        (1.5e-7, "1.5e-07"),
        (2.0**60, "1.152921504606847e+18"),
    ],
)
def test_special_and_integral_values(value: float, text: str) -> None:
    assert format_value(value) == text
    registry = Registry()
    registry.gauge("g", "G.").set(value)
    assert registry.render().endswith(f"\ng {text}\n")
    parsed = parse(registry.render())["g"]["samples"][0][2]  # type: ignore[index]
    assert parsed == value or (math.isnan(parsed) and math.isnan(value))


def test_histogram_default_and_infinite_buckets() -> None:
    registry = Registry()
    histogram = registry.histogram("h_seconds", "H.", buckets=(0.5, math.inf, 0.5))
    assert histogram.buckets == (0.5, math.inf)
    histogram.observe(math.inf)
    assert 'h_seconds_bucket{le="+Inf"} 1\nh_seconds_sum +Inf\nh_seconds_count 1\n' in registry.render()
    default = registry.histogram("d", "D.")
    assert default.buckets[0] == 0.005 and default.buckets[-1] == math.inf and len(default.buckets) == 15
    parse(registry.render())


def test_threads_count_exactly() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "C.", ("t",))
    histogram = registry.histogram("h", "H.", buckets=(0.5,))
    gauge = registry.gauge("g", "G.")

    def work(i: int) -> None:
        child = counter.labels(t=str(i % 2))  # two threads per child, children created concurrently
        for _ in range(20_000):
            child.inc()
            histogram.observe(0.25)
            gauge.inc()
            gauge.dec(0.5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    # a tiny switch interval makes the threads interleave inside inc/observe as often as possible
    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
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
    assert collected["g"] == [({}, 40_000.0)]


def test_mistakes_are_refused() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "C.", ("a", "b"))
    with pytest.raises(ValueError, match="needs labels"):
        counter.labels(a="1")
    with pytest.raises(ValueError, match="needs labels"):
        counter.labels(a="1", b="2", c="3")
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels(a="1", b="2").inc(-1)
    with pytest.raises(ValueError, match=r"use \.labels"):
        counter.inc()
    assert registry.counter("c_total", "other help", ("a", "b")) is counter  # get-or-create
    with pytest.raises(ValueError, match="already exists"):
        registry.gauge("c_total", "C.", ("a", "b"))
    with pytest.raises(ValueError, match="already exists"):
        registry.counter("c_total", "C.", ("a",))
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.gauge("1bad-name", "x")
    with pytest.raises(ValueError, match="invalid label name"):
        registry.gauge("g", "x", ("__reserved",))
    with pytest.raises(ValueError, match="'le'"):
        registry.histogram("h", "x", ("le",))
    registry.histogram("h2", "x", buckets=(1,))
    with pytest.raises(ValueError, match="already exists"):
        registry.histogram("h2", "x", buckets=(2,))


def test_gauge_function_is_read_at_render() -> None:
    registry = Registry()
    values = iter([1.0, 2.0])
    registry.gauge("g", "G.").labels().set_function(lambda: next(values))
    assert registry.render().endswith("g 1\n")
    assert registry.collect()["g"] == [({}, 2.0)]


def test_empty_registry_and_unused_labelled_metric() -> None:
    assert Registry().render() == ""
    registry = Registry()
    registry.counter("c_total", "C.", ("a",))
    assert registry.render() == "# HELP c_total C.\n# TYPE c_total counter\n"
    parse(registry.render())


# -- per-feature input statistics -------------------------------------------------------------------


def _feature(collected: dict[str, list[tuple[dict[str, str], object]]], name: str, feature: str) -> object:
    return next(v for labels, v in collected[name] if labels["feature"] == feature)


def test_feature_stats_sums_and_window_extremes() -> None:
    registry = Registry()
    stats = FeatureStats(registry, "iris", "3", window=4)
    stats.update({"x": np.array([1.0, -2.0, 3.0]), "y": np.array([10, 20]), "label": np.array(["a", "b"])})
    stats.update({"x": np.array([np.nan, 4.0, np.inf, 0.5]), "y": np.array([], dtype=float)})
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
    collected = registry.collect()
    assert _feature(collected, "jmk_input_feature_min", "x") == 0.0
    assert _feature(collected, "jmk_input_feature_max", "x") == 2.0
    assert _feature(collected, "jmk_input_feature_count_total", "x") == 8
    families = parse(registry.render())
    assert families["jmk_input_feature_sum"]["type"] == "gauge"  # a sum of negative inputs goes down
    assert families["jmk_input_feature_count_total"]["type"] == "counter"
    assert ("jmk_input_feature_max", {"model": "iris", "version": "3", "feature": "x"}, 2.0) in families[
        "jmk_input_feature_max"
    ]["samples"]  # type: ignore[operator]


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
