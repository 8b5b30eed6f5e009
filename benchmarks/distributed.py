"""Distributed training on the test cluster: time to rendezvous and to the first step, against bare torchrun.

Usage::

    python benchmarks/distributed.py [--repeat 3] [--keep]

It starts its own test cluster as ``benchmarks/k8s_jobs.py`` does (``tests/cluster``: Kubernetes 1.20 with the
real node running the runner image built from docker/runner/Dockerfile, its cluster DNS, an ``mlflow server``
the pods reach), in a temporary directory, and stops it at the end. Only one real node runs per machine.

Each round, interleaved, after one warm-up round of each:

- **ours**: ``JobService.submit`` of a ``kubernetes`` job with ``nodes=2, procs=1`` (what ``%%train --backend
  kubernetes --nodes 2`` submits): the MLflow run, the payload, the Secrets, the Service and the Jobs; the
  launcher in each pod waits for the peers' names and runs the runner under torchrun's agent.
- **bare torchrun**: two pods of the same image and a headless Service created by hand with the official client,
  each running ``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint POD0:29400`` on the
  same cell given as ``python -c``, after a shell loop that waits until pod 0's name resolves (without it, the
  second pod's torchrun fails on a name that does not resolve yet). No MLflow, no payload, no Secret.

Both run the same cell: ``init_process_group()``, then one DDP step (forward, backward, all-reduce, optimizer
step) of a small linear model on gloo. Rank 0 prints ``time.time()`` after each; the pods run on this machine,
so their clock is the benchmark's. "rendezvous" is from just before the submit (or the first create call) to
``init_process_group`` returning on rank 0; "first step" to the first step done; "ended" to the job's end as
``JobService.follow`` reports it (ours) or to both pods' containers terminated (bare). It prints a table
(metric | ours | bare torchrun | ratio); it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from k8s_jobs import Bench, environment, machine_description, progress, ratio, secs
from machine import table

CELL = """
import time
import torch
import torch.distributed as dist

dist.init_process_group()
rendezvous = time.time()
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model(torch.randn(32, 64)).square().mean().backward()
optimizer.step()
step = time.time()
if dist.get_rank() == 0:
    print(f"BENCH {rendezvous:.6f} {step:.6f}", flush=True)
