"""Drift of served inputs: PSI per feature against the baseline ``feature_summary`` stored at registration."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from jupyter_mlflow_k8s.serving.drift import EPSILON, DriftMonitor, psi
from jupyter_mlflow_k8s.serving.metrics import Registry
from jupyter_mlflow_k8s.serving.window import SlidingWindow
from jupyter_mlflow_k8s.tracking.baseline import feature_summary


def _baseline(rng: np.random.Generator, rows: int = 5000) -> dict[str, object]:
    """A baseline as the server gets it: feature_summary of a sample, through JSON."""
    frame = pd.DataFrame(
        {
            "x": rng.normal(10.0, 2.0, rows),
            "y": rng.exponential(1.0, rows),
            "const": np.full(rows, 3.0),
            "name": ["a"] * rows,
        }
    )
    loaded: dict[str, object] = json.loads(json.dumps(feature_summary(frame)))
    return loaded


def test_same_distribution_gives_psi_near_zero() -> None:
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(_baseline(rng), window=1000)
    assert monitor.available and monitor.features == ("x", "y", "const")
    for _ in range(10):  # 1000 rows in batches of 100, the way the server feeds it
        monitor.update({"x": rng.normal(10.0, 2.0, 100), "y": rng.exponential(1.0, 100), "const": np.full(100, 3.0)})
    values = monitor.psi()
    assert set(values) == {"x", "y", "const"}
    assert values["x"] < 0.1 and values["y"] < 0.1
    assert values["const"] == 0.0
    assert monitor.rows == 1000


def test_mean_shift_raises_psi_monotonically() -> None:
    rng = np.random.default_rng(2)
    baseline = _baseline(rng)
    fresh = rng.normal(10.0, 2.0, 1000)
    values = []
    for shift in (0.0, 0.25, 0.5, 1.0, 2.0):  # in standard deviations
        monitor = DriftMonitor(baseline, window=1000)
        monitor.update({"x": fresh + shift * 2.0})
        values.append(monitor.psi()["x"])
    assert values[0] < 0.1
    assert values[3] > 0.25  # one standard deviation is clearly drift
    assert values == sorted(values) and len(set(values)) == len(values), values


def test_values_beyond_the_baseline_range_count_in_the_outer_bins() -> None:
    baseline = {"features": {"x": {"bin_edges": [0.0, 1.0, 2.0], "bin_fractions": [0.5, 0.5]}}}
    monitor = DriftMonitor(baseline)
    monitor.update({"x": np.array([-100.0, 0.5, 1.5, 1e9])})  # -100 in [0, 1)'s bin, 1e9 in [1, 2]'s
    assert monitor.psi() == {"x": 0.0}
    monitor = DriftMonitor(baseline)
    monitor.update({"x": np.array([-5.0, -6.0])})  # all in the first bin: (1 - .5) ln(1/.5) + (e - .5) ln(e/.5)
    expected = 0.5 * math.log(2.0) + (EPSILON - 0.5) * math.log(EPSILON / 0.5)
    assert monitor.psi()["x"] == pytest.approx(expected)


def test_constant_feature_drifts_when_it_changes() -> None:
    monitor = DriftMonitor(_baseline(np.random.default_rng(3)))
    monitor.update({"const": np.array([3.0, 3.0, 3.5])})
    assert monitor.psi()["const"] > 0.25


def test_window_slides_old_rows_out() -> None:
    rng = np.random.default_rng(4)
    monitor = DriftMonitor(_baseline(rng), window=500)
    monitor.update({"x": rng.normal(14.0, 2.0, 500)})  # shifted by 2 std
    assert monitor.psi()["x"] > 1.0
    for _ in range(5):
        monitor.update({"x": rng.normal(10.0, 2.0, 50)})  # 250 rows: half the window is still shifted
    half = monitor.psi()["x"]
    assert 0.25 < half < 1.0
    for _ in range(5):
        monitor.update({"x": rng.normal(10.0, 2.0, 50)})  # the last shifted rows fall out
    assert monitor.psi()["x"] < 0.1
    assert monitor.rows == 500


def test_feature_missing_from_a_request_keeps_its_window() -> None:
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(_baseline(rng), window=100)
    monitor.update({"x": rng.normal(10.0, 2.0, 50), "unknown": np.ones(50), "name": np.array(["a"] * 50)})
    assert set(monitor.psi()) == {"x"}  # y and const have no rows yet; unknown and name are not in the baseline
    monitor.update({"y": rng.exponential(1.0, 30)})
    assert set(monitor.psi()) == {"x", "y"}
    assert monitor.window.rows("x") == 50 and monitor.window.rows("y") == 30 and monitor.rows == 50
    assert monitor.window.features() == ["x", "y"]


def test_no_baseline() -> None:
    unusable: dict[str, object] = {"features": {"x": {"bin_edges": [1.0, 0.0], "bin_fractions": [1.0]}}}  # edges not increasing
    baselines: list[dict[str, object] | None] = [None, {}, {"features": {}}, unusable]
    for baseline in baselines:
        monitor = DriftMonitor(baseline)
        assert not monitor.available
        monitor.update({"x": np.arange(10.0)})
        assert monitor.psi() == {} and monitor.rows == 0


def test_publish_sets_the_drift_gauges() -> None:
    rng = np.random.default_rng(6)
    registry = Registry()
    monitor = DriftMonitor(_baseline(rng), window=200)
    monitor.update({"x": rng.normal(12.0, 2.0, 200)})
    values = monitor.publish(registry, "iris", "2")
    DriftMonitor(None).publish(registry, "iris", "3")
    collected = registry.collect()
    assert collected["jmk_drift_baseline_available"] == [
        ({"model": "iris", "version": "2"}, 1.0),
        ({"model": "iris", "version": "3"}, 0.0),
    ]
    assert collected["jmk_drift_window_rows"][0] == ({"model": "iris", "version": "2"}, 200.0)
    assert collected["jmk_feature_drift_psi"] == [({"model": "iris", "version": "2", "feature": "x"}, values["x"])]
    assert values["x"] > 0.25


def test_sliding_window_ring_buffer() -> None:
    window = SlidingWindow(5)
    window.extend({"a": [1, 2, 3]})
    window.extend({"a": np.array([4.0, np.nan, 5.0, 6.0, 7.0])})  # wraps around; NaN is left out
    assert sorted(window.values("a")) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert (window.minimum("a"), window.maximum("a")) == (3.0, 7.0)
    window.extend({"a": np.arange(12.0)})  # more than the window at once
    assert sorted(window.values("a")) == [7.0, 8.0, 9.0, 10.0, 11.0]
    window.extend({"a": [20.0]})
    assert sorted(window.values("a")) == [8.0, 9.0, 10.0, 11.0, 20.0]
    assert window.values("missing").size == 0 and math.isnan(window.minimum("missing"))
    with pytest.raises(ValueError, match="at least one row"):
        SlidingWindow(0)


def test_psi_function() -> None:
    edges, expected = np.array([1.0]), np.array([0.5, 0.5])
    assert psi(np.array([0.0, 2.0]), edges, expected) == 0.0
    assert psi(np.array([0.0, 1.0]), edges, expected) == 0.0  # a value on an edge opens the next bin
    assert psi(np.array([0.0, 0.0, 0.0, 2.0]), edges, expected) == pytest.approx(0.25 * math.log(3))
