"""Leader election on a coordination.k8s.io/v1 Lease: one replica of the triggers' scheduler evaluates.

The pure part (:func:`build_lease`, :func:`lease_decision`) decides from a Lease as read and the
clock; :class:`LeaseHolder` is the thin client that reads, creates and replaces the Lease. A
replace carries the ``resourceVersion`` that was read, so of two replicas racing for an expired
Lease the API server lets one win (the other gets a 409 and keeps waiting), the way client-go's
``leaderelection`` does. A holder that cannot renew before its own deadline stops evaluating
before any other replica may take over (``renew_deadline`` < ``duration``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .pods import compact

log = logging.getLogger(__name__)

#: Seconds a Lease stays valid after its last renewal (``spec.leaseDurationSeconds``).
DEFAULT_DURATION = 30
#: ``MicroTime`` as the API server writes it.
MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def micro_time(moment: datetime) -> str:
    """``2026-12-06T13:59:34.000000Z``: a Lease's time fields."""
    return moment.astimezone(timezone.utc).strftime(MICRO_TIME)


def parse_micro_time(text: object) -> datetime | None:
    """The moment of a Lease time field (None when absent or unreadable)."""
    if isinstance(text, datetime):
        return text.astimezone(timezone.utc) if text.tzinfo else text.replace(tzinfo=timezone.utc)
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return None


def build_lease(name: str, namespace: str, holder: str, now: datetime, *, duration: int = DEFAULT_DURATION,
                acquired: datetime | None = None, transitions: int = 0, labels: Mapping[str, str] | None = None,
                resource_version: str | None = None) -> dict[str, Any]:
    """The coordination.k8s.io/v1 Lease held by ``holder``, renewed at ``now`` (pure)."""
    metadata = compact({"name": name, "namespace": namespace, "labels": dict(labels or {}),
                        "resourceVersion": resource_version})
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": int(duration),
            "acquireTime": micro_time(acquired or now),
            "renewTime": micro_time(now),
            "leaseTransitions": int(transitions),
        },
    }


@dataclass(frozen=True)
class Decision:
    """What to do with the Lease: ``create`` it, ``renew`` ours, ``take`` an expired one, or ``wait``."""

    action: str
    holder: str | None = None
    expires: datetime | None = None


def lease_decision(lease: Mapping[str, Any] | None, identity: str, now: datetime) -> Decision:
    """Decide from the Lease as read (None: there is none) whether ``identity`` may hold it at ``now``."""
    if lease is None:
        return Decision("create")
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or None
    renewed = parse_micro_time(spec.get("renewTime")) or parse_micro_time(spec.get("acquireTime"))
    duration = spec.get("leaseDurationSeconds") or DEFAULT_DURATION
    expires = None if renewed is None else renewed + timedelta(seconds=float(duration))
    if holder == identity:
        return Decision("renew", holder, expires)
    if holder is None or expires is None or expires <= now:
        return Decision("take", holder, expires)
    return Decision("wait", holder, expires)


class LeaseHolder:
    """Holds the Lease ``name`` in ``namespace`` as ``identity`` (a pod's name), through the API.

    :meth:`held` is what the scheduler asks before each tick: it renews (or tries to take) the
    Lease and answers whether this replica is the one that evaluates. Every API error counts as
    "not held" after ``renew_deadline`` seconds without a successful renewal.
    """

    def __init__(self, name: str, namespace: str, identity: str, *, duration: int = DEFAULT_DURATION,
                 renew_deadline: float | None = None, api: Any = None, kubeconfig: str | None = None) -> None:
        self.name, self.namespace, self.identity, self.duration = name, namespace, identity, int(duration)
        self.renew_deadline = renew_deadline if renew_deadline is not None else duration * 2 / 3
        self._api = api
        self._kubeconfig = kubeconfig
        self._renewed: datetime | None = None

    @property
    def api(self) -> Any:
        """The CoordinationV1Api (made on first use)."""
        if self._api is None:
            import kubernetes.client

            from .client import api_client

            self._api = kubernetes.client.CoordinationV1Api(api_client(self._kubeconfig))
        return self._api

    def _read(self) -> dict[str, Any] | None:
        """The Lease as the API server wrote it (camelCase JSON), or None."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.api.read_namespaced_lease(self.name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(response.data))

    def held(self, now: datetime | None = None) -> bool:
        """Renew or take the Lease; whether this replica holds it now.

        Writes go as a JSON merge patch carrying the ``resourceVersion`` read (the API server refuses it
        with a 409 when the Lease changed meanwhile): the client's typed bodies would rewrite the
        MicroTime fields in a form older API servers refuse. A new Lease is created without times, then
        patched the same way.
        """
        from kubernetes.client.exceptions import ApiException

        now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        try:
            lease = self._read()
            decision = lease_decision(lease, self.identity, now)
            if decision.action == "wait":
                self._renewed = None
                return False
            spec = (lease or {}).get("spec") or {}
            transitions = int(spec.get("leaseTransitions") or 0) + (decision.action == "take")
            acquired = parse_micro_time(spec.get("acquireTime")) if decision.action == "renew" else now
            if lease is None:
                bare = build_lease(self.name, self.namespace, self.identity, now, duration=self.duration)
                bare["spec"] = {key: bare["spec"][key] for key in ("holderIdentity", "leaseDurationSeconds")}
                created = self.api.create_namespaced_lease(self.namespace, bare, _preload_content=False)
                lease = dict(json.loads(created.data))
            body = build_lease(self.name, self.namespace, self.identity, now, duration=self.duration,
                               acquired=acquired, transitions=transitions)
            patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": body["spec"]}
            self.api.patch_namespaced_lease(self.name, self.namespace, patch, _preload_content=False,
                                            _content_type="application/merge-patch+json")
            if decision.action != "renew":
                log.info("lease %s/%s: now held by %s", self.namespace, self.name, self.identity)
            self._renewed = now
            return True
        except (ApiException, OSError) as exc:
            if getattr(exc, "status", None) == 409:  # another replica won the race
                self._renewed = None
                return False
            log.warning("lease %s/%s: cannot renew: %s", self.namespace, self.name, exc)
            return self._renewed is not None and (now - self._renewed).total_seconds() < self.renew_deadline


