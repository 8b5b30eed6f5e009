"""Prometheus durations, as the prometheus-operator's CRDs write them (a PodMonitor's interval, a rule's for)."""

from __future__ import annotations

import re

# The CRDs' pattern, less its "0": a scrape interval of nothing means no scrapes.
_DURATION = re.compile(r"(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?")


def check_prometheus_duration(value: object, what: str) -> list[str]:
    """Check a Prometheus duration above zero: ``30s``, ``1m30s``, ``2h`` (units y, w, d, h, m, s, ms, largest first).

    Args:
        value: The duration.
        what: Where it comes from, e.g. ``"c.KubernetesBackend.monitoring_interval"``; it leads the problem.

    Returns:
        The problems with it; empty when the CRDs' schemas accept it and it is not zero.
    """
    if isinstance(value, str) and value and _DURATION.fullmatch(value) and any(c in "123456789" for c in value):
        return []
    return [f"{what}: {value!r} is not a Prometheus duration: use a number and a unit among y, w, d, h, m, s, ms, "
            "largest first, such as '30s', '1m30s' or '2h'"]
