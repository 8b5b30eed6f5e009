"""One node of a distributed job: wait for the peers, run the runner under torchrun, stop together.

``python -m jupyter_mlflow_k8s.distributed PAYLOAD_URL --nodes N --procs P [--hosts FORMAT]
[--port 29400] [--rendezvous-timeout 900] [--node-rank R]``

- ``--hosts`` names every node: a format with ``{rank}`` for the node's index, e.g.
  ``jmk-ada-1a2b3c4d-{rank}.jmk-ada-1a2b3c4d.team-a.svc.cluster.local`` (the pods' hostnames under
  their headless Service). Node 0 hosts the c10d rendezvous store on ``--port``; every node's address
  in the rendezvous is its own name, so that node 0's name becomes ``MASTER_ADDR``. One node
  (``--nodes 1``) needs no names: its rendezvous is on localhost, as ``torchrun --standalone``.
- The node's index is ``--node-rank``, else ``$JOB_COMPLETION_INDEX`` (an Indexed Job's pod), else 0.
- Before torchrun starts, the node waits (up to the rendezvous timeout) until every peer's name
  resolves: pod DNS lags pod creation, and pods of one job may start minutes apart.
- Torchrun's elastic agent runs ``P`` workers, each ``python -m jupyter_mlflow_k8s.runner
  PAYLOAD_URL`` with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
  set; the rendezvous waits ``--rendezvous-timeout`` seconds for every node; there are no restarts.
- The nodes stop together. A node whose rank failed says so (``[jmk] rank R failed with exit code
  C``) and puts the reason under a key of the rendezvous store; every node watches that key (and
  its contact with node 0's store) and stops its workers when it appears. Without it, the ranks left
  would wait in their next collective until its timeout (30 minutes).

Exit status: 0; the failed worker's own status (1: the cell raised; see the runner); 143 stopped
(cancelled, or another node's rank failed); 2 this node could not start (no torch in the image,
peers' names or the rendezvous timed out).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from typing import Any

from ..ranks import DISTRIBUTED_ENV, EXIT_STOPPED, FAILED_LINE, GPUS_PER_PROC_ENV

EXIT_CANNOT_START = 2
DEFAULT_PORT = 29400
# Keys this launcher keeps in the rendezvous store (beside torch's own).
ABORT_KEY = "jmk/abort"
# How often a node looks at the abort key, and how long it keeps in touch with node 0's store.
WATCH_SECONDS = 0.5
LOST_CONTACT_SECONDS = 10.0
SHUTDOWN_SECONDS = 5


class Stopped(BaseException):
    """Raised in the main thread when the node is asked to stop (SIGTERM) before torch handles it."""


def _say(text: str) -> None:
    print(f"[jmk] {text}", file=sys.stderr, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line (the backends build it; a person rarely types it)."""
    parser = argparse.ArgumentParser(prog="python -m jupyter_mlflow_k8s.distributed")
    parser.add_argument("payload_url")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--hosts", default="", help="every node's name, with {rank} for its index")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--rendezvous-timeout", type=float, default=900.0)
    parser.add_argument("--node-rank", type=int)
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.procs < 1:
        parser.error("--nodes and --procs must be at least 1")
    if args.nodes > 1 and "{rank}" not in args.hosts:
        parser.error("--hosts must name the nodes, with {rank} for a node's index, when --nodes > 1")
    if args.node_rank is None:
        args.node_rank = int(os.environ.get("JOB_COMPLETION_INDEX") or 0)
    return args


def wait_for_names(names: list[str], timeout: float) -> list[str]:
    """Wait until every name resolves; returns those that still do not after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    waiting = list(names)
    told = False
    while waiting:
        waiting = [name for name in waiting if not _resolves(name)]
        if not waiting or time.monotonic() >= deadline:
            break
        if not told:
            _say(f"waiting for the names of the other pods to resolve: {', '.join(waiting)}")
            told = True
        time.sleep(0.2)
    return waiting


def _resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None)
    except OSError:
        return False
    return True


class Gang:
    """A node's watch on the others, through the rendezvous store on node 0."""

    def __init__(self, host: str, port: int, node_rank: int, nodes: int) -> None:
        self.host, self.port, self.node_rank, self.nodes = host, port, node_rank, nodes
        self.store: Any = None
        self.reason = ""  # why this node was stopped ('' while it was not)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="jmk-gang", daemon=True)

    def _connect(self) -> Any:
        from torch.distributed import TCPStore  # type: ignore[attr-defined]

        return TCPStore(self.host, self.port, is_master=False, timeout=timedelta(seconds=5), wait_for_workers=False)

    def _watch(self) -> None:
        lost_since: float | None = None
        while not self.done.wait(WATCH_SECONDS):
            if self.store is None:  # node 0's store is not up yet: the rendezvous itself waits for it
                try:
                    socket.create_connection((self.host, self.port), timeout=1).close()
                    self.store = self._connect()
                except Exception:  # noqa: S112 - not listening yet: asked again at the next turn
                    continue
            try:
                if self.store.check([ABORT_KEY]):
                    self.stop(self.store.get(ABORT_KEY).decode(errors="replace"))
                    return
                lost_since = None
            except Exception as exc:  # node 0 is gone (or its store closed as the job ended)
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > LOST_CONTACT_SECONDS and not self.done.is_set():
                    self.stop(f"node 0 no longer answers ({type(exc).__name__}: {str(exc)[:200]})")
                    return

    def stop(self, reason: str) -> None:
        """Stop this node's workers (the agent handles the SIGTERM); the node exits 143."""
        self.reason = reason
        _say(f"stopping: {reason}")
        os.kill(os.getpid(), signal.SIGTERM)

    def tell(self, reason: str) -> None:
        """Ask every node to stop (this node's rank failed)."""
        try:
            self._connect().set(ABORT_KEY, reason)  # a connection of its own: the watch thread uses its one
        except Exception as exc:  # node 0 is gone itself: the others lose contact with it and stop
            _say(f"could not tell the other nodes to stop: {exc}")

    def finished(self) -> None:
        """Stop watching: this node's agent is done (node 0's store goes with its agent)."""
        self.done.set()


