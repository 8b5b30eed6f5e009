"""What the parts of a pipeline's spec share: the keys, reference patterns, :class:`InvalidPipeline`, helpers."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...exceptions import JMKUsageError
from ...util.names import dns_slug, is_identifier
from ..model import Pipeline

TOP_LEVEL_KEYS = ("name", "parameters", "steps", "max_parallel")
STEP_KEYS = ("notebook", "needs", "parameters", "resources", "backend", "image", "retries", "cache", "timeout",
             "batch_predict")
RESOURCE_KEYS = ("cpu", "memory", "gpus")
STEP_NAME_MAX = 40
PARAMETERS_TAG = "parameters"

_STEP_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TEMPLATE_RE = re.compile(r"\{\{\s*(?P<ref>[^{}]*?)\s*\}\}")
_PARAMETER_REF_RE = re.compile(r"^parameters\.(?P<name>[^.\s]+)$")
_OUTPUT_REF_RE = re.compile(r"^steps\.(?P<step>[^.\s]+)\.outputs\.(?P<name>[^.\s]+)$")
_OUTPUT_MODULES = ("jupyter_mlflow_k8s", "jmk", "jupyter_mlflow_k8s.pipelines.outputs")


class InvalidPipeline(JMKUsageError):
    """A pipeline that cannot run as written; ``problems`` lists every reason, one per line."""

    def __init__(self, subject: str, problems: list[str]) -> None:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{subject} is invalid ({count}):\n" + "\n".join(f"  - {problem}" for problem in problems))
        self.problems = problems


# -- small helpers ---------------------------------------------------------------------------


def _unknown_keys(data: Mapping[str, Any], known: Sequence[str], where: str) -> list[str]:
    problems = []
    for key in data:
        if key not in known:
            field = f"{where}.{key}" if where else str(key)
            problems.append(
                f"{field}: unknown key{_did_you_mean(str(key), known)}. Known keys"
                f"{' of ' + where if where else ' at the top level'}: {', '.join(known)}."
            )
    return problems


def _did_you_mean(word: str, candidates: Mapping[str, Any] | Sequence[str] | frozenset[str]) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_is_identifier = is_identifier


def _suggest_step_name(name: str) -> str:
    return dns_slug(name, STEP_NAME_MAX) or "step-1"


def _show(path: Path, pipeline: Pipeline) -> str:
    """A notebook path as the user wrote it: relative to the pipeline file's folder when inside it."""
    if pipeline.source is not None:
        try:
            return str(path.relative_to(pipeline.source.parent))
        except ValueError:
            pass
    return str(path)


def _kind(value: object) -> str:
    return "nothing" if value is None else f"a {type(value).__name__} ({value!r})"