dist.destroy_process_group()
"""
BENCH_LINE = re.compile(r"BENCH (\d+\.\d+) (\d+\.\d+)")
PORT = 29400
TIMEOUT_S = 300.0


@dataclass
class Sample:
    rendezvous: float | None = None
    step: float | None = None
    end: float | None = None
    state: str = ""


def _from_log(text: str, start: float, sample: Sample) -> Sample:
    match = BENCH_LINE.search(text)
    if match:
        sample.rendezvous, sample.step = float(match[1]) - start, float(match[2]) - start
    return sample


def run_ours(service: Any) -> Sample:
    """One ``--nodes 2`` job through JobService, followed to its end."""
    from jupyter_mlflow_k8s.models import JobRecord, JobSpec

    spec = JobSpec(code=CELL, backend="kubernetes", nodes=2, procs=1, outputs=())
    start = time.time()
    record = service.submit(spec, {})
    sample = Sample()
    for item in service.follow(record.job_id):
        if isinstance(item, JobRecord):
            sample.end, sample.state = time.time() - start, item.state.value
            if item.state.value != "succeeded":
                progress(f"ours ended {item.state.value}: {item.message}\n{service.read_log(record.job_id)[-3000:]}")
            break
        if time.time() - start > TIMEOUT_S:
            service.cancel(record.job_id)
            sample.state = "timeout"
            break
    return _from_log(service.read_log(record.job_id), start, sample)


def _bare_objects(name: str, namespace: str, image: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    service = {
        "metadata": {"name": name, "labels": {"bench": name}},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"bench": name},
                 "ports": [{"name": "rendezvous", "port": PORT}]},
    }
    host0 = f"{name}-0.{name}.{namespace}.svc.cluster.local"
    script = (f"until getent hosts {host0} >/dev/null; do sleep 0.2; done; "
              f"exec torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint {host0}:{PORT} "
              f"--rdzv-id {name} --max-restarts 0 --no-python python -c \"$CELL\"")
    pods = []
    for index in range(2):
        pods.append({
            "metadata": {"name": f"{name}-{index}", "labels": {"bench": name}},
            "spec": {
                "hostname": f"{name}-{index}", "subdomain": name, "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": image, "command": ["sh", "-c", script],
                                "env": [{"name": "CELL", "value": CELL}]}],
            },
        })
    return service, pods


def run_bare(api: Any, namespace: str, image: str) -> Sample:
    """The headless Service and two pods by hand; wait until both containers have terminated."""
    import kubernetes
    from kubernetes.watch.watch import iter_resp_lines

    core = kubernetes.client.CoreV1Api(api)
    name = f"bare-{uuid.uuid4().hex[:6]}"
    service, pods = _bare_objects(name, namespace, image)
    start = time.time()
    core.create_namespaced_service(namespace, service, _preload_content=False).release_conn()
    for pod in pods:
        core.create_namespaced_pod(namespace, pod, _preload_content=False).release_conn()
    sample = Sample()
    ended: dict[str, int] = {}
    response = core.list_namespaced_pod(namespace, label_selector=f"bench={name}", watch=True,
                                        timeout_seconds=int(TIMEOUT_S), _preload_content=False)
    try:
        for line in iter_resp_lines(response):
            obj = json.loads(line)["object"]
            statuses = obj.get("status", {}).get("containerStatuses") or []
            terminated = statuses[0].get("state", {}).get("terminated") if statuses else None
            if terminated:
                ended[obj["metadata"]["name"]] = int(terminated.get("exitCode", -1))
            if len(ended) == 2:
                sample.end = time.time() - start
                break
    finally:
        response.close()
        response.release_conn()
    sample.state = "succeeded" if ended and all(code == 0 for code in ended.values()) else f"exit codes {ended}"
    log = core.read_namespaced_pod_log(f"{name}-0", namespace, _preload_content=False).data.decode()
    for pod in pods:
        core.delete_namespaced_pod(pod["metadata"]["name"], namespace, _preload_content=False).release_conn()
    core.delete_namespaced_service(name, namespace, _preload_content=False).release_conn()
    return _from_log(log, start, sample)


def measure(bench: Bench, repeat: int) -> tuple[dict[str, list[Sample]], dict[str, Sample]]:
    namespace = bench.namespace("bench-distributed")
    service = bench.service(namespace)
    runs = {"ours": lambda: run_ours(service), "bare torchrun": lambda: run_bare(bench.api, namespace, bench.image)}
    progress("warm-up round (the first job starts the watch, imports MLflow; the image's pages get cached)")
    cold = {name: run() for name, run in runs.items()}
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    for round_ in range(repeat):
        progress(f"round {round_ + 1}/{repeat}")
        for name, run in runs.items():
            sample = run()
            progress(f"  {name}: {sample}")
            samples[name].append(sample)
    return samples, cold


def report(samples: dict[str, list[Sample]], cold: dict[str, Sample]) -> str:
    def median(name: str, attribute: str) -> float | None:
        values = [v for s in samples[name] if s.state == "succeeded" and (v := getattr(s, attribute)) is not None]
        return statistics.median(values) if values else None

    rows = []
    for label, attribute in (("submit -> rendezvous done (rank 0)", "rendezvous"),
                             ("submit -> first step done (rank 0)", "step"), ("submit -> job ended", "end")):
        ours, bare = median("ours", attribute), median("bare torchrun", attribute)
        rows.append([f"{label}, median s", secs(ours), secs(bare), ratio(ours, bare)])
    runs = len(samples["ours"])
    out = [table(f"\n2 pods x 1 process, gloo, {runs} rounds (ratio = ours / bare torchrun)",
                 ["metric", "ours", "bare torchrun", "ratio"], rows)]
    rows = [[name, secs(s.rendezvous), secs(s.step), secs(s.end), s.state] for name, s in cold.items()]
    out.append(table("\nWarm-up round (not in the table above), s from submit",
                     ["what", "rendezvous", "first step", "ended", "state"], rows))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    machine = machine_description()
    with environment(args.keep) as bench:
        if not bench.cluster.real_node:
            progress(f"no real node here ({bench.cluster.node_fallback_reason}): pods would not run torch in "
                     "containers of the runner image; nothing to compare")
            return 3
        samples, cold = measure(bench, max(1, args.repeat))
    print("Machine")
    for label, value in machine:
        print(f"  {label}: {value}")
    print("  cluster: tests/cluster (Kubernetes 1.20 control plane; a real node: kubelet, containerd 1.6, runc, "
          "the runner image, cluster DNS by dnsmasq)")
    print(report(samples, cold))
    print(f"\nwhole benchmark: {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
