"""The local backend's queue: jobs take a freed slot in the order they were submitted.

Supervisors poll for a slot; without an order, whichever polled first after a job ended took the
slot, so a job submitted later could start before one that had waited longer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from jupyter_mlflow_k8s.backends.local_supervisor import QUEUE, _Supervisor, take_ticket
from jupyter_mlflow_k8s.models import JobSpec
from jupyter_mlflow_k8s.records import JobStore
from jupyter_mlflow_k8s.util.processes import process_started


def _supervisor(store: JobStore, job_id: str, locks: Path) -> _Supervisor:
    (store.job_dir(job_id) / "launch.json").write_text(json.dumps({"locks": str(locks), "slots": 1, "gpus": []}))
    return _Supervisor(store.job_dir(job_id))


def test_a_later_job_waits_while_an_earlier_one_waits(tmp_path: Path) -> None:
    store, locks = JobStore(tmp_path / "state"), tmp_path / "state" / "locks"
    first, second = store.create(JobSpec(code="a = 1")), store.create(JobSpec(code="b = 2"))
    take_ticket(locks, first.job_id)
    take_ticket(locks, second.job_id)
    store.update(first.job_id, pid=os.getpid(), pid_start=process_started(os.getpid()))  # its supervisor lives
    later, earlier = _supervisor(store, second.job_id, locks), _supervisor(store, first.job_id, locks)
    assert earlier._my_turn() and not later._my_turn()
    assert earlier._acquire(0) == []  # it takes the slot and leaves the queue...
    assert later._my_turn()  # ...so the next in line may go
    assert not later._try_lock("slot-0")  # the next in line still waits for the slot the earlier job holds


def test_a_ticket_whose_supervisor_died_does_not_hold_the_queue(tmp_path: Path) -> None:
    store, locks = JobStore(tmp_path / "state"), tmp_path / "state" / "locks"
    first, second = store.create(JobSpec(code="a = 1")), store.create(JobSpec(code="b = 2"))
    take_ticket(locks, first.job_id)
    take_ticket(locks, second.job_id)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.update(first.job_id, pid=gone.pid, pid_start=1.0)  # killed while queued: its record says QUEUED
    assert _supervisor(store, second.job_id, locks)._my_turn()
    assert [t.name.partition("-")[2] for t in (locks / QUEUE).iterdir()] == [second.job_id]
