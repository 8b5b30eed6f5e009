"""Live numbers for a serving endpoint, from two scrapes of its Prometheus ``/metrics``.

Owns: the samples of a page of the Prometheus text format (read by prometheus_client's parser,
``serving.metrics.read_samples``), the :class:`Snapshot` the sidebar draws (requests/s, error rate,
p50/p99 latency, in-flight requests, drift; in total and per model version) and
:class:`MetricsTracker`, which keeps the previous scrape of each endpoint so that rates and
quantiles cover the interval since then (quantiles from the histogram buckets' deltas, interpolated
as Prometheus' ``histogram_quantile`` does). It does not start, list or stop
endpoints (``serving/manager.py``) and does not know about HTTP handlers.

A counter that went down between two scrapes was reset (the server restarted): the interval then
counts from zero, as Prometheus' ``rate`` does. With ``--workers N`` every scrape reads the sums
over all workers (the server's multiprocess mode), so their counters only go up.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnavailableError
from ..serving.metrics import MetricsTextError, read_samples

# Names the inference server exposes (jupyter_mlflow_k8s/serving/server.py ServerMetrics, docs/serving.md).
REQUESTS = "jmk_requests_total"
DURATION = "jmk_request_duration_seconds"
IN_FLIGHT = "jmk_requests_in_flight"
MODEL_INFO = "jmk_model_info"
DRIFT_PSI = "jmk_feature_drift_psi"

#: A sample: its labels and value.
Sample = tuple[dict[str, str], float]


class ScrapeError(UnavailableError):
    """An endpoint's ``/metrics`` could not be read, or is not Prometheus text (a bad gateway: 502)."""

    http_status = 502


class ParseError(ScrapeError):
    """A line of the text format that does not parse; the message names the line."""


# -- parsing -------------------------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[str, list[Sample]]:
    """``{sample name: [(labels, value), ...]}`` from the text format, read by prometheus_client's parser.

    Comments and timestamps are left out. A histogram appears under its sample names (``x_bucket``
    with an ``le`` label, ``x_sum``, ``x_count``). Raises :class:`ParseError` naming the first bad line.
    """
    try:
        return read_samples(text)
    except MetricsTextError as exc:
        raise ParseError(str(exc)) from None


# -- arithmetic over scrapes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One read of ``/metrics``: when (epoch seconds) and what."""

    time: float
    samples: dict[str, list[Sample]]


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile from cumulative ``(upper bound, count)`` buckets, as Prometheus interpolates it.

    ``None`` without observations; the largest finite bound when the quantile lies in ``+Inf``.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in ordered:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower
            inside = cumulative - below
            if inside <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / inside
        lower, below = upper, cumulative
    return lower


def _key(labels: dict[str, str]) -> tuple[str, str]:
    return labels.get("model", ""), labels.get("version", "")


