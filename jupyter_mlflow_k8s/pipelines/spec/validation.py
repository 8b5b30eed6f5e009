"""Checking a pipeline before anything runs: every problem at once, each with its fix."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ...exceptions import JMKUsageError
from ...k8s.validation import check_cron
from ...models import parse_cpu, parse_gpus, parse_memory
from ..model import Pipeline, Step
from .base import (
    _OUTPUT_REF_RE,
    _PARAMETER_REF_RE,
    _STEP_NAME_RE,
    _TEMPLATE_RE,
    PARAMETERS_TAG,
    RESOURCE_KEYS,
    STEP_NAME_MAX,
    InvalidPipeline,
    _did_you_mean,
    _is_identifier,
    _show,
    _suggest_step_name,
)
from .graph import _cycle_problem, _cycles, upstream
from .notebooks import _Analysis, _analyze

# -- validation ------------------------------------------------------------------------------


def validate(pipeline: Pipeline, *, cron: str | None = None) -> None:
    """Check a pipeline before it runs; raise listing every problem, each with how to fix it.

    Checked: step names (they become Kubernetes Job name parts and MLflow run names), ``needs``
    (unknown steps, cycles), the notebooks (present, valid, a ``parameters`` cell when given
    parameters, every parameter assigned there), templates (declared pipeline parameters; outputs
    of upstream steps that their notebooks publish), resources, retries, timeouts, and ``cron``
    when given. Backend names are the engine's to check.

    Raises:
        InvalidPipeline: One line per problem.
    """
    problems = pipeline_problems(pipeline, cron=cron)
    if problems:
        subject = f"The pipeline {pipeline.name!r}" + (f" ({pipeline.source})" if pipeline.source else "")
        raise InvalidPipeline(subject, problems)


def pipeline_problems(pipeline: Pipeline, *, cron: str | None = None) -> list[str]:
    """What :func:`validate` would list; empty when the pipeline can run."""
    return _problems(pipeline, cron=cron, unchecked=set(), skip_structure=False)


def _problems(pipeline: Pipeline, *, cron: str | None, unchecked: set[str], skip_structure: bool) -> list[str]:
    problems: list[str] = []
    if not pipeline.name.strip():
        problems.append("name: must be a non-empty string: name the pipeline, e.g. name: churn")
    for key in pipeline.parameters:
        if not _is_identifier(key):
            problems.append(
                f"parameters.{key}: {key!r} is not a Python identifier: name pipeline parameters like "
                "learning_rate, so that templates ({{ parameters.learning_rate }}) and -p can refer to them"
            )
    if not pipeline.steps and not skip_structure:
        problems.append("steps: the pipeline has no steps: add at least one, e.g. steps: {prepare: {notebook: "
                        "prepare.ipynb}}")
    notebooks: dict[str, _Analysis | None] = {}
    for key, step in pipeline.steps.items():
        problems += _step_problems(key, step, pipeline)
        notebooks[key] = None
        if key in unchecked:
            continue
        shown = _show(step.notebook, pipeline)
        if not step.notebook.exists():
            base = f"the pipeline file's folder, {pipeline.source.parent}" if pipeline.source else "the base folder"
            problems.append(
                f"steps.{key}.notebook: {shown} does not exist (looked for {step.notebook}): give a notebook path "
                f"relative to {base}"
            )
            continue
        try:
            analysis = notebooks[key] = _analyze(step.notebook)
        except JMKUsageError as exc:
            problems.append(f"steps.{key}.notebook: {exc}")
            continue
        problems += _notebook_parameter_problems(key, step, shown, analysis)
    for key, step in pipeline.steps.items():
        problems += _template_problems(key, step, pipeline, notebooks)
    problems += [f"steps.{cycle[0]}.needs: {_cycle_problem(cycle)}" for cycle in _cycles(pipeline)]
    if cron is not None:
        problems += check_cron(cron, "schedule")
    return problems


def _step_problems(key: str, step: Step, pipeline: Pipeline) -> list[str]:
    where = f"steps.{key}"
    problems: list[str] = []
    if step.name != key:
        problems.append(f"{where}: the step is named {step.name!r}: a step's name must be its key in steps")
    if len(key) > STEP_NAME_MAX or not _STEP_NAME_RE.match(key):
        problems.append(
            f"{where}: the step name {key!r} must be lowercase letters, digits and '-', start and end with a letter "
            f"or digit, and be at most {STEP_NAME_MAX} characters (a DNS-1123 label), because it becomes part of "
            f"Kubernetes Job names and MLflow run names: try {_suggest_step_name(key)!r}"
        )
    for need in step.needs:
        if need not in pipeline.steps:
            problems.append(
                f"{where}.needs: {need!r} is not a step of this pipeline{_did_you_mean(need, pipeline.steps)}. "
                f"Steps: {', '.join(pipeline.steps)}."
            )
    for name in step.parameters:
        if not _is_identifier(name):
            problems.append(
                f"{where}.parameters.{name}: {name!r} is not a Python identifier: papermill assigns each parameter "
                "as a variable in the notebook's parameters cell; use a name such as learning_rate"
            )
    for res_key in RESOURCE_KEYS:
        value = getattr(step.resources, res_key)
        problem = _resource_problem(res_key, value, where) if value is not None else ""
        if problem:
            problems.append(problem)
    if isinstance(step.retries, bool) or not isinstance(step.retries, int) or step.retries < 0:
        problems.append(f"{where}.retries: {step.retries!r} is not a whole number >= 0: write e.g. retries: 2")
    if step.timeout is not None and (isinstance(step.timeout, bool) or not step.timeout > 0):
        problems.append(f"{where}.timeout: {step.timeout!r} is not a positive number of seconds")
    return problems


def _notebook_parameter_problems(key: str, step: Step, shown: str, analysis: _Analysis) -> list[str]:
    where = f"steps.{key}.parameters"
    if not step.parameters:
        return []
    if analysis.parameters is None:
        return [
            f"{where}: the step passes parameters ({', '.join(step.parameters)}) but {shown} has no cell tagged "
            f"'{PARAMETERS_TAG}': in Jupyter, put the defaults in one cell (e.g. lr = 0.01) and give that cell the "
            f"tag '{PARAMETERS_TAG}' (property inspector, or View > Cell Toolbar > Tags) so papermill can set them"
        ]
    if analysis.parameters_error:
        return [f"{where}: {analysis.parameters_error}"]
    assigned = dict(analysis.parameters)
    problems = []
    for name in step.parameters:
        if name not in assigned:
            problems.append(
                f"{where}.{name}: the parameters cell of {shown} does not assign {name!r}"
                f"{_did_you_mean(name, assigned)}. It assigns: {', '.join(assigned) or 'nothing'}. "
                f"Add a default ({name} = ...) to that cell, or fix the name."
            )
    return problems


def _template_problems(
    key: str, step: Step, pipeline: Pipeline, notebooks: Mapping[str, _Analysis | None]
) -> list[str]:
    problems = []
    before: set[str] | None = None
    for param, ref in _references(step.parameters):
        where = f"steps.{key}.parameters.{param}"
        template = "{{ " + ref + " }}"
        parameter = _PARAMETER_REF_RE.match(ref)
        produced = _OUTPUT_REF_RE.match(ref)
        if parameter:
            name = parameter["name"]
            if name not in pipeline.parameters:
                problems.append(
                    f"{where}: {template} refers to the pipeline parameter {name!r}, which is not declared"
                    f"{_did_you_mean(name, pipeline.parameters)}. Declared: {', '.join(pipeline.parameters) or 'none'}."
                    " Declare it under parameters: (with a default), or fix the name."
                )
        elif produced:
            source, name = produced["step"], produced["name"]
            if before is None:
                before = upstream(pipeline, key)
            if source not in pipeline.steps:
                problems.append(
                    f"{where}: {template} refers to the step {source!r}, which does not exist"
                    f"{_did_you_mean(source, pipeline.steps)}. Steps: {', '.join(pipeline.steps)}."
                )
            elif source == key:
                problems.append(f"{where}: {template}: a step cannot read its own outputs; move the computation "
                                "into an earlier step and add that step to needs")
            elif source not in before:
                problems.append(
                    f"{where}: {template} reads an output of {source!r}, which {key!r} does not depend on: "
                    f"add {source} to the needs of {key} (needs: [{', '.join((*step.needs, source))}])"
                )
            else:
                analysis = notebooks.get(source)
                outputs = analysis.outputs if analysis is not None else None
                if outputs is not None and name not in outputs:
                    shown = _show(pipeline.steps[source].notebook, pipeline)
                    published = ", ".join(sorted(outputs)) or "nothing"
                    problems.append(
                        f"{where}: {template}: the notebook of {source!r} ({shown}) never publishes {name!r}"
                        f"{_did_you_mean(name, outputs)}. It publishes: {published}. Call output({name!r}, value) in "
                        "it, or fix the name."
                    )
        else:
            problems.append(
                f"{where}: {template} is not a template this package knows: write {{{{ parameters.NAME }}}} or "
                "{{ steps.STEP.outputs.NAME }}"
            )
    return problems


def _references(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Each template reference in a step's parameters, with the parameter (path) it sits in."""
    if isinstance(value, str):
        for match in _TEMPLATE_RE.finditer(value):
            yield where, match["ref"]
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _references(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _references(item, f"{where}[{index}]")


def _resource_problem(key: str, value: Any, where: str) -> str:
    """The parse_* message for a bad quantity, reworded from its ``--flag`` to the YAML key; or ``""``."""
    parse = {"cpu": parse_cpu, "memory": parse_memory, "gpus": parse_gpus}[key]
    try:
        parse(value if key == "gpus" else str(value))
    except JMKUsageError as exc:
        message = str(exc).replace(f"--{key} ", f"{where}.resources.{key} ", 1).replace(f"--{key} ", f"{key}: ")
        return message.rstrip(".")
    return ""
