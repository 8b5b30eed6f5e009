"""Prometheus metrics for the inference server: counters, gauges, histograms and their text format.

A :class:`Registry` creates metrics and renders them in the Prometheus text exposition format
0.0.4 (what ``GET /metrics`` answers). Each metric has label names; ``metric.labels(**values)``
returns the child for one tuple of label values, and the hot path (``inc``, ``observe``, ``set``)
is a lock and an addition on that child: no string formatting, buckets found by bisection. Keep a
child you use on every request instead of calling ``labels`` each time.

:class:`FeatureStats` keeps the per-feature input statistics (count, sum, sum of squares, and the
min/max over a sliding window). Pure Python and numpy: no HTTP server, no MLflow.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from .window import SlidingWindow, numeric_values

#: Prometheus' default latency buckets, in seconds.
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: What ``collect()`` gives per metric: (labels, value) for counters and gauges, (labels, histogram dict).
Sample = tuple[dict[str, str], Any]


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it: ``+Inf``, ``-Inf``, ``NaN``, ``3`` (not ``3.0``), ``0.25``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:  # exact integers print without ".0" or an exponent
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A HELP text escaped for the text format: backslash and newline."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """``a="x",b="y"`` (no braces), computed once per child."""
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))


class CounterChild:
    """One series of a counter: a value that only goes up (or one read from a function that only goes up)."""

    __slots__ = ("_function", "_lock", "_value", "label_text")

    def __init__(self, label_text: str) -> None:
        self.label_text = label_text
        self._lock = threading.Lock()
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (>= 0)."""
        if n < 0:
            raise ValueError(f"a counter only goes up; inc({n}) is negative")
        with self._lock:
            self._value += n

    def set_function(self, function: Callable[[], float] | None) -> None:
        """Read the total from ``function()`` at each render/collect (a count kept elsewhere, e.g. shared memory)."""
        self._function = function

    @property
    def value(self) -> float:
        """The current total (the function's, where one is set)."""
        function = self._function
        return float(function()) if function is not None else self._value


class GaugeChild:
    """One series of a gauge: a value that is set, raised or lowered, or read from a function."""

    __slots__ = ("_function", "_lock", "_value", "label_text")

    def __init__(self, label_text: str) -> None:
        self.label_text = label_text
        self._lock = threading.Lock()
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        """Set the value."""
        with self._lock:
            self._value = float(value)

    def inc(self, n: float = 1) -> None:
        """Add ``n``."""
        with self._lock:
            self._value += n

    def dec(self, n: float = 1) -> None:
        """Subtract ``n``."""
        with self._lock:
            self._value -= n

    def set_function(self, function: Callable[[], float] | None) -> None:
        """Read the value from ``function()`` at each render/collect instead (``None`` goes back to ``set``)."""
        self._function = function

    @property
    def value(self) -> float:
        """The current value (the function's, where one is set)."""
        function = self._function
        return float(function()) if function is not None else self._value


class HistogramChild:
    """One series of a histogram: counts per bucket, a sum and a count."""

    __slots__ = ("_counts", "_lock", "_sum", "_upper", "label_text")

    def __init__(self, label_text: str, upper: tuple[float, ...]) -> None:
        self.label_text = label_text
        self._upper = upper
        self._lock = threading.Lock()
        self._counts = [0] * len(upper)  # per bucket, not cumulative; cumulated when read
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= it."""
        index = bisect_left(self._upper, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float, int]:
        """Cumulative bucket counts (one per upper bound, the last for +Inf), the sum and the count."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for c in counts:
            running += c
            cumulative.append(running)
        return cumulative, total, running


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class Metric(Generic[ChildT]):
    """A named metric with label names; one child per tuple of label values."""

    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}: use letters, digits, '_' and ':'")
        self.name = name
        self.help = help
        self.label_names: tuple[str, ...] = tuple(labels)
        for label in self.label_names:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"repeated label name in {self.label_names} for {name}")
        self._children: dict[tuple[str, ...], ChildT] = {}
        self._lock = threading.Lock()

    def _new_child(self, label_text: str) -> ChildT:
        raise NotImplementedError

    def labels(self, **values: object) -> ChildT:
        """The child for these label values (all label names, nothing else), created on first use."""
        try:
            key = tuple(str(values[n]) for n in self.label_names)
        except KeyError as missing:
            raise ValueError(f"{self.name} needs labels {self.label_names}, got {tuple(values)}") from missing
        if len(values) != len(key):
            raise ValueError(f"{self.name} needs labels {self.label_names}, got {tuple(values)}")
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self._new_child(_label_text(self.label_names, key))
        return child

    def children(self) -> list[tuple[dict[str, str], ChildT]]:
        """Each child with its labels, in creation order."""
        with self._lock:
            items = list(self._children.items())
        return [(dict(zip(self.label_names, key, strict=True)), child) for key, child in items]

    def _unlabelled(self) -> ChildT:
        if self.label_names:
            raise ValueError(f"{self.name} has labels {self.label_names}: use .labels(...) first")
        return self.labels()


