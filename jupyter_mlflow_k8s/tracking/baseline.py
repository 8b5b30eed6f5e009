"""Summary statistics of a model's input example, stored with a registered version.

The serving side compares live inputs with this baseline (PSI per numeric feature), so each
numeric feature gets its count, mean, std, min, max, quantiles and a 10-bin histogram on
quantile edges. Pure numpy; no MLflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 10


def _columns(example: Any) -> list[tuple[str, np.ndarray]]:
    """Named numeric columns of a DataFrame, array, tensor or list of rows."""
    if hasattr(example, "select_dtypes"):  # pandas DataFrame
        numeric = example.select_dtypes("number")
        return [(str(name), numeric[name].to_numpy(dtype=float)) for name in numeric.columns]
    if hasattr(example, "detach"):  # torch tensor
        example = example.detach().cpu().numpy()
    array = np.asarray(example)
    if array.dtype.kind not in "biuf":
        return []
    array = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
    return [(str(i), array[:, i].astype(float)) for i in range(array.shape[1])]


def feature_summary(example: Any) -> dict[str, Any]:
    """``{"features": {name: stats}}`` for every numeric feature of ``example``."""
    features: dict[str, Any] = {}
    for name, values in _columns(example):
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)))
        counts = np.histogram(values, bins=edges)[0] if edges.size > 1 else np.array([values.size])
        features[name] = {
            "count": int(values.size),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            "quantiles": {str(q): float(np.quantile(values, q)) for q in (0.01, 0.25, 0.5, 0.75, 0.99)},
            "bin_edges": [float(e) for e in edges],
            "bin_fractions": [float(c) / values.size for c in counts],
        }
    return {"version": 1, "features": features}
