"""Data shapes shared by every front door and backend: resources, job specs, job records.

Pure data and validation only: no I/O, no IPython, no MLflow. Records serialize to plain JSON
(``to_dict``/``from_dict``) because the job record on disk (or a Kubernetes Job's labels and
annotations) is the truth that kernels, the CLI and the server extension share.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .exceptions import JMKUsageError

_MEMORY_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$")
_MEMORY_FACTORS = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_CPU_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<milli>m)?$")


def parse_memory(text: str) -> int:
    """Bytes from a Kubernetes memory quantity such as ``16Gi``, ``512Mi`` or ``2G``."""
    match = _MEMORY_RE.match(str(text).strip())
    size = float(match["num"]) * _MEMORY_FACTORS[match["unit"]] if match else 0.0
    if not 0 < size < float("inf"):  # hundreds of digits make an infinite float
        raise JMKUsageError(
            f"--memory {text!r} is not a memory size. Use a Kubernetes quantity such as 512Mi, 16Gi or 2G."
        )
    return int(size)


def parse_cpu(text: str) -> float:
    """Cores from a Kubernetes CPU quantity such as ``2``, ``0.5`` or ``500m``."""
    match = _CPU_RE.match(str(text).strip())
    value = float(match["num"]) / (1000 if match["milli"] else 1) if match else 0.0
    if not 0 < value < float("inf"):
        raise JMKUsageError(f"--cpu {text!r} is not a CPU amount. Use cores (2, 0.5) or millicores (500m).")
    return value


def _count(text: str | int, flag: str, what: str, example: int) -> int:
    """A whole, non-negative number given to ``flag``."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = -1
    if value < 0:
        raise JMKUsageError(f"{flag} {text!r} is not a number of {what}. Use a whole number: {flag} {example}.")
    return value


def parse_gpus(text: str | int) -> int:
    """A whole, non-negative number of GPUs."""
    return _count(text, "--gpus", "GPUs", 1)


def parse_retries(text: str | int) -> int:
    """A whole, non-negative number of retries."""
    return _count(text, "--retries", "retries", 2)


# The rendezvous of a distributed job waits this long for every pod (pods that start minutes apart).
RENDEZVOUS_TIMEOUT_SECONDS = 900.0


def parse_nodes(text: str | int) -> int:
    """A whole, positive number of pods for ``--nodes``."""
    value = _count(text, "--nodes", "pods", 2)
    if value < 1:
        raise JMKUsageError("--nodes 0 runs nothing: give the number of pods to train on, e.g. --nodes 2.")
    return value


def parse_procs(text: str | int | None, gpus: int) -> int:
    """Processes per node for ``--procs`` (None: not given); each gets the same share of the node's GPUs."""
    if text is None:
        return 0
    value = _count(text, "--procs", "processes", 2)
    if value < 1:
        raise JMKUsageError("--procs 0 runs nothing: give the processes per node, e.g. --procs 2.")
    if gpus and gpus % value:
        raise JMKUsageError(
            f"--gpus {gpus} cannot be shared by --procs {value}: each process gets the same number of GPUs. "
            f"Use a --procs that divides {gpus} (e.g. --procs {gpus}), or a --gpus that --procs {value} divides."
        )
    return value


@dataclass(frozen=True)
class Resources:
    """What a job asks for. Quantities keep the user's spelling (Kubernetes wants strings)."""

    cpu: str | None = None
    memory: str | None = None
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.cpu is not None:
            parse_cpu(self.cpu)
        if self.memory is not None:
            parse_memory(self.memory)
        parse_gpus(self.gpus)

    def describe(self) -> str:
        """Short human form: ``2 CPU, 16Gi, 1 GPU``."""
        parts = [f"{self.cpu} CPU" if self.cpu else "", self.memory or ""]
        if self.gpus:
            parts.append(f"{self.gpus} GPU" + ("s" if self.gpus > 1 else ""))
        return ", ".join(p for p in parts if p) or "default resources"


