"""Cluster DNS records for the real node: Services and pod hostnames, as hosts files for dnsmasq.

Debian has no CoreDNS, so the node's DNS server is dnsmasq, started by ``node.py`` on the node's
bridge address with ``--hostsdir`` (it re-reads files there as they change, through inotify). This
process keeps that directory equal to what the API server says, polling every half second:

- a Service with a cluster IP: ``<svc>.<ns>.svc.<domain>`` -> the cluster IP;
- a headless Service: ``<svc>.<ns>.svc.<domain>`` -> each endpoint address (not-ready ones too when
  the Service publishes them), and ``<hostname>.<svc>.<ns>.svc.<domain>`` for an address whose pod
  set ``hostname`` and ``subdomain`` (what the endpoints controller puts in ``hostname``).

One file per namespace, written to a temporary name and renamed, so dnsmasq never reads half a file.
Polling (not a watch) survives API server restarts without any resume logic; a name is at most
about 0.5 s late.

Run: ``python -m cluster.dns --kubeconfig KC --dir DIR [--domain cluster.local]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("cluster-dns")
POLL_SECONDS = 0.5


def records(services: list[dict[str, Any]], endpoints: list[dict[str, Any]], domain: str) -> dict[str, list[str]]:
    """``{namespace: ["ip name", ...]}`` for these Services and Endpoints (plain API dicts)."""
    by_ns: dict[str, list[str]] = {}
    endpoints_by_key = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        fqdn = f"{name}.{ns}.svc.{domain}"
        lines = by_ns.setdefault(ns, [])
        cluster_ip = spec.get("clusterIP") or ""
        if cluster_ip and cluster_ip != "None":
            lines.append(f"{cluster_ip} {fqdn}")
            continue
        ep = endpoints_by_key.get((ns, name)) or {}
        for subset in ep.get("subsets") or []:
            addresses = list(subset.get("addresses") or [])
            if spec.get("publishNotReadyAddresses"):
                addresses += subset.get("notReadyAddresses") or []
            for address in addresses:
                ip = address.get("ip")
                if not ip:
                    continue
                lines.append(f"{ip} {fqdn}")
                if address.get("hostname"):
                    lines.append(f"{ip} {address['hostname']}.{fqdn}")
    return {ns: sorted(set(lines)) for ns, lines in by_ns.items()}


def write_records(directory: Path, wanted: dict[str, list[str]]) -> None:
    """Make ``directory`` hold exactly one ``<namespace>.hosts`` file per namespace in ``wanted``."""
    directory.mkdir(parents=True, exist_ok=True)
    for ns, lines in wanted.items():
        path = directory / f"{ns}.hosts"
        text = "".join(f"{line}\n" for line in lines)
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        tmp = directory / f".{ns}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
    for path in directory.glob("*.hosts"):
        if path.name[: -len(".hosts")] not in wanted:
            path.unlink(missing_ok=True)


def run(kubeconfig: str, directory: Path, domain: str, stop: threading.Event) -> None:
    """Poll Services and Endpoints until ``stop`` is set; API errors are logged and retried."""
    import kubernetes

    api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    core = kubernetes.client.CoreV1Api(api)
    while not stop.is_set():
        try:
            services = api.sanitize_for_serialization(core.list_service_for_all_namespaces(_request_timeout=5))
            endpoints = api.sanitize_for_serialization(core.list_endpoints_for_all_namespaces(_request_timeout=5))
            write_records(directory, records(services["items"], endpoints["items"], domain))
        except Exception as exc:  # the API server restarting, say: try again next round
            log.warning("cannot read services: %s", exc)
        stop.wait(POLL_SECONDS)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--domain", default="cluster.local")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("writing records for %s into %s (pid %d)", args.domain, args.dir, os.getpid())
    run(args.kubeconfig, args.dir, args.domain, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
