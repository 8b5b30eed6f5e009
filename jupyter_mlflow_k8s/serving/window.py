"""A sliding window of recent input values per feature, shared by the live stats and the drift monitor.

Pure numpy; both :mod:`.metrics` and :mod:`.drift` import it, so neither imports the other.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np


def numeric_values(column: Any) -> np.ndarray | None:
    """A column's finite values as a 1-d float array; ``None`` when it is not numeric."""
    array = np.asarray(column)
    if array.dtype.kind not in "biuf":
        return None
    values = array.astype(float, copy=False).reshape(-1)
    if not np.isfinite(values).all():
        values = values[np.isfinite(values)]
    return values


class SlidingWindow:
    """The last ``size`` finite values of each feature, in one numpy ring buffer per feature. Thread-safe."""

    def __init__(self, size: int = 1000) -> None:
        if size < 1:
            raise ValueError(f"a window holds at least one row, not {size}")
        self.size = size
        self._buffers: dict[str, np.ndarray] = {}
        self._positions: dict[str, int] = {}
        self._filled: dict[str, int] = {}
        self._lock = threading.Lock()

    def extend(self, columns: Mapping[str, Any], finite: bool = False) -> None:
        """Append each column's values to its feature's ring (``finite=True``: already 1-d finite floats)."""
        for feature, column in columns.items():
            values = column if finite else numeric_values(column)
            if values is None or values.size == 0:
                continue
            self._append(feature, values)

    def _append(self, feature: str, values: np.ndarray) -> None:
        size = self.size
        with self._lock:
            buffer = self._buffers.get(feature)
            if buffer is None:
                buffer = self._buffers[feature] = np.empty(size)
                self._positions[feature] = self._filled[feature] = 0
            n = values.size
            if n >= size:
                buffer[:] = values[n - size :]
                self._positions[feature] = 0
                self._filled[feature] = size
                return
            position = self._positions[feature]
            first = min(n, size - position)
            buffer[position : position + first] = values[:first]
            buffer[: n - first] = values[first:]
            self._positions[feature] = (position + n) % size
            self._filled[feature] = min(self._filled[feature] + n, size)

    def values(self, feature: str) -> np.ndarray:
        """A copy of the feature's values in the window (in no particular order; empty if none)."""
        with self._lock:
            buffer = self._buffers.get(feature)
            if buffer is None:
                return np.empty(0)
            return buffer[: self._filled[feature]].copy()

    def rows(self, feature: str | None = None) -> int:
        """Values held for ``feature``; without one, the most held for any feature."""
        with self._lock:
            if feature is not None:
                return self._filled.get(feature, 0)
            return max(self._filled.values(), default=0)

    def features(self) -> list[str]:
        """The features seen so far, in order of first appearance."""
        with self._lock:
            return list(self._buffers)

    def minimum(self, feature: str) -> float:
        """The smallest value in the feature's window (NaN when empty)."""
        with self._lock:
            buffer = self._buffers.get(feature)
            return float(buffer[: self._filled[feature]].min()) if buffer is not None else math.nan

    def maximum(self, feature: str) -> float:
        """The largest value in the feature's window (NaN when empty)."""
        with self._lock:
            buffer = self._buffers.get(feature)
            return float(buffer[: self._filled[feature]].max()) if buffer is not None else math.nan
