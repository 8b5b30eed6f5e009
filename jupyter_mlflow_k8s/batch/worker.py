"""One shard of a batch prediction, as a job runs it: load the model, predict each file, write, mark done.

A shard job's cell is one call, ``run_shard(OUTPUT, SHARD)``: the plan under the output prefix says
which files the shard reads and which model version it loads (through the serving code's loader, so the
predictions are online serving's). Each input file gives one output object and, if some rows were bad,
one quarantine object, each written atomically; the shard's success marker comes last. A shard whose
marker is there already does nothing, and a shard stopped half way writes the same objects again when
it runs again: rows are never written twice.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..exceptions import JMKUsageError
from ..serving import model_loading
from . import files
from .plan import PLAN_FILE, Plan, marker_name, part_name, quarantine_name
from .rows import predict_file


def load_plan(output: str, **options: Any) -> Plan:
    """The plan kept under ``output``; a clear error when there is none."""
    data = files.read_json(output, PLAN_FILE, **options)
    if data is None:
        raise JMKUsageError(
            f"No batch plan under {output} ({PLAN_FILE}): start the batch prediction with "
            "jmk batch-predict (or %batch_predict), which writes it."
        )
    return Plan.from_dict(data)


def shard_done(output: str, shard: int, plan_id: str, **options: Any) -> dict[str, Any] | None:
    """The success marker of ``shard`` of this plan, or None when the shard has not finished."""
    marker = files.read_json(output, marker_name(shard), **options)
    return marker if marker is not None and marker.get("plan_id") == plan_id else None


def run_shard(output: str, shard: int, *, indexed: bool = False) -> dict[str, Any]:
    """Predict every file of one shard and write its outputs, quarantine and marker; returns the marker.

    ``indexed``: the shard is one pod of an Indexed Job whose pods share one MLflow run, so its
    numbers go there as ``shard_N/rows`` (not ``rows``, which the pods of other shards write too).
    """
    plan = load_plan(output)
    if not 0 <= shard < len(plan.shards):
        raise JMKUsageError(f"The plan under {output} has shards 0 to {len(plan.shards) - 1}; there is no {shard}.")
    done = shard_done(output, shard, plan.plan_id)
    if done is not None:
        print(f"shard {shard}: finished already ({done['rows']} rows, {done['errors']} bad); skipped", flush=True)
        return done
    started = time.monotonic()
    loaded = model_loading.load(plan.model)
    loaded_at = time.monotonic()
    rows = errors = 0
    outputs = []
    for index, source in plan.shard_files(shard):
        frame = files.read_frame(source.url, source.format)
        result = predict_file(loaded, frame, source.url)
        name = part_name(index, plan.output_format)
        files.write_atomic(output, name, files.frame_bytes(result.good, plan.output_format))
        if len(result.bad):
            files.write_atomic(output, quarantine_name(index), files.frame_bytes(result.bad, "csv"))
        rows += len(frame)
        errors += len(result.bad)
        outputs.append(name)
        print(f"shard {shard}: {source.url}: {len(frame)} rows, {len(result.bad)} bad -> {name}", flush=True)
    finished = time.monotonic()
    seconds = finished - started
    marker = {
        "plan_id": plan.plan_id,
        "shard": shard,
        "rows": rows,
        "errors": errors,
        "outputs": outputs,
        "seconds": round(seconds, 4),
        "load_seconds": round(loaded_at - started, 4),
        "rows_per_s": round(rows / max(finished - loaded_at, 1e-9), 2),
        "model": plan.model,
        "model_version": loaded.version,
        "finished": time.time(),
    }
    files.write_json(output, marker_name(shard), marker)
    _log_to_run(marker, prefix=f"shard_{shard}/" if indexed else "")
    print(f"shard {shard}: done, {rows} rows ({errors} bad) in {seconds:.2f}s", flush=True)
    return marker


def run_indexed_shard(output: str) -> dict[str, Any]:
    """Run the shard of this pod of an Indexed batch Job: its ``JOB_COMPLETION_INDEX`` in the Job's shard list."""
    from ..backends.kubernetes.manifests import BATCH_SHARDS_ENV, shard_of_index

    index, shards = os.environ.get("JOB_COMPLETION_INDEX"), os.environ.get(BATCH_SHARDS_ENV)
    if index is None and shards:
        raise JMKUsageError(
            f"This pod was to run one of shards {shards} of the batch prediction under {output}, but it has no "
            "JOB_COMPLETION_INDEX: the cluster's API server dropped the Job's completionMode: Indexed (Kubernetes "
            "before 1.21, or its IndexedJob feature gate off). Set c.KubernetesBackend.distributed_form = 'auto' "
            "(or 'jobs') to run one Job per shard there, and run the same batch-predict command again."
        )
    try:
        shard = shard_of_index(index, shards)
    except ValueError as exc:
        raise JMKUsageError(f"{exc}; run one shard with run_shard({output!r}, SHARD) instead.") from None
    return run_shard(output, shard, indexed=True)


def _log_to_run(marker: dict[str, Any], prefix: str = "") -> None:
    """The shard's numbers on its job's run too (a job's runner gives it ``MLFLOW_RUN_ID``), named ``PREFIXrows``."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        return
    import mlflow

    mlflow.log_metrics({f"{prefix}{key}": marker[key] for key in ("rows", "errors", "rows_per_s")})
