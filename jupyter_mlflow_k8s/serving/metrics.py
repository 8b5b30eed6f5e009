"""Prometheus metrics of the inference server, on ``prometheus_client``, and its per-feature statistics.

A :class:`Registry` is a private ``prometheus_client.CollectorRegistry`` per server (never the
global one) with get-or-create counters, gauges and histograms, and the text exposition format
0.0.4 without the ``_created`` series (names stay those of docs/serving.md). In multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the metrics are created: ``--workers N``, see
:mod:`.workers`), every worker writes its values to its own files in that directory and
:meth:`Registry.render` reads all of them, so one scrape sees every worker: counters and histograms
are summed, and each gauge is merged by its mode in :data:`GAUGE_MODES`.

:class:`FeatureStats` keeps the per-feature input statistics (count, sum, sum of squares, and the
min/max over a sliding window); :func:`read_samples` reads a page of the text format back (the
sidebar and the drift triggers). No HTTP server, no MLflow.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from .window import SlidingWindow, numeric_values

#: Prometheus' default latency buckets, in seconds.
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

#: How ``--workers N`` merges each gauge over the workers (prometheus_client's multiprocess modes).
#: ``live*`` modes drop a dead worker's value; the others keep it (a sum that only a live worker
#: could lower, or a constant). Every gauge of the server is listed here (docs/serving.md).
GAUGE_MODES: dict[str, str] = {
    "jmk_requests_in_flight": "livesum",
    "jmk_model_info": "max",
    "jmk_drift_baseline_available": "max",
    "jmk_drift_window_rows": "livesum",
    "jmk_feature_drift_psi": "livemax",
    "jmk_input_feature_sum": "sum",
    "jmk_input_feature_sum_squares": "sum",
    "jmk_input_feature_min": "livemin",
    "jmk_input_feature_max": "livemax",
}

#: What ``collect()`` gives per metric: (labels, value) for counters and gauges, (labels, histogram dict).
Sample = tuple[dict[str, str], Any]


def multiprocess_directory() -> str | None:
    """The directory of multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), or ``None`` in a single process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


_RESTARTS = ("jmk_worker_restarts_total", "Server processes (--workers) started in place of one that died.")


def restarts_counter(registry: Registry | None = None) -> Counter:
    """``jmk_worker_restarts_total``: a worker's (in ``registry``) stays 0; the supervisor's (no registry) counts.

    In multiprocess mode the supervisor's count is in the directory like the workers' values, so
    every scrape reads it.
    """
    if registry is None:
        return Counter(*_RESTARTS, registry=None)
    return registry.counter(*_RESTARTS)


def _without_created(metrics: Iterable[Metric]) -> Iterator[Metric]:
    """The metrics without their ``_created`` samples (the names stay those of the text format 0.0.4)."""
    for metric in metrics:
        if metric.type in ("counter", "histogram", "summary"):
            created = f"{metric.name}_created"
            metric.samples = [s for s in metric.samples if s.name != created]
        yield metric