class JobState(str, enum.Enum):
    """Lifecycle of a job. Terminal states never change again."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for states a job never leaves."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @property
    def mlflow_status(self) -> str:
        """The MLflow run status this state ends in."""
        return {"succeeded": "FINISHED", "cancelled": "KILLED"}.get(self.value, "FAILED")


@dataclass(frozen=True)
class JobSpec:
    """Everything a backend needs to run one job. Built by a front door, never mutated."""

    code: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    backend: str = "local"
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    experiment: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    notebook: str | None = None
    workdir: str | None = None
    register: str | None = None
    model_var: str | None = None
    input_example: str | None = None
    assigns: tuple[str, ...] = ()
    # Kubernetes: Secret names for envFrom, "pvc:CLAIM:/path[:ro]" mounts, a configured preset, retries.
    secrets: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    preset: str | None = None
    retries: int = 0
    # Distributed training under torchrun (``--nodes``/``--procs``): pods, processes per pod (0: not
    # given), and how long the rendezvous waits for every pod.
    nodes: int = 1
    procs: int = 0
    rendezvous_timeout: float = RENDEZVOUS_TIMEOUT_SECONDS
    # Batch prediction on Kubernetes: the shards this one job runs as ONE Indexed Job, the shard of
    # completion index I being ``batch_shards[I]`` (empty: an ordinary job). Backends without Indexed
    # Jobs refuse it.
    batch_shards: tuple[int, ...] = ()

    @property
    def distributed(self) -> bool:
        """Whether the cell runs under torchrun: on several pods, or with ``--procs``."""
        return self.nodes > 1 or self.procs > 0

    @property
    def procs_per_node(self) -> int:
        """Processes per node: ``--procs``, else one per GPU, else one."""
        return self.procs or self.resources.gpus or 1

    @property
    def world_size(self) -> int:
        """How many processes train together."""
        return self.nodes * self.procs_per_node if self.distributed else 1

    def describe_resources(self) -> str:
        """What the job asks for, per pod, and its ranks: ``2 pods x 1 GPU, 2 ranks``."""
        text = self.resources.describe()
        if not self.distributed:
            return text
        where = f"{self.nodes} pods x {text}" if self.nodes > 1 else text
        return f"{where}, {self.world_size} ranks"


_SPEC_TUPLES = ("inputs", "outputs", "assigns", "secrets", "volumes", "batch_shards")


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """A job spec as plain JSON-able data."""
    data = dataclasses.asdict(spec)
    for name in _SPEC_TUPLES:
        data[name] = list(data[name])
    return data


def spec_from_dict(data: dict[str, Any]) -> JobSpec:
    """Inverse of :func:`spec_to_dict`; ignores keys it does not know (newer writers)."""
    spec_data = dict(data)
    spec_data["resources"] = Resources(**spec_data.get("resources") or {})
    for name in _SPEC_TUPLES:
        spec_data[name] = tuple(spec_data.get(name, ()))
    spec_fields = {f.name for f in dataclasses.fields(JobSpec)}
    return JobSpec(**{k: v for k, v in spec_data.items() if k in spec_fields})


@dataclass
class JobRecord:
    """The persistent record of one job: what was asked, where it stands, where things are."""

    job_id: str
    spec: JobSpec
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    payload_uri: str | None = None
    result_uri: str | None = None
    log_path: str | None = None
    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None
    exit_code: int | None = None
    message: str = ""
    pid: int | None = None
    pid_start: float | None = None
    runner_pid: int | None = None
    gpu_ids: list[str] = field(default_factory=list)
    tracking_final: bool = False
    # Closing the run when its server did not answer: the steps sent so far, and why the rest was not.
    tracking_sent: list[str] = field(default_factory=list)
    tracking_error: str = ""
    watcher_pid: int | None = None
    # Where the backend put the job, e.g. {"namespace": "team-a", "name": "jmk-ada-1a2b3c4d", "uid": "..."}.
    backend_ref: dict[str, str] = field(default_factory=dict)
    # Who submitted the job (util.identity.current_user()); "" in records written before owners were kept.
    owner: str = ""

    # Set by a listing when the job's backend could not be asked (not stored).
    unreachable: str = ""

    @property
    def notes(self) -> list[str]:
        """What a listing should tell about the job beyond its message: what could not be reached."""
        notes = [self.unreachable] if self.unreachable else []
        if self.tracking_error and not self.tracking_final:
            notes.append(f"{self.tracking_error}; its run is closed (status, log, metrics) once it answers")
        return notes

    @property
    def age(self) -> float:
        """Seconds since the job was created."""
        return time.time() - self.created

    @property
    def elapsed(self) -> float:
        """Seconds the job has been (or was) running."""
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        data = dataclasses.asdict(self)
        data.pop("unreachable")
        data["state"] = self.state.value
        data["spec"] = spec_to_dict(self.spec)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """Inverse of :meth:`to_dict`; ignores keys it does not know (newer writers)."""
        spec = spec_from_dict(data["spec"])
        known = {f.name for f in dataclasses.fields(cls)} - {"spec", "state"}
        values = {k: v for k, v in data.items() if k in known}
        return cls(spec=spec, state=JobState(data["state"]), **values)
