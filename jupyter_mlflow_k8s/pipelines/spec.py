"""Pipelines as written: ``pipeline.yaml`` or the Python API, checked before anything runs.

A pipeline file::

    name: churn
    parameters:              # defaults; `-p lr=0.1` overrides them
      data_uri: s3://data/churn.csv
      lr: 0.01
    max_parallel: 4          # optional
    steps:
      prepare:
        notebook: prepare.ipynb          # relative to this file's folder
        parameters:
          data_uri: "{{ parameters.data_uri }}"
      train:
        notebook: train.ipynb
        needs: [prepare]
        parameters:                      # templates are resolved when the step runs
          features_uri: "{{ steps.prepare.outputs.features_uri }}"
          lr: "{{ parameters.lr }}"
        resources: {cpu: 2, memory: 8Gi, gpus: 1}
        backend: kubernetes
        image: ghcr.io/acme/train:1
        retries: 1
        cache: true
        timeout: 2h

The same pipeline in code goes through the same path (:func:`pipeline_from_dict`)::

    p = pipeline("churn", parameters={"data_uri": "s3://data/churn.csv", "lr": 0.01})
    p.step("prepare", "prepare.ipynb", parameters={"data_uri": "{{ parameters.data_uri }}"})
    p.step("train", "train.ipynb", needs=["prepare"], resources={"gpus": 1})
    built = p.build()

A template that is a whole string (``"{{ parameters.lr }}"``) becomes the value itself, of any
type; one inside a longer string (``"s3://b/{{ parameters.run }}/x"``) is replaced by ``str(value)``.
:func:`validate` reads the notebooks without running them (their code cells' syntax trees) to
check parameter names against the cell tagged ``parameters`` (papermill's convention) and output
references against the ``output("NAME", ...)`` calls; it lists every problem at once.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import keyword
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..exceptions import JMKUsageError
from ..manifests import check_cron
from ..models import Resources, parse_cpu, parse_gpus, parse_memory, parse_retries
from .model import Pipeline, Step

TOP_LEVEL_KEYS = ("name", "parameters", "steps", "max_parallel")
STEP_KEYS = ("notebook", "needs", "parameters", "resources", "backend", "image", "retries", "cache", "timeout")
RESOURCE_KEYS = ("cpu", "memory", "gpus")
STEP_NAME_MAX = 40
PARAMETERS_TAG = "parameters"

_STEP_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TEMPLATE_RE = re.compile(r"\{\{\s*(?P<ref>[^{}]*?)\s*\}\}")
_PARAMETER_REF_RE = re.compile(r"^parameters\.(?P<name>[^.\s]+)$")
_OUTPUT_REF_RE = re.compile(r"^steps\.(?P<step>[^.\s]+)\.outputs\.(?P<name>[^.\s]+)$")
_DURATION_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>s|m|h|d)?$")
_DURATION_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_OUTPUT_MODULES = ("jupyter_mlflow_k8s", "jmk", "jupyter_mlflow_k8s.pipelines.outputs")


class InvalidPipeline(JMKUsageError):
    """A pipeline that cannot run as written; ``problems`` lists every reason, one per line."""

    def __init__(self, subject: str, problems: list[str]) -> None:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{subject} is invalid ({count}):\n" + "\n".join(f"  - {problem}" for problem in problems))
        self.problems = problems


# -- loading ---------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """``yaml.SafeLoader`` that keeps dates as strings and refuses a key given twice in one mapping."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """Refuse duplicate keys (PyYAML would silently keep the last one, e.g. a step defined twice)."""
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found the key {key_node.value!r} twice: each key (and each step name) must be unique",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


# A date such as 2024-01-31 stays the string the user wrote (parameters end up in JSON and MLflow).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_value(text: str) -> Any:
    """A ``-p name=value`` value as YAML reads a scalar: ``0.1`` a float, ``true`` a bool, ``3`` an int.

    ``[1, 2]`` and ``{a: 1}`` give a list and a dict; anything else that is not a YAML scalar (or
    not YAML) stays the string as typed, and so does an empty value.
    """
    if not text.strip():
        return text
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError:
        return text
    if isinstance(value, (list, dict)) and not text.lstrip().startswith(("[", "{")):
        return text
    return value


def load_pipeline(
    path: str | Path, overrides: Mapping[str, Any] | None = None, *, check: bool = True
) -> Pipeline:
    """Read ``pipeline.yaml``; notebook paths are resolved against the file's folder.

    Args:
        path: The pipeline file.
        overrides: Pipeline parameter values from ``-p name=value``: strings are read as YAML scalars
            (:func:`parse_value`); a name the pipeline does not declare is a problem.
        check: Also :func:`validate` the result (notebooks, templates, the graph), listing every
            problem together with those of the file itself.

    Raises:
        JMKUsageError: The file is missing or not YAML; :class:`InvalidPipeline` listing every problem.
    """
    source = Path(path).expanduser().absolute()
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JMKUsageError(f"No pipeline file {str(path)!r}. Give the path of a pipeline.yaml.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JMKUsageError(f"Cannot read the pipeline file {str(path)!r}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        hint = ""
        if "{{" in text and "unhashable" in str(exc):
            hint = (
                "\nA template must be quoted, or YAML reads its braces as a mapping: "
                'write lr: "{{ parameters.lr }}", not lr: {{ parameters.lr }}.'
            )
        raise JMKUsageError(f"{path} is not valid YAML: {exc}{hint}") from None
    if data is None:
        data = {}
    return pipeline_from_dict(data, source.parent, source=source, overrides=overrides, check=check)


def pipeline_from_dict(
    data: Mapping[str, Any],
    base_dir: Path,
    source: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    check: bool = True,
) -> Pipeline:
    """Build a :class:`Pipeline` from the data of a pipeline file (or of the Python API).

    Args:
        data: ``name``, ``parameters``, ``steps`` and optionally ``max_parallel``, as in ``pipeline.yaml``.
        base_dir: The folder relative notebook paths start from.
        source: The file the data came from, if any (kept on the pipeline, named in messages).
        overrides: Pipeline parameter values; strings are read by :func:`parse_value`.
        check: Also :func:`validate` the result, listing its problems with those of ``data``.

    Raises:
        InvalidPipeline: Every problem found: unknown keys (with a did-you-mean), wrong types, bad
            resources, an override of an undeclared parameter, and with ``check`` all of :func:`validate`'s.
    """
    subject = f"The pipeline file {source}" if source else "The pipeline"
    if not isinstance(data, Mapping):
        raise InvalidPipeline(subject, [f"expected a mapping with name, parameters and steps, found {_kind(data)}"])
    problems = _unknown_keys(data, TOP_LEVEL_KEYS, "")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        what = "required" if name is None else "must be a non-empty string"
        problems.append(f"name: {what}: name the pipeline, e.g. name: churn")
        name = "" if name is None else str(name)
    elif source is None:
        subject = f"The pipeline {name!r}"
    else:
        subject = f"The pipeline {name!r} ({source})"
    parameters = _parameter_defaults(data.get("parameters"), problems)
    _apply_overrides(parameters, overrides or {}, problems)
    max_parallel = data.get("max_parallel", Pipeline.__dataclass_fields__["max_parallel"].default)
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
        problems.append(f"max_parallel: {max_parallel!r} is not a whole number >= 1: write e.g. max_parallel: 4")
        max_parallel = 1
    steps: dict[str, Step] = {}
    unchecked: set[str] = set()  # steps whose notebook entry itself is wrong: no notebook checks
    steps_data = data.get("steps")
    if steps_data is None:
        problems.append("steps: required: give at least one step, e.g. steps: {prepare: {notebook: prepare.ipynb}}")
    elif not isinstance(steps_data, Mapping):
        problems.append(f"steps: expected a mapping of step name to step, found {_kind(steps_data)}")
    else:
        for step_name, step_data in steps_data.items():
            step = _step_from_dict(str(step_name), step_data, base_dir, problems, unchecked)
            steps[step.name] = step
    built = Pipeline(name=name, steps=steps, parameters=parameters, source=source, max_parallel=max_parallel)
    if check:
        problems += _problems(built, cron=None, unchecked=unchecked, skip_structure=steps_data is None)
    if problems:
        raise InvalidPipeline(subject, problems)
    return built


def _parameter_defaults(raw: object, problems: list[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"parameters: expected a mapping of name to default value, found {_kind(raw)}")
        return {}
    return {str(key): value for key, value in raw.items()}


def _apply_overrides(parameters: dict[str, Any], overrides: Mapping[str, Any], problems: list[str]) -> None:
    for key, value in overrides.items():
        if key not in parameters:
            declared = ", ".join(parameters) or "none"
            problems.append(
                f"-p {key}: the pipeline declares no parameter {key!r}{_did_you_mean(key, parameters)}. "
                f"Declared: {declared}. Add it under parameters: in the pipeline, or fix the name."
            )
            continue
        parameters[key] = parse_value(value) if isinstance(value, str) else value


def _step_from_dict(name: str, raw: object, base_dir: Path, problems: list[str], unchecked: set[str]) -> Step:
    where = f"steps.{name}"
    if isinstance(raw, str):  # `prepare: prepare.ipynb`, a common slip
        problems.append(f"{where}: expected a mapping, found a string: write {name}: {{notebook: {raw}}}")
        raw = {"notebook": raw}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping with at least notebook: NAME.ipynb, found {_kind(raw)}")
        raw = {}
    problems += _unknown_keys(raw, STEP_KEYS, where)
    notebook_raw = raw.get("notebook")
    if isinstance(notebook_raw, (str, os.PathLike)) and str(notebook_raw).strip():
        notebook = Path(os.path.normpath(base_dir.absolute() / Path(notebook_raw).expanduser()))
    else:
        problem = "required" if notebook_raw is None else f"expected a path, found {_kind(notebook_raw)}"
        problems.append(f"{where}.notebook: {problem}: give the step's notebook, e.g. notebook: {name}.ipynb")
        notebook = base_dir.absolute()
        unchecked.add(name)
    values: dict[str, Any] = {
        "needs": _needs(raw.get("needs"), where, problems),
        "parameters": _step_parameters(raw.get("parameters"), where, problems),
        "resources": _resources(raw.get("resources"), where, problems),
    }
    backend = raw.get("backend")
    if backend is not None:
        if isinstance(backend, str) and backend.strip():
            values["backend"] = backend.strip()
        else:
            problems.append(f"{where}.backend: expected a backend name such as local or kubernetes, found {backend!r}")
    image = raw.get("image")
    if image is not None:
        if isinstance(image, str) and image.strip():
            values["image"] = image.strip()
        else:
            problems.append(f"{where}.image: expected a container image such as ghcr.io/acme/train:1, found {image!r}")
    retries = raw.get("retries")
    if retries is not None:
        try:
            if isinstance(retries, bool) or not isinstance(retries, int):
                raise JMKUsageError("")
            values["retries"] = parse_retries(retries)
        except JMKUsageError:
            problems.append(f"{where}.retries: {retries!r} is not a whole number >= 0: write e.g. retries: 2")
    cache = raw.get("cache")
    if cache is not None:
        if isinstance(cache, bool):
            values["cache"] = cache
        else:
            problems.append(f"{where}.cache: {cache!r} is not true or false: write cache: false to always run the step")
    timeout = raw.get("timeout")
    if timeout is not None:
        seconds = _duration(timeout)
        if seconds is None:
            problems.append(f"{where}.timeout: {timeout!r} is not a duration: use seconds (900) or 15m, 2h, 1d")
        else:
            values["timeout"] = seconds
    return Step(name=name, notebook=notebook, **values)


def _needs(raw: object, where: str, problems: list[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, Sequence) or not all(isinstance(item, str) for item in raw):
        problems.append(f"{where}.needs: expected a list of step names, e.g. needs: [prepare], found {raw!r}")
        return ()
    return tuple(dict.fromkeys(raw))


def _step_parameters(raw: object, where: str, problems: list[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}.parameters: expected a mapping of parameter name to value, found {_kind(raw)}")
        return {}
    return {str(key): value for key, value in raw.items()}


def _resources(raw: object, where: str, problems: list[str]) -> Resources:
    if raw is None:
        return Resources()
    if isinstance(raw, Resources):
        raw = {"cpu": raw.cpu, "memory": raw.memory, "gpus": raw.gpus}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}.resources: expected a mapping such as {{cpu: 2, memory: 8Gi, gpus: 1}}, "
                        f"found {_kind(raw)}")
        return Resources()
    problems += _unknown_keys(raw, RESOURCE_KEYS, f"{where}.resources")
    values: dict[str, Any] = {}
    for key in RESOURCE_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        if key == "gpus" and (isinstance(value, bool) or not isinstance(value, (int, str))):
            value = repr(value)  # parse_gpus refuses it with its message
        elif key != "gpus" and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
            value = repr(value)
        problem = _resource_problem(key, value, where)
        if problem:
            problems.append(problem)
        else:
            values[key] = parse_gpus(value) if key == "gpus" else str(value)
    return Resources(**values)


def _resource_problem(key: str, value: Any, where: str) -> str:
    """The parse_* message for a bad quantity, reworded from its ``--flag`` to the YAML key; or ``""``."""
    parse = {"cpu": parse_cpu, "memory": parse_memory, "gpus": parse_gpus}[key]
    try:
        parse(value if key == "gpus" else str(value))
    except JMKUsageError as exc:
        message = str(exc).replace(f"--{key} ", f"{where}.resources.{key} ", 1).replace(f"--{key} ", f"{key}: ")
        return message.rstrip(".")
    return ""


def _duration(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip())
        if match and float(match["num"]) > 0:
            return float(match["num"]) * _DURATION_UNITS[match["unit"]]
    return None


# -- the Python API --------------------------------------------------------------------------


class PipelineBuilder:
    """A pipeline written in code; :meth:`build` reads it as if it were ``pipeline.yaml``."""

    def __init__(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        max_parallel: int | None = None,
        base_dir: str | Path | None = None,
    ) -> None:
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self._data: dict[str, Any] = {"name": name, "parameters": dict(parameters or {}), "steps": {}}
        if max_parallel is not None:
            self._data["max_parallel"] = max_parallel

    def step(
        self,
        name: str,
        notebook: str | Path,
        *,
        needs: Sequence[str] | str = (),
        parameters: Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | Resources | None = None,
        backend: str | None = None,
        image: str | None = None,
        retries: int | None = None,
        cache: bool | None = None,
        timeout: float | str | None = None,
    ) -> PipelineBuilder:
        """Add a step, as a ``steps:`` entry of the file would (notebook relative to ``base_dir``)."""
        if name in self._data["steps"]:
            raise JMKUsageError(f"The pipeline already has a step {name!r}: give each step its own name.")
        entry: dict[str, Any] = {"notebook": str(notebook)}
        optional = {
            "needs": [needs] if isinstance(needs, str) else list(needs),
            "parameters": dict(parameters) if parameters else None,
            "resources": resources,
            "backend": backend,
            "image": image,
            "retries": retries,
            "cache": cache,
            "timeout": timeout,
        }
        entry.update({key: value for key, value in optional.items() if value is not None and value != []})
        if isinstance(entry.get("resources"), Resources):
            res = entry["resources"]
            entry["resources"] = {k: v for k, v in (("cpu", res.cpu), ("memory", res.memory), ("gpus", res.gpus)) if v}
        self._data["steps"][name] = entry
        return self

    def to_dict(self) -> dict[str, Any]:
        """The pipeline as the data of a ``pipeline.yaml`` (``yaml.safe_dump`` writes the file)."""
        return copy.deepcopy(self._data)

    def build(self, overrides: Mapping[str, Any] | None = None, *, check: bool = True) -> Pipeline:
        """The :class:`Pipeline`, validated as :func:`load_pipeline` validates a file."""
        return pipeline_from_dict(self.to_dict(), self.base_dir, overrides=overrides, check=check)


def pipeline(
    name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    max_parallel: int | None = None,
    base_dir: str | Path | None = None,
) -> PipelineBuilder:
    """Start a pipeline in code; relative notebook paths start from ``base_dir`` (default: the current folder)."""
    return PipelineBuilder(name, parameters, max_parallel=max_parallel, base_dir=base_dir)


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


def _cycles(pipeline: Pipeline) -> list[list[str]]:
    """Each cycle in ``needs`` once, in running order (a step before the one that needs it), from its first step."""
    order = {name: index for index, name in enumerate(pipeline.steps)}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for need in pipeline.steps[name].needs:
            if need not in pipeline.steps:
                continue
            if state.get(need) == 1:
                found = path[path.index(need) :][::-1]  # need ... name reversed: dependencies first
                if frozenset(found) not in seen:
                    seen.add(frozenset(found))
                    start = min(range(len(found)), key=lambda i: order[found[i]])
                    cycles.append(found[start:] + found[:start])
            elif need not in state:
                visit(need)
        path.pop()
        state[name] = 2

    for name in pipeline.steps:
        if name not in state:
            visit(name)
    return cycles


def _cycle_problem(cycle: list[str]) -> str:
    arrows = " -> ".join([*cycle, cycle[0]])
    return (
        f"the steps form a cycle: {arrows} (each step needs the one before it), so none of them can start. "
        "Remove one of these needs."
    )


# -- the graph -------------------------------------------------------------------------------


def topological_order(pipeline: Pipeline) -> list[str]:
    """The steps in an order that runs each after its needs; among ready steps, the file's order.

    Raises:
        JMKUsageError: A step needs an unknown step, or the needs form a cycle (named).
    """
    for key, step in pipeline.steps.items():
        for need in step.needs:
            if need not in pipeline.steps:
                hint = _did_you_mean(need, pipeline.steps)
                raise JMKUsageError(f"Step {key!r} needs {need!r}, which is not a step{hint}.")
    done: dict[str, None] = {}
    remaining = list(pipeline.steps)
    while remaining:
        ready = next((name for name in remaining if all(n in done for n in pipeline.steps[name].needs)), None)
        if ready is None:
            cycle = _cycles(pipeline)[0]
            raise JMKUsageError(f"Pipeline {pipeline.name!r}: {_cycle_problem(cycle)}")
        done[ready] = None
        remaining.remove(ready)
    return list(done)


def upstream(pipeline: Pipeline, step: str) -> set[str]:
    """Every step ``step`` depends on, directly or through others (its transitive ``needs``)."""
    if step not in pipeline.steps:
        raise JMKUsageError(f"No step {step!r} in pipeline {pipeline.name!r}{_did_you_mean(step, pipeline.steps)}.")
    found: set[str] = set()
    todo = list(pipeline.steps[step].needs)
    while todo:
        name = todo.pop()
        if name in found or name not in pipeline.steps:
            continue
        found.add(name)
        todo.extend(pipeline.steps[name].needs)
    return found


# -- templates -------------------------------------------------------------------------------


def resolve_parameters(
    step: Step, pipeline_parameters: Mapping[str, Any], upstream_outputs: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The step's parameters with every template replaced, ready for papermill.

    A string that is exactly one template (``"{{ parameters.lr }}"``) becomes the value itself, of
    any type; templates inside a longer string are replaced by ``str(value)``. Lists and dicts are
    resolved item by item.

    Args:
        step: The step.
        pipeline_parameters: The run's pipeline parameters (defaults after overrides).
        upstream_outputs: Outputs of the steps already run, by step name.

    Raises:
        JMKUsageError: A reference to an unknown parameter, step or output.
    """

    def lookup(ref: str) -> Any:
        parameter = _PARAMETER_REF_RE.match(ref)
        if parameter:
            if parameter["name"] not in pipeline_parameters:
                declared = ", ".join(pipeline_parameters) or "none"
                raise JMKUsageError(
                    f"Step {step.name!r}: {{{{ {ref} }}}} refers to an undeclared pipeline parameter. "
                    f"Declared: {declared}."
                )
            return pipeline_parameters[parameter["name"]]
        produced = _OUTPUT_REF_RE.match(ref)
        if produced:
            source, name = produced["step"], produced["name"]
            if source not in upstream_outputs:
                raise JMKUsageError(
                    f"Step {step.name!r}: {{{{ {ref} }}}}: no outputs of step {source!r} are available; "
                    f"add {source} to the needs of {step.name}."
                )
            if name not in upstream_outputs[source]:
                published = ", ".join(upstream_outputs[source]) or "nothing"
                raise JMKUsageError(
                    f"Step {step.name!r}: {{{{ {ref} }}}}: step {source!r} did not publish {name!r} "
                    f"(it published: {published}). Call output({name!r}, value) in its notebook."
                )
            return upstream_outputs[source][name]
        raise JMKUsageError(
            f"Step {step.name!r}: {{{{ {ref} }}}} is not a template this package knows: write "
            "{{ parameters.NAME }} or {{ steps.STEP.outputs.NAME }}."
        )

    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            whole = _TEMPLATE_RE.fullmatch(value)
            if whole:
                return lookup(whole["ref"])
            return _TEMPLATE_RE.sub(lambda match: str(lookup(match["ref"])), value)
        if isinstance(value, Mapping):
            return {key: resolve(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [resolve(item) for item in value]
        return value

    return {name: resolve(value) for name, value in step.parameters.items()}


# -- reading notebooks -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Analysis:
    """What a notebook's code says without running it."""

    parameters: tuple[tuple[str, Any], ...] | None  # None: no cell tagged "parameters"
    parameters_error: str  # the parameters cell is not Python
    outputs: frozenset[str] | None  # None: unknowable (a non-literal output name, a cell that is not Python)


def notebook_parameters(path: Path) -> dict[str, Any] | None:
    """The names the notebook's ``parameters`` cell assigns, with their literal defaults (else None).

    Returns:
        ``None`` when no cell is tagged ``parameters``.

    Raises:
        JMKUsageError: The file is missing or not a notebook, or its parameters cell is not Python.
    """
    analysis = _analyze(Path(path))
    if analysis.parameters is None:
        return None
    if analysis.parameters_error:
        raise JMKUsageError(analysis.parameters_error)
    return copy.deepcopy(dict(analysis.parameters))


def notebook_outputs(path: Path) -> set[str] | None:
    """The output names the notebook publishes (``output("NAME", ...)`` calls with a literal name).

    Returns:
        ``None`` when that cannot be known: an output name that is not a literal, or a cell that is not Python.

    Raises:
        JMKUsageError: The file is missing or not a notebook.
    """
    outputs = _analyze(Path(path)).outputs
    return None if outputs is None else set(outputs)


def _analyze(path: Path) -> _Analysis:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise JMKUsageError(
            f"the notebook {path} does not exist: notebook paths are relative to the pipeline file's folder"
        ) from None
    except OSError as exc:
        raise JMKUsageError(f"cannot read the notebook {path}: {exc}") from None
    return _analyze_file(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _analyze_file(path: str, mtime_ns: int, size: int) -> _Analysis:
    """The analysis of one version of a notebook (the key changes when the file does)."""
    cells = _read_notebook(Path(path))
    parameters: tuple[tuple[str, Any], ...] | None = None
    parameters_error = ""
    for cell in cells:
        if PARAMETERS_TAG in (cell.get("metadata", {}).get("tags") or []):
            parameters = ()
            if cell.get("cell_type") == "code":
                try:
                    parameters = tuple(_assignments(_parse(_source(cell))))
                except SyntaxError as exc:
                    reason = f"line {exc.lineno}: {exc.msg}"
                    parameters_error = f"the parameters cell of {path} is not valid Python ({reason}): fix that cell"
            break
    return _Analysis(parameters, parameters_error, _published(cells))


def _read_notebook(path: Path) -> list[Mapping[str, Any]]:
    import nbformat

    fix = "open it in Jupyter and save it as a notebook (.ipynb)"
    try:
        # Not nbformat.validate: papermill runs notebooks that break the schema in small ways (metadata), so
        # only what papermill itself cannot read counts: not JSON, not convertible, cells without type or source.
        notebook = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    except (OSError, UnicodeDecodeError) as exc:
        raise JMKUsageError(f"cannot read the notebook {path}: {exc}") from None
    except Exception as exc:  # NotJSONError, jsonschema's ValidationError from a conversion, ...
        reason = str(getattr(exc, "message", None) or exc).strip().splitlines()[0][:200]
        raise JMKUsageError(f"{path} is not a valid notebook ({reason}): {fix}") from None
    cells = notebook.get("cells") if isinstance(notebook, Mapping) else None
    if not isinstance(cells, list):
        raise JMKUsageError(f"{path} is not a valid notebook (its cells are not a list): {fix}")
    for index, cell in enumerate(cells):
        if not isinstance(cell, Mapping) or not isinstance(cell.get("cell_type"), str):
            raise JMKUsageError(f"{path} is not a valid notebook (cell {index + 1} has no cell_type): {fix}")
        if not isinstance(cell.get("source"), (str, list)) or not isinstance(cell.get("metadata", {}), Mapping):
            raise JMKUsageError(f"{path} is not a valid notebook (cell {index + 1} has no source): {fix}")
    return cells


def _source(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _parse(source: str) -> ast.Module:
    """The syntax tree of a code cell, with IPython's magics and shell escapes turned into calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        python = TransformerManager().transform_cell(source)  # type: ignore[no-untyped-call]
    except Exception:  # a transformer choking on odd input: parse the cell as written
        python = source
    return ast.parse(python)


def _assignments(tree: ast.Module) -> Iterator[tuple[str, Any]]:
    """``(name, literal default or None)`` for each top-level (annotated) assignment."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield from _targets(target, node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield node.target.id, _literal(node.value)


def _targets(target: ast.expr, value: ast.expr | None) -> Iterator[tuple[str, Any]]:
    if isinstance(target, ast.Name):
        yield target.id, _literal(value)
    elif isinstance(target, (ast.Tuple, ast.List)):
        values: list[ast.expr | None] = [None] * len(target.elts)
        if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
            values = list(value.elts)
        for element, element_value in zip(target.elts, values, strict=True):
            yield from _targets(element, element_value)


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _published(cells: list[Mapping[str, Any]]) -> frozenset[str] | None:
    """The literal names of every ``output(...)`` call in the code cells; None when not knowable."""
    trees: list[ast.Module] = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = _source(cell)
        try:
            trees.append(_parse(source))
        except SyntaxError:
            return None
        if source.lstrip().startswith("%%"):  # a cell magic (%%train): its body may call output() too
            try:
                trees.append(_parse(source.lstrip().partition("\n")[2]))
            except SyntaxError:
                pass
    functions = {"output"}
    modules = set(_OUTPUT_MODULES)
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("jupyter_mlflow_k8s", _OUTPUT_MODULES[2]):
                functions.update(alias.asname or alias.name for alias in node.names if alias.name == "output")
            elif isinstance(node, ast.Import):
                modules.update(alias.asname for alias in node.names if alias.asname and alias.name in _OUTPUT_MODULES)
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not _is_output_function(node.func, functions, modules):
                continue
            first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
            else:
                return None
    return frozenset(names)


def _is_output_function(func: ast.expr, functions: set[str], modules: set[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in functions
    return isinstance(func, ast.Attribute) and func.attr == "output" and _dotted(func.value) in modules


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


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


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _suggest_step_name(name: str) -> str:
    suggestion = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:STEP_NAME_MAX].strip("-")
    return suggestion or "step-1"


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