def launch_config(args: argparse.Namespace, job_id: str) -> Any:
    """Torchrun's launch configuration for this node (c10d rendezvous, no restarts)."""
    from torch.distributed.launcher.api import LaunchConfig

    timeout = int(args.rendezvous_timeout)
    if args.nodes == 1:  # as torchrun --standalone: the store on a free port of this machine
        endpoint, local_addr, is_host = "localhost:0", None, True
    else:
        endpoint = f"{args.hosts.format(rank=0)}:{args.port}"
        local_addr, is_host = args.hosts.format(rank=args.node_rank), args.node_rank == 0
    return LaunchConfig(
        min_nodes=args.nodes,
        max_nodes=args.nodes,
        nproc_per_node=args.procs,
        run_id=job_id,
        role="rank",
        rdzv_endpoint=endpoint,
        rdzv_backend="c10d",
        # join: how long the rendezvous waits for every node; read: how long a node waits for node 0's store.
        rdzv_configs={"join_timeout": timeout, "read_timeout": timeout, "last_call_timeout": 1, "is_host": is_host},
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        local_addr=local_addr,
        # A rank stopped inside a collective cannot run Python (nor its SIGTERM handler) until it returns:
        # it gets this long, then SIGKILL (torch's default, 30 s, would hold every stop that long).
        shutdown_timeout=SHUTDOWN_SECONDS,
    )


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


def run(args: argparse.Namespace) -> int:
    """Run this node; returns its exit status."""
    job_id = os.environ.get("JMK_JOB_ID", "jmk")
    user_level = os.environ.get("TORCH_CPP_LOG_LEVEL")
    os.environ["TORCH_CPP_LOG_LEVEL"] = user_level or "ERROR"  # not a line per retry of the store's client
    try:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import elastic_launch
    except ImportError as exc:
        _say(f"torch is not installed where this job runs ({exc}), and --nodes/--procs run the cell under "
             f"torchrun. Use an image with torch (pip install torch), or run without --nodes/--procs.")
        return EXIT_CANNOT_START
    finally:
        if user_level is None:
            del os.environ["TORCH_CPP_LOG_LEVEL"]  # the workers log as the user configured
    gang = None
    if args.nodes > 1:
        peers = [args.hosts.format(rank=r) for r in range(args.nodes)]
        missing = wait_for_names(peers, args.rendezvous_timeout)
        if missing:
            _say(f"the names of {', '.join(missing)} did not resolve within {args.rendezvous_timeout:g} s: their "
                 "pods did not start (see %jobs for why), or the cluster's DNS does not serve the job's headless "
                 "Service. Stopping.")
            return EXIT_CANNOT_START
        gang = Gang(args.hosts.format(rank=0), args.port, args.node_rank, args.nodes)
        gang.thread.start()
    gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    os.environ[DISTRIBUTED_ENV] = "1"
    os.environ[GPUS_PER_PROC_ENV] = str(len(gpus) // args.procs if gpus else 0)
    entrypoint = (sys.executable, "-m", "jupyter_mlflow_k8s.runner", args.payload_url)
    try:
        elastic_launch(launch_config(args, job_id), entrypoint[0])(*entrypoint[1:])
    except ChildFailedError as failure:
        if gang is not None:
            gang.finished()
        if gang is not None and gang.reason:
            return EXIT_STOPPED
        rank, first = failure.get_first_failure()
        code = _exit_status(int(first.exitcode))
        print(FAILED_LINE.format(rank=rank, code=code), file=sys.stderr, flush=True)
        if gang is not None:
            gang.tell(f"rank {rank} on node {args.node_rank} failed with exit code {code}")
        return code
    except (SignalException, Stopped):
        return EXIT_STOPPED
    except Exception as exc:  # the rendezvous timed out or broke
        if gang is not None:
            gang.finished()
        if gang is not None and gang.reason:
            return EXIT_STOPPED
        _say(f"node {args.node_rank} could not join the other {args.nodes - 1} node(s) within "
             f"{args.rendezvous_timeout:g} s ({type(exc).__name__}: {str(exc)[:300]}). Stopping.")
        if gang is not None:
            gang.tell(f"node {args.node_rank} could not join the rendezvous")
        return EXIT_CANNOT_START
    if gang is not None:
        gang.finished()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; a SIGTERM before torch takes over stops the node cleanly (PID 1 of a pod ignores it otherwise)."""
    args = parse(sys.argv[1:] if argv is None else argv)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise Stopped()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run(args)
    except Stopped:
        return EXIT_STOPPED
