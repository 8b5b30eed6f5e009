"""The drift of a served model now, read from its endpoints' own ``jmk_feature_drift_psi`` gauges.

What a drift trigger watches (``jmk trigger add --on-drift MODEL@ALIAS``): every running endpoint
whose model URI is ``models:/MODEL@ALIAS`` (local processes, and Kubernetes Deployments when a
cluster is configured) is scraped through its target's ``metrics_text`` (each scrape recomputes PSI
over the server's current window; with ``--workers N`` it is the largest of the workers' PSIs), and
the highest PSI of any feature of that model is the value. It does not decide anything: holding
above a threshold is the trigger evaluator's business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import JMKSettings, load_settings
from ..errors import JMKError
from .metrics import MetricsTextError, read_samples
from .targets.base import EndpointSummary, EndpointTarget
from .targets.listing import list_all
from .targets.registry import get_target

#: The gauge the inference server publishes (drift.py ``DriftMonitor.publish``).
PSI_GAUGE = "jmk_feature_drift_psi"


@dataclass(frozen=True)
class ModelDrift:
    """The highest feature PSI of a model over its endpoints (None when there is none, ``detail`` says why)."""

    value: float | None
    detail: str = ""
    endpoints: tuple[str, ...] = ()


def psi_samples(text: str) -> list[tuple[dict[str, str], float]]:
    """The finite ``jmk_feature_drift_psi`` samples of a Prometheus text page: their labels and values.

    Raises :class:`~.metrics.MetricsTextError` (naming the line) when the page is not Prometheus text.
    """
    return [(labels, value) for labels, value in read_samples(text).get(PSI_GAUGE, []) if math.isfinite(value)]


def serving_endpoints(
    model: str, alias: str, targets: Sequence[EndpointTarget]
) -> list[tuple[EndpointTarget, EndpointSummary]]:
    """The running endpoints of ``targets`` that serve ``models:/MODEL@ALIAS``."""
    wanted = f"models:/{model}@{alias}"
    found = []
    for target in targets:
        try:
            if not target.configured:
                continue
        except JMKError:
            continue
        for endpoint in list_all([target]).endpoints:
            if endpoint.running and endpoint.model_uri.strip().rstrip("/") == wanted:
                found.append((target, endpoint))
    return found


class DriftReader:
    """Reads a served model's drift through the endpoint targets (local, and Kubernetes when configured)."""

    def __init__(
        self,
        settings: JMKSettings | None = None,
        config: Any = None,
        *,
        targets: Sequence[EndpointTarget] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.settings = settings or load_settings(config)
        self.config = config
        self.timeout = timeout
        self._targets = list(targets) if targets is not None else None

    def targets(self) -> list[EndpointTarget]:
        """The targets asked: given ones, else ``local`` and ``kubernetes``."""
        if self._targets is None:
            self._targets = [get_target(name, self.settings, self.config) for name in ("local", "kubernetes")]
        return self._targets

    def __call__(self, model: str, alias: str) -> ModelDrift:
        """The highest PSI now of any feature of ``model`` on the endpoints serving ``models:/MODEL@ALIAS``."""
        endpoints = serving_endpoints(model, alias, self.targets())
        if not endpoints:
            return ModelDrift(
                None,
                f"no running endpoint serves models:/{model}@{alias} "
                f"(start one with `jmk serve models:/{model}@{alias}`)",
            )
        best: tuple[float, str] | None = None
        problems = []
        for target, endpoint in endpoints:
            try:
                samples = psi_samples(target.metrics_text(endpoint.name, self.timeout))
            except (JMKError, MetricsTextError) as exc:
                problems.append(f"{endpoint.name}: {exc}")
                continue
            for labels, value in samples:
                if labels.get("model") == model and (best is None or value > best[0]):
                    best = (value, f"{labels.get('feature', '?')} on {endpoint.name} (version {labels.get('version')})")
        names = tuple(endpoint.name for _, endpoint in endpoints)
        if best is None:
            why = "; ".join(problems) or "no drift values yet (no requests in the window, or no drift baseline)"
            return ModelDrift(None, why, names)
        return ModelDrift(best[0], f"PSI {best[0]:.3f}: {best[1]}", names)
