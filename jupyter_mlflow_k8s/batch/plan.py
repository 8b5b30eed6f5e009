"""The plan of a batch prediction: which input files each shard reads, fixed once and kept beside the output.

Pure data and decisions (no I/O): the sorted input files with their sizes and versions (ETag or
modification time), split into shards by size, and the comparison of a stored plan with a new one.
A shard's files never change after the plan is made, so a restarted shard writes the same output
objects again, and a rerun of the same command finds the same shards (and skips the finished ones).
The output prefix keeps the plan (:data:`PLAN_FILE`); :mod:`.service` reads and writes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
from collections.abc import Sequence
from typing import Any

from ..exceptions import JMKUsageError

#: Where a batch prediction keeps its own files under the output prefix (readers skip ``_`` folders).
STATE_FOLDER = "_jmk_batch"
PLAN_FILE = f"{STATE_FOLDER}/plan.json"
QUARANTINE_FOLDER = "_quarantine"
#: Written under the output prefix once every shard has finished within the error threshold.
SUCCESS_FILE = "_SUCCESS"
#: The formats read and written, by file suffix.
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file: its URL, its size in bytes, and its version (ETag, or modification time)."""

    url: str
    size: int
    version: str

    @property
    def format(self) -> str:
        """``csv`` or ``parquet``, from the file's suffix."""
        return format_of(self.url)


def format_of(url: str) -> str:
    """``csv`` or ``parquet`` for a file name; :class:`JMKUsageError` for anything else."""
    name = url.rsplit("/", 1)[-1].lower()
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise JMKUsageError(
        f"{url}: not a CSV or Parquet file (its name must end in .csv, .parquet or .pq). "
        "Narrow --input to those files, e.g. --input 's3://bucket/in/*.parquet'."
    )


def part_name(index: int, output_format: str) -> str:
    """The output object of the plan's ``index``-th input file: ``part-00003.parquet``."""
    return f"part-{index:05d}.{output_format}"


def quarantine_name(index: int) -> str:
    """The quarantine object of the plan's ``index``-th input file (CSV: bad rows keep whatever they held)."""
    return f"{QUARANTINE_FOLDER}/part-{index:05d}.csv"


def marker_name(shard: int) -> str:
    """The success marker of one shard, written last (JSON: rows, errors, seconds)."""
    return f"{STATE_FOLDER}/shard-{shard:05d}/{SUCCESS_FILE}"


def split_into_shards(files: Sequence[InputFile], shards: int) -> list[list[int]]:
    """The indices of ``files`` each of ``shards`` shards reads, balanced by size, each list sorted.

    Largest file first to the shard with the fewest bytes so far (ties: the lower shard, the lower
    file index), so the same files always give the same shards.
    """
    if shards < 1:
        raise JMKUsageError(f"--shards {shards}: give at least 1, e.g. --shards 4.")
    if shards > len(files):
        raise JMKUsageError(
            f"--shards {shards} but only {len(files)} input file(s) match: a shard reads whole files. "
            f"Use --shards {max(1, len(files))} or fewer."
        )
    loads: list[tuple[int, int]] = [(0, shard) for shard in range(shards)]
    heapq.heapify(loads)
    assigned: list[list[int]] = [[] for _ in range(shards)]
    for index in sorted(range(len(files)), key=lambda i: (-files[i].size, i)):
        load, shard = heapq.heappop(loads)
        assigned[shard].append(index)
        heapq.heappush(loads, (load + max(files[index].size, 1), shard))
    return [sorted(indices) for indices in assigned]


@dataclasses.dataclass(frozen=True)
class Plan:
    """A batch prediction fixed: the model version, the input files, their shards, the output."""

    model: str  # the URI the shards load (a registry alias resolved to its version)
    model_ref: str  # what the user gave
    input: str
    output: str
    output_format: str
    files: tuple[InputFile, ...]
    shards: tuple[tuple[int, ...], ...]

    @classmethod
    def make(
        cls,
        model: str,
        model_ref: str,
        input: str,
        output: str,
        output_format: str,
        files: Sequence[InputFile],
        shards: int,
    ) -> Plan:
        """A new plan of ``files`` (sorted by URL) in ``shards`` shards."""
        ordered = tuple(sorted(files, key=lambda f: f.url))
        split = tuple(tuple(s) for s in split_into_shards(ordered, shards))
        return cls(model, model_ref, input, output.rstrip("/") + "/", output_format, ordered, split)

    @property
    def plan_id(self) -> str:
        """A short hash of what decides the outputs: the model, the files and their versions, the shards, the format."""
        key = json.dumps(
            [self.model, self.output_format, [dataclasses.astuple(f) for f in self.files], self.shards], sort_keys=True
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def shard_files(self, shard: int) -> list[tuple[int, InputFile]]:
        """``(index in the plan, file)`` of each file one shard reads."""
        return [(index, self.files[index]) for index in self.shards[shard]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (with its version and id)."""
        return {
            "version": PLAN_VERSION,
            "plan_id": self.plan_id,
            "model": self.model,
            "model_ref": self.model_ref,
            "input": self.input,
            "output": self.output,
            "output_format": self.output_format,
            "files": [dataclasses.asdict(f) for f in self.files],
            "shards": [list(s) for s in self.shards],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data["model"],
            data["model_ref"],
            data["input"],
            data["output"],
            data["output_format"],
            tuple(InputFile(**f) for f in data["files"]),
            tuple(tuple(s) for s in data["shards"]),
        )


def differences(stored: Plan, new: Plan) -> list[str]:
    """What differs between the plan kept under the output prefix and the one this command would make ([]: none)."""
    found = []
    if stored.model != new.model:
        found.append(f"the model was {stored.model}, now {new.model}")
    old_files = {f.url: f for f in stored.files}
    new_files = {f.url: f for f in new.files}
    added = sorted(set(new_files) - set(old_files))
    removed = sorted(set(old_files) - set(new_files))
    changed = sorted(u for u in set(old_files) & set(new_files) if old_files[u] != new_files[u])
    for what, urls in (("new", added), ("gone", removed), ("changed", changed)):
        if urls:
            more = f" and {len(urls) - 3} more" if len(urls) > 3 else ""
            found.append(f"{len(urls)} input file(s) {what} ({', '.join(urls[:3])}{more})")
    if len(stored.shards) != len(new.shards):
        found.append(f"--shards was {len(stored.shards)}, now {len(new.shards)}")
    if stored.output_format != new.output_format:
        found.append(f"the output format was {stored.output_format}, now {new.output_format}")
    return found