class Counter(Metric[CounterChild]):
    """A counter; by Prometheus' convention its name ends in ``_total`` (the name is exposed as given)."""

    kind = "counter"

    def _new_child(self, label_text: str) -> CounterChild:
        return CounterChild(label_text)

    def inc(self, n: float = 1) -> None:
        """``inc`` on a counter without labels."""
        self._unlabelled().inc(n)


class Gauge(Metric[GaugeChild]):
    """A gauge."""

    kind = "gauge"

    def _new_child(self, label_text: str) -> GaugeChild:
        return GaugeChild(label_text)

    def set(self, value: float) -> None:
        """``set`` on a gauge without labels."""
        self._unlabelled().set(value)

    def inc(self, n: float = 1) -> None:
        """``inc`` on a gauge without labels."""
        self._unlabelled().inc(n)

    def dec(self, n: float = 1) -> None:
        """``dec`` on a gauge without labels."""
        self._unlabelled().dec(n)


class Histogram(Metric[HistogramChild]):
    """A histogram with fixed upper bounds; ``+Inf`` is always the last bucket."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Iterable[str] = (), buckets: Iterable[float] = DEFAULT_BUCKETS
    ) -> None:
        super().__init__(name, help, labels)
        if "le" in self.label_names:
            raise ValueError(f"{name}: 'le' is the bucket label of a histogram, not a label name of your own")
        upper = sorted({float(b) for b in buckets})
        if any(math.isnan(b) for b in upper):
            raise ValueError(f"{name}: NaN is not a bucket bound")
        if not upper or upper[-1] != math.inf:
            upper.append(math.inf)
        self.buckets: tuple[float, ...] = tuple(upper)
        self._le = tuple(format_value(b) for b in upper)

    def _new_child(self, label_text: str) -> HistogramChild:
        return HistogramChild(label_text, self.buckets)

    def observe(self, value: float) -> None:
        """``observe`` on a histogram without labels."""
        self._unlabelled().observe(value)


class Registry:
    """The metrics of one server, rendered together; creating a metric twice returns the first one."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric[Any]] = {}
        self._lock = threading.Lock()

    def _get_or_add(self, metric: Metric[Any]) -> Metric[Any]:
        with self._lock:
            existing = self._metrics.get(metric.name)
            if existing is None:
                self._metrics[metric.name] = metric
                return metric
        same = type(existing) is type(metric) and existing.label_names == metric.label_names
        if isinstance(metric, Histogram) and isinstance(existing, Histogram):
            same = same and existing.buckets == metric.buckets
        if not same:
            raise ValueError(
                f"metric {metric.name} already exists as a {existing.kind} with labels {existing.label_names}"
            )
        return existing

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        """The counter ``name`` (created on the first call)."""
        metric = self._get_or_add(Counter(name, help, labels))
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        """The gauge ``name`` (created on the first call)."""
        metric = self._get_or_add(Gauge(name, help, labels))
        assert isinstance(metric, Gauge)
        return metric

    def histogram(
        self, name: str, help: str, labels: Iterable[str] = (), buckets: Iterable[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        """The histogram ``name`` (created on the first call)."""
        metric = self._get_or_add(Histogram(name, help, labels, buckets))
        assert isinstance(metric, Histogram)
        return metric

    def metrics(self) -> list[Metric[Any]]:
        """The metrics in creation order."""
        with self._lock:
            return list(self._metrics.values())

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format 0.0.4 (``text/plain; version=0.0.4``)."""
        lines: list[str] = []
        for metric in self.metrics():
            lines.append(f"# HELP {metric.name} {escape_help(metric.help)}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            children = metric.children()
            if not children and not metric.label_names:
                children = [({}, metric.labels())]
            name = metric.name
            for _, child in children:
                text = child.label_text
                if isinstance(child, HistogramChild):
                    assert isinstance(metric, Histogram)
                    cumulative, total, count = child.snapshot()
                    prefix = f"{text}," if text else ""
                    for le, c in zip(metric._le, cumulative, strict=True):
                        lines.append(f'{name}_bucket{{{prefix}le="{le}"}} {c}')
                    braces = f"{{{text}}}" if text else ""
                    lines.append(f"{name}_sum{braces} {format_value(total)}")
                    lines.append(f"{name}_count{braces} {count}")
                else:
                    braces = f"{{{text}}}" if text else ""
                    lines.append(f"{name}{braces} {format_value(child.value)}")
        return "\n".join(lines) + "\n" if lines else ""

    def collect(self) -> dict[str, list[Sample]]:
        """``{name: [(labels, value), ...]}``; a histogram's value is ``{"buckets": {le: cumulative}, "sum", "count"}``.

        The bucket keys are the ``le`` strings of the text format (``"0.5"``, ``"+Inf"``), so the
        result also serializes to JSON as is (tuples become lists).
        """
        result: dict[str, list[Sample]] = {}
        for metric in self.metrics():
            children = metric.children()
            if not children and not metric.label_names:
                children = [({}, metric.labels())]
            samples: list[Sample] = []
            for labels, child in children:
                if isinstance(child, HistogramChild):
                    assert isinstance(metric, Histogram)
                    cumulative, total, count = child.snapshot()
                    buckets = dict(zip(metric._le, cumulative, strict=True))
                    samples.append((labels, {"buckets": buckets, "sum": total, "count": count}))
                else:
                    samples.append((labels, child.value))
            result[metric.name] = samples
        return result


class FeatureStats:
    """Per-feature input statistics of one model version, as ``jmk_input_feature_*`` metrics.

    ``jmk_input_feature_count_total`` and ``jmk_input_feature_sum_squares`` are counters;
    ``jmk_input_feature_sum`` is a gauge because a sum of negative inputs goes down, which a
    Prometheus counter must not (mean = sum / count, std from the sum of squares).
    ``jmk_input_feature_min`` / ``_max`` are gauges over the last ``window`` finite values of the
    feature (read at render time; NaN before any value). Non-finite values are left out of every
    statistic; non-numeric columns are ignored; at most ``max_features`` distinct features are
    tracked, so a stream of new column names cannot grow the metrics without bound.
    """

    def __init__(
        self, registry: Registry, model: str, version: str, window: int = 1000, max_features: int = 256
    ) -> None:
        labels = ("model", "version", "feature")
        self._count = registry.counter(
            "jmk_input_feature_count_total", "Finite input values seen, per feature.", labels
        )
        self._sum = registry.gauge("jmk_input_feature_sum", "Sum of the finite input values, per feature.", labels)
        self._squares = registry.counter(
            "jmk_input_feature_sum_squares", "Sum of the squares of the finite input values, per feature.", labels
        )
        self._min = registry.gauge("jmk_input_feature_min", "Smallest input value in the window, per feature.", labels)
        self._max = registry.gauge("jmk_input_feature_max", "Largest input value in the window, per feature.", labels)
        self.model, self.version = model, version
        self.window = SlidingWindow(window)
        self.max_features = max_features
        self._features: dict[str, tuple[CounterChild, GaugeChild, CounterChild]] = {}
        self._lock = threading.Lock()

    def _children(self, feature: str) -> tuple[CounterChild, GaugeChild, CounterChild] | None:
        children = self._features.get(feature)
        if children is not None:
            return children
        with self._lock:
            if feature in self._features:
                return self._features[feature]
            if len(self._features) >= self.max_features:
                return None
            values = {"model": self.model, "version": self.version, "feature": feature}
            self._min.labels(**values).set_function(lambda: self.window.minimum(feature))
            self._max.labels(**values).set_function(lambda: self.window.maximum(feature))
            children = self._features[feature] = (
                self._count.labels(**values),
                self._sum.labels(**values),
                self._squares.labels(**values),
            )
            return children

    def update(self, columns: Mapping[str, np.ndarray]) -> None:
        """Add a batch: ``{feature: 1-d array of its values}``."""
        finite: dict[str, np.ndarray] = {}
        for feature, column in columns.items():
            values = numeric_values(column)
            if values is None or values.size == 0:
                continue
            children = self._children(feature)
            if children is None:
                continue
            count, total, squares = children
            count.inc(values.size)
            total.inc(float(values.sum()))
            squares.inc(float(np.dot(values, values)))
            finite[feature] = values
        self.window.extend(finite, finite=True)
