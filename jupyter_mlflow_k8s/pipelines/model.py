"""The shapes of a pipeline: steps of parameterized notebooks, and what a run of them produced.

Pure data (no I/O). ``spec.py`` builds these from ``pipeline.yaml`` or the Python API and validates
them; ``engine.py`` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models import Resources


@dataclass(frozen=True)
class Step:
    """One notebook of a pipeline.

    ``parameters`` hold templates as written (``"{{ parameters.lr }}"``,
    ``"{{ steps.prepare.outputs.features_uri }}"``); the engine resolves them when the step runs.
    ``notebook`` is absolute (resolved against the pipeline file's folder when loaded).
    """

    name: str
    notebook: Path
    needs: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    backend: str = "local"
    image: str | None = None
    retries: int = 0
    cache: bool = True
    timeout: float | None = None


@dataclass(frozen=True)
class Pipeline:
    """A named DAG of steps, with pipeline parameters (their defaults, after ``-p`` overrides)."""

    name: str
    steps: dict[str, Step]
    parameters: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the pipeline.yaml it came from, if any
    max_parallel: int = 4


@dataclass
class StepResult:
    """How one step of one run went."""

    name: str
    state: str = "pending"  # pending | running | succeeded | failed | skipped (upstream failed) | cached
    parameters: dict[str, Any] = field(default_factory=dict)  # resolved
    outputs: dict[str, Any] = field(default_factory=dict)
    cache_key: str = ""
    reason: str = ""  # why it ran / was skipped (--explain), or how it failed
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    executed_notebook: str = ""  # where the executed notebook is kept
    run_id: str = ""  # the step's MLflow child run
    job_id: str = ""  # the %jobs record of the step


@dataclass
class PipelineRun:
    """One run of a pipeline: its id, state per step, the parent MLflow run."""

    run_id: str
    pipeline: str
    parameters: dict[str, Any]
    steps: dict[str, StepResult]
    state: str = "running"  # running | succeeded | failed
    created: float = 0.0
    finished: float | None = None
    mlflow_run_id: str = ""
    source: str = ""
