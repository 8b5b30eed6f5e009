"""Input drift of a served model: PSI per numeric feature over a sliding window, against its baseline.

The baseline is the dict that :func:`jupyter_mlflow_k8s.tracking.baseline.feature_summary` wrote
at registration (``{"features": {name: {"bin_edges": [...], "bin_fractions": [...], ...}}}``),
already loaded by the caller. :class:`DriftMonitor` keeps the last ``window`` values of each
baseline feature in a numpy ring buffer and computes, when asked (a ``/metrics`` scrape, or each
worker's timer with ``--workers N``),

    PSI = sum over bins of (a - e) * ln(a / e)

with ``e`` the baseline's fraction and ``a`` the window's fraction per bin. The bins are the
baseline's, with the outer two open to -inf and +inf, so values outside the baseline's range count
in the first or last bin. Fractions are clipped below at :data:`EPSILON` so an empty bin gives a
large but finite term. Pure numpy: no MLflow, no HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .window import SlidingWindow

if TYPE_CHECKING:  # drift publishes into the registry it is given; it never builds one
    from .metrics import Registry

__all__ = ["EPSILON", "DriftMonitor", "psi"]

#: The smallest fraction a bin counts with in PSI, so an empty bin (live or baseline) stays finite.
EPSILON = 1e-4


def _bins(stats: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(inner edges, expected fractions) of one baseline feature; ``None`` when it has no usable histogram.

    A constant feature (one edge ``c``) gets three bins: below ``c``, exactly ``c`` (all of the
    baseline) and above it, so any change of a constant input shows.
    """
    try:
        edges = np.asarray(stats["bin_edges"], dtype=float)
        fractions = np.asarray(stats["bin_fractions"], dtype=float)
    except (KeyError, TypeError, ValueError):
        return None
    if edges.ndim != 1 or fractions.ndim != 1 or not np.isfinite(edges).all() or not np.isfinite(fractions).all():
        return None
    if edges.size == 1 and fractions.size == 1:
        c = edges[0]
        return np.array([c, np.nextafter(c, math.inf)]), np.array([0.0, 1.0, 0.0])
    if edges.size < 2 or fractions.size != edges.size - 1 or (np.diff(edges) <= 0).any():
        return None
    return edges[1:-1], fractions


def psi(values: np.ndarray, inner_edges: np.ndarray, expected: np.ndarray) -> float:
    """PSI of ``values`` against ``expected`` fractions over bins split at ``inner_edges`` (outer bins open)."""
    # side="right": a value equal to an edge falls in the bin that edge opens, as in np.histogram.
    counts = np.bincount(np.searchsorted(inner_edges, values, side="right"), minlength=expected.size)
    actual = np.maximum(counts / values.size, EPSILON)
    baseline = np.maximum(expected, EPSILON)
    return float(np.sum((actual - baseline) * np.log(actual / baseline)))


class DriftMonitor:
    """PSI per numeric baseline feature over the last ``window`` values seen of it.

    ``baseline`` is ``feature_summary``'s dict (or ``None``: no baseline, ``available`` is False and
    nothing is kept). Features the baseline lacks are ignored; a feature a request lacks keeps its
    window as it is. ``update`` only copies values into ring buffers; ``psi`` does the binning, so it
    is meant for each scrape, not each request.
    """

    def __init__(self, baseline: Mapping[str, Any] | None, window: int = 1000) -> None:
        self.window = SlidingWindow(window)
        self._bins: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        features = baseline.get("features") if baseline is not None else None
        if isinstance(features, Mapping):
            for name, stats in features.items():
                bins = _bins(stats) if isinstance(stats, Mapping) else None
                if bins is not None:
                    self._bins[str(name)] = bins
        self.available: bool = bool(self._bins)
        self.features: tuple[str, ...] = tuple(self._bins)
        self._updates = 0  # batches added; publish recomputes PSI only when it moved
        self._published: tuple[int, dict[str, float]] = (-1, {})

    def update(self, columns: Mapping[str, Any]) -> None:
        """Add a batch: ``{feature: 1-d array of its values}``; non-baseline and non-numeric columns are skipped."""
        if self._bins:
            self.window.extend({f: c for f, c in columns.items() if f in self._bins})
            self._updates += 1

    def psi(self) -> dict[str, float]:
        """``{feature: PSI}`` for each baseline feature with at least one value in the window."""
        result: dict[str, float] = {}
        for feature, (inner, expected) in self._bins.items():
            values = self.window.values(feature)
            if values.size:
                result[feature] = psi(values, inner, expected)
        return result

    @property
    def rows(self) -> int:
        """Rows in the window: the most values held for any baseline feature (at most ``window``)."""
        return self.window.rows()

    def publish(self, registry: Registry, model: str, version: str) -> dict[str, float]:
        """Set ``jmk_feature_drift_psi``, ``jmk_drift_window_rows`` and ``jmk_drift_baseline_available``.

        Call it before rendering the registry (and, with ``--workers N``, from each worker's timer);
        PSI is recomputed only when a batch came in since the last call. Returns the PSI values set.
        """
        labels = {"model": model, "version": version}
        available = registry.gauge(
            "jmk_drift_baseline_available", "1 when the model version has a drift baseline, else 0.", tuple(labels)
        )
        available.labels(**labels).set(1.0 if self.available else 0.0)
        registry.gauge(
            "jmk_drift_window_rows", "Rows in the drift window (the most of any feature).", tuple(labels)
        ).labels(**labels).set(self.rows)
        gauge = registry.gauge(
            "jmk_feature_drift_psi",
            "Population stability index of the feature over the drift window against the baseline.",
            ("model", "version", "feature"),
        )
        updates = self._updates
        if self._published[0] != updates:
            self._published = (updates, self.psi())
        values = self._published[1]
        for feature, value in values.items():
            gauge.labels(feature=feature, **labels).set(value)
        return values