@dataclass
class _Series:
    """Everything measured for one model version in one scrape."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    in_flight: float = 0.0
    drift: dict[str, float] = field(default_factory=dict)
    role: str | None = None
    uri: str | None = None


def _series(samples: dict[str, list[Sample]]) -> dict[tuple[str, str], _Series]:
    found: dict[tuple[str, str], _Series] = {}

    def get(labels: dict[str, str]) -> _Series:
        return found.setdefault(_key(labels), _Series())

    for labels, _ in samples.get(MODEL_INFO, []):
        series = get(labels)
        series.role, series.uri = labels.get("role"), labels.get("uri")
    for labels, value in samples.get(REQUESTS, []):
        series = get(labels)
        series.requests += value
        if not labels.get("code", "").startswith("2"):
            series.errors += value
    for labels, value in samples.get(f"{DURATION}_bucket", []):
        try:
            upper = float(labels.get("le", ""))  # "0.5", "1.0", "+Inf"
        except ValueError:
            continue
        buckets = get(labels).buckets
        buckets[upper] = buckets.get(upper, 0.0) + value
    for labels, value in samples.get(IN_FLIGHT, []):
        get(labels).in_flight += value
    for labels, value in samples.get(DRIFT_PSI, []):
        if "feature" in labels:
            get(labels).drift[labels["feature"]] = value
    return found


def _delta(now: _Series, before: _Series | None) -> _Series:
    """What happened between two scrapes of one series; everything since zero after a reset."""
    if before is None:
        return now
    reset = now.requests < before.requests or any(
        count < before.buckets.get(upper, 0.0) for upper, count in now.buckets.items()
    )
    if reset:
        return now
    return _Series(
        requests=now.requests - before.requests,
        errors=max(now.errors - before.errors, 0.0),
        buckets={upper: count - before.buckets.get(upper, 0.0) for upper, count in now.buckets.items()},
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _numbers(now: _Series, delta: _Series, interval: float | None) -> dict[str, Any]:
    """The Snapshot fields of one series (or of a sum of series)."""
    rate = (lambda count: count / interval) if interval else (lambda count: None)
    buckets = list(delta.buckets.items())
    return {
        "requests_total": now.requests,
        "errors_total": now.errors,
        "requests_per_second": rate(delta.requests),
        "errors_per_second": rate(delta.errors),
        "error_rate": delta.errors / delta.requests if delta.requests else None,
        "p50_ms": _ms(histogram_quantile(0.5, buckets)),
        "p99_ms": _ms(histogram_quantile(0.99, buckets)),
        "in_flight": now.in_flight,
    }


def _sum(series: Iterable[_Series]) -> _Series:
    total = _Series()
    for one in series:
        total.requests += one.requests
        total.errors += one.errors
        total.in_flight += one.in_flight
        for upper, count in one.buckets.items():
            total.buckets[upper] = total.buckets.get(upper, 0.0) + count
        for feature, psi in one.drift.items():
            total.drift[feature] = max(psi, total.drift.get(feature, -math.inf))
    return total


def snapshot(current: Scrape, previous: Scrape | None, started: float | None = None) -> dict[str, Any]:
    """The Snapshot of ``current`` against ``previous`` (the whole life since ``started`` without one).

    Totals and the top-level numbers leave out a ``shadow`` version: it answers copies of requests
    that the primary (or canary) already answered. ``drift`` is the largest PSI of each feature over
    the versions that are not shadows; ``interval`` is the number of seconds the rates cover
    (``null`` when unknown: the first scrape of an endpoint whose start time is unknown).
    """
    now = _series(current.samples)
    before = _series(previous.samples) if previous is not None else {}
    if previous is not None:
        interval: float | None = current.time - previous.time
    elif started is not None:
        interval = current.time - started
    else:
        interval = None
    if interval is not None and interval <= 0:
        interval = None
    deltas = {key: _delta(series, before.get(key) if previous is not None else None) for key, series in now.items()}
    models = {model for model, _ in now}
    versions: dict[str, Any] = {}
    for (model, version), series in sorted(now.items(), key=lambda item: _version_order(item[0][1])):
        name = version if len(models) <= 1 else f"{model}/{version}"
        versions[name] = {
            "model": model,
            "version": version,
            "role": series.role,
            "uri": series.uri,
            **_numbers(series, deltas[(model, version)], interval),
            "drift": dict(sorted(series.drift.items())),
        }
    counted = [key for key, series in now.items() if series.role != "shadow"]
    total_now = _sum(now[key] for key in counted)
    total_delta = _sum(deltas[key] for key in counted)
    return {
        "time": current.time,
        "interval": interval,
        **_numbers(total_now, total_delta, interval),
        "drift": dict(sorted(total_now.drift.items())),
        "versions": versions,
    }


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


# -- scraping, with the previous scrape of each endpoint kept --------------------------------------


def scrape(url: str, timeout: float = 2.0) -> Scrape:
    """Read and parse ``<url>/metrics`` (blocking: call it from a worker thread)."""
    target = url.rstrip("/") + "/metrics"
    if not target.startswith(("http://", "https://")):
        raise ScrapeError(f"{url!r} is not an http(s) URL; cannot read its metrics.")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            body = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise ScrapeError(f"{target} answered HTTP {exc.code}.") from exc
    except (OSError, ValueError) as exc:
        raise ScrapeError(f"Could not read {target}: {exc}") from exc
    return Scrape(time.time(), parse_prometheus(body))


@dataclass
class _Tracked:
    identity: tuple[Any, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    last: Scrape | None = None
    snapshot: dict[str, Any] | None = None


class MetricsTracker:
    """Snapshots of endpoints, each against the previous scrape of the same endpoint.

    Thread-safe: one scrape at a time per endpoint; a caller that accepts a snapshot up to
    ``max_age`` seconds old gets the last one instead of scraping again (several sidebars streaming
    one endpoint then share scrapes). An endpoint restarted under the same name (a new
    ``identity``) starts over.
    """

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._tracked: dict[str, _Tracked] = {}
        self._lock = threading.Lock()

    def snapshot(self, name: str, url: str, identity: tuple[Any, ...] = (), started: float | None = None,
                 max_age: float = 0.0, read: Callable[[], str] | None = None) -> dict[str, Any]:
        """A Snapshot of endpoint ``name`` at ``url`` (blocking: scrapes unless the last is under ``max_age`` s old).

        ``read`` returns the metrics text instead of a GET of ``<url>/metrics`` (a Kubernetes endpoint's
        pods, read through the API server); it raises :class:`ScrapeError` when it cannot.
        """
        with self._lock:
            tracked = self._tracked.get(name)
            if tracked is None or tracked.identity != identity:
                tracked = self._tracked[name] = _Tracked(identity)
        with tracked.lock:
            if tracked.snapshot is not None and tracked.last is not None \
                    and time.time() - tracked.last.time < max_age:
                return tracked.snapshot
            current = scrape(url, self.timeout) if read is None else Scrape(time.time(), parse_prometheus(read()))
            result = snapshot(current, tracked.last, started)
            tracked.last, tracked.snapshot = current, result
            return result

    def forget(self, name: str) -> None:
        """Drop what is kept for ``name``."""
        with self._lock:
            self._tracked.pop(name, None)
