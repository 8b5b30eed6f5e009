"""The PromQL over the inference server's metrics: one list, used by the docs, the dashboard and the alerts.

``QUERIES`` names each expression docs/serving.md shows under "Useful queries"; a test runs every one of
them against a real Prometheus scraping a served model and checks the answers against the traffic sent.
The Grafana dashboard (:mod:`.grafana`) and the PrometheusRule beside a Kubernetes endpoint (``ALERTS``)
take their expressions from here, so none of them can drift from what was tested.

Every expression keeps the labels ``model`` and ``version``: one series per served version, so a canary
and its primary read apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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


# A quoted string (left as it is), or one of our metrics with the selector that follows it, if any.
_SELECTORS = re.compile(r'"(?:[^"\\]|\\.)*"'
                        r'|(?<![\w:])(?P<metric>jmk_[\w:]*)\s*(?P<braces>\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\})?')
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def scoped(expr: str, matchers: Mapping[str, str]) -> str:
    """``expr`` with ``name="value"`` matchers added to the selector of every ``jmk_...`` metric in it.

    ``scoped('rate(jmk_requests_total{code!~"2.."}[5m])', {"namespace": "ml"})`` is
    ``'rate(jmk_requests_total{code!~"2..",namespace="ml"}[5m])'``: a metric without a selector gets one,
    one with a selector keeps its matchers; strings and other names are left alone. An alert of one
    endpoint reads only that endpoint's series this way.

    Raises:
        ValueError: A matcher's name is not a Prometheus label name.
    """
    bad = [name for name in matchers if not _LABEL_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"Not Prometheus label names: {', '.join(map(repr, bad))} (letters, digits and '_', "
                         "not starting with a digit).")
    added = ",".join(f'{name}="{_quoted(value)}"' for name, value in matchers.items())
    if not added:
        return expr

    def insert(match: re.Match[str]) -> str:
        if match.group("metric") is None:  # a string
            return match.group(0)
        inside = (match.group("braces") or "{}")[1:-1].strip().rstrip(",")
        return f"{match.group('metric')}{{{inside + ',' if inside else ''}{added}}}"

    return _SELECTORS.sub(insert, expr)


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
