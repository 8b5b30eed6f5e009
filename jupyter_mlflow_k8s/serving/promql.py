"""The PromQL over the inference server's metrics: one list, used by the docs, the dashboard and the alerts.

``QUERIES`` names each expression docs/serving.md shows under "Useful queries"; a test runs every one of
them against a real Prometheus scraping a served model and checks the answers against the traffic sent.
The Grafana dashboard (:mod:`.grafana`) and the PrometheusRule beside a Kubernetes endpoint (``ALERTS``)
take their expressions from here, so none of them can drift from what was tested.

Every expression keeps the labels ``model`` and ``version``: one series per served version, so a canary
and its primary read apart.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The labels every query keeps.
BY = "model, version"
#: The answers that count as errors: any status outside 2xx.
NOT_2XX = '{code!~"2.."}'


def _rate(metric: str, window: str = "5m", selector: str = "") -> str:
    return f"sum by ({BY}) (rate({metric}{selector}[{window}]))"


def _quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by ({BY}, le) (rate({histogram}_bucket[5m])))"


#: name -> PromQL expression, in the order the docs and the dashboard show them.
QUERIES: dict[str, str] = {
    "request_rate": _rate("jmk_requests_total", "1m"),
    "error_ratio": f"{_rate('jmk_requests_total', selector=NOT_2XX)} / {_rate('jmk_requests_total')}",
    "latency_p50": _quantile(0.5, "jmk_request_duration_seconds"),
    "latency_p90": _quantile(0.9, "jmk_request_duration_seconds"),
    "latency_p99": _quantile(0.99, "jmk_request_duration_seconds"),
    "in_flight": f"sum by ({BY}) (jmk_requests_in_flight)",
    "batch_size_mean": f"{_rate('jmk_batch_size_sum')} / {_rate('jmk_batch_size_count')}",
    "batch_size_p90": _quantile(0.9, "jmk_batch_size"),
    "drift_psi": f"max by ({BY}, feature) (jmk_feature_drift_psi)",
}

#: What each query answers, in the unit Grafana shows.
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "request_rate": ("requests per second", "reqps"),
    "error_ratio": ("share of answers that were not 2xx", "percentunit"),
    "latency_p50": ("median time from arrival to answer", "s"),
    "latency_p90": ("90th percentile of time from arrival to answer", "s"),
    "latency_p99": ("99th percentile of time from arrival to answer", "s"),
    "in_flight": ("requests being answered", "short"),
    "batch_size_mean": ("mean rows per model call", "short"),
    "batch_size_p90": ("90th percentile of rows per model call", "short"),
    "drift_psi": ("population stability index of each input feature against the version's baseline", "short"),
}


@dataclass(frozen=True)
class Alert:
    """One alerting rule: fires when ``expr`` has held for ``for_`` (a Prometheus duration)."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str


#: Error ratio above 5% for 5 minutes.
ERROR_RATIO_THRESHOLD = 0.05
#: PSI over 0.25 is the common reading of a significant shift; for 15 minutes, so a burst of odd rows does not page.
PSI_THRESHOLD = 0.25

ALERTS: tuple[Alert, ...] = (
    Alert(
        name="JMKEndpointErrorRatio",
        expr=f"({QUERIES['error_ratio']}) > {ERROR_RATIO_THRESHOLD}",
        for_="5m",
        severity="warning",
        summary="{{ $labels.model }} version {{ $labels.version }}: {{ $value | humanizePercentage }} of "
        "requests failed over 5 minutes",
    ),
    Alert(
        name="JMKFeatureDrift",
        expr=f"{QUERIES['drift_psi']} > {PSI_THRESHOLD}",
        for_="15m",
        severity="warning",
        summary="{{ $labels.model }} version {{ $labels.version }}: feature {{ $labels.feature }} drifted "
        "(PSI {{ $value }})",
    ),
)