class _Exposed:
    """What a scrape renders: this server's registry, or every worker's files in multiprocess mode."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        directory = multiprocess_directory()
        if directory is None:
            yield from _without_created(self.registry.collect())
            return
        merged = CollectorRegistry()  # a fresh one per scrape, as prometheus_client's multiprocess docs do
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        yield from merged.collect()


class Registry:
    """The metrics of one server: a private ``CollectorRegistry``; creating a metric twice returns the first one."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._metrics: dict[str, tuple[MetricWrapperBase, tuple[str, ...], Any]] = {}
        self._lock = threading.Lock()

    def _get_or_add(self, kind: type[MetricWrapperBase], name: str, labels: Iterable[str], extra: Any,
                    make: Any) -> Any:
        label_names = tuple(labels)
        with self._lock:
            existing = self._metrics.get(name)
            if existing is None:
                metric = make(label_names)
                self._metrics[name] = (metric, label_names, extra)
                return metric
        metric, known_labels, known_extra = existing
        if type(metric) is not kind or known_labels != label_names or known_extra != extra:
            raise ValueError(f"metric {name} already exists as a {type(metric).__name__.lower()} with labels "
                             f"{known_labels}")
        return metric

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        """The counter ``name`` (created on the first call); by convention its name ends in ``_total``."""
        return self._get_or_add(Counter, name, labels, None,  # type: ignore[no-any-return]
                                lambda names: Counter(name, help, names, registry=self.registry))

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        """The gauge ``name`` (created on the first call), merged over workers by its mode in :data:`GAUGE_MODES`."""
        mode = GAUGE_MODES.get(name)
        if mode is None:
            raise ValueError(f"gauge {name} has no multiprocess mode: add it to GAUGE_MODES (and docs/serving.md)")
        return self._get_or_add(Gauge, name, labels, mode,  # type: ignore[no-any-return]
                                lambda names: Gauge(name, help, names, registry=self.registry,
                                                    multiprocess_mode=mode))  # type: ignore[arg-type]

    def histogram(self, name: str, help: str, labels: Iterable[str] = (),
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        """The histogram ``name`` (created on the first call); ``+Inf`` is always the last bucket."""
        bounds = tuple(sorted({float(b) for b in buckets}))
        return self._get_or_add(Histogram, name, labels, bounds,  # type: ignore[no-any-return]
                                lambda names: Histogram(name, help, names, registry=self.registry, buckets=bounds))

    def render(self) -> bytes:
        """The text exposition format 0.0.4 (``text/plain; version=0.0.4``): every worker's, in multiprocess mode."""
        return generate_latest(_Exposed(self.registry))  # type: ignore[arg-type]

    def collect(self) -> dict[str, list[Sample]]:
        """``{name: [(labels, value), ...]}``; a histogram's value is ``{"buckets": {le: cumulative}, "sum", "count"}``.

        The names are those of the text format (a counter's ends in ``_total``), the bucket keys the
        ``le`` strings (``"0.5"``, ``"+Inf"``); the result serializes to JSON as is.
        """
        result: dict[str, list[Sample]] = {}
        for metric in _Exposed(self.registry).collect():
            if metric.type == "histogram":
                series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
                for sample in metric.samples:
                    labels = {k: v for k, v in sample.labels.items() if k != "le"}
                    entry = series.setdefault(tuple(labels.items()), {"buckets": {}, "sum": 0.0, "count": 0})
                    if sample.name.endswith("_bucket"):
                        entry["buckets"][sample.labels["le"]] = sample.value
                    elif sample.name.endswith("_sum"):
                        entry["sum"] = sample.value
                    else:
                        entry["count"] = sample.value
                result[metric.name] = [(dict(key), entry) for key, entry in series.items()]
            else:
                name = f"{metric.name}_total" if metric.type == "counter" else metric.name
                result[name] = [(dict(s.labels), s.value) for s in metric.samples]
        return result


class MetricsTextError(ValueError):
    """Text that is not the Prometheus text format; the message names the first bad line."""


def read_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample name: [(labels, value), ...]}`` of a Prometheus text page (prometheus_client's parser).

    Comments and timestamps are left out; a histogram appears under its sample names (``x_bucket``
    with an ``le`` label, ``x_sum``, ``x_count``). Raises :class:`MetricsTextError`.
    """
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise MetricsTextError(_bad_line(text) or f"not Prometheus text: {exc or type(exc).__name__}") from None
    return samples


def _bad_line(text: str) -> str | None:
    """``line N ...`` for the first line that the parser refuses on its own."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            list(text_string_to_metric_families(line))
        except (ValueError, IndexError, KeyError, TypeError):
            return f"line {number} is not a Prometheus sample (name{{labels}} value): {line}"
    return None


class FeatureStats:
    """Per-feature input statistics of one model version, as ``jmk_input_feature_*`` metrics.

    ``jmk_input_feature_count_total`` is a counter; ``jmk_input_feature_sum`` and
    ``jmk_input_feature_sum_squares`` are gauges (mode ``sum``: a sum of negative inputs goes down,
    which a Prometheus counter must not; mean = sum / count, std from the sum of squares).
    ``jmk_input_feature_min`` / ``_max`` are gauges over the last ``window`` finite values of the
    feature, set by :meth:`publish` (a scrape, and each worker's timer with ``--workers N``).
    Non-finite values are left out of every statistic; non-numeric columns are ignored; at most
    ``max_features`` distinct features are tracked, so a stream of new column names cannot grow the
    metrics without bound.
    """

    def __init__(
        self, registry: Registry, model: str, version: str, window: int = 1000, max_features: int = 256
    ) -> None:
        labels = ("model", "version", "feature")
        self._count = registry.counter(
            "jmk_input_feature_count_total", "Finite input values seen, per feature.", labels
        )
        self._sum = registry.gauge("jmk_input_feature_sum", "Sum of the finite input values, per feature.", labels)
        self._squares = registry.gauge(
            "jmk_input_feature_sum_squares", "Sum of the squares of the finite input values, per feature.", labels
        )
        self._min = registry.gauge("jmk_input_feature_min", "Smallest input value in the window, per feature.", labels)
        self._max = registry.gauge("jmk_input_feature_max", "Largest input value in the window, per feature.", labels)
        self.model, self.version = model, version
        self.window = SlidingWindow(window)
        self.max_features = max_features
        self._features: dict[str, tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()

    def _children(self, feature: str) -> tuple[Any, Any, Any] | None:
        children = self._features.get(feature)
        if children is not None:
            return children
        with self._lock:
            if feature in self._features:
                return self._features[feature]
            if len(self._features) >= self.max_features:
                return None
            values = {"model": self.model, "version": self.version, "feature": feature}
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

    def publish(self) -> None:
        """Set the min/max gauges from the window (a feature without values yet has none)."""
        with self._lock:
            features = list(self._features)
        for feature in features:
            low, high = self.window.minimum(feature), self.window.maximum(feature)
            if math.isnan(low):
                continue
            values = {"model": self.model, "version": self.version, "feature": feature}
            self._min.labels(**values).set(low)
            self._max.labels(**values).set(high)


__all__ = ["DEFAULT_BUCKETS", "GAUGE_MODES", "FeatureStats", "MetricsTextError", "Registry", "multiprocess_directory",
           "read_samples", "restarts_counter"]
