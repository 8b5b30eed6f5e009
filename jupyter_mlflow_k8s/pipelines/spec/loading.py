"""Reading ``pipeline.yaml`` (or the Python API's dict) into a :class:`~jupyter_mlflow_k8s.pipelines.model.Pipeline`."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ...exceptions import JMKUsageError
from ...models import Resources, parse_gpus, parse_retries
from ...util.durations import duration_seconds
from ..model import Pipeline, Step
from .base import (
    RESOURCE_KEYS,
    STEP_KEYS,
    TOP_LEVEL_KEYS,
    InvalidPipeline,
    _did_you_mean,
    _kind,
    _unknown_keys,
)
from .batch_step import NOT_WITH_BATCH, batch_step
from .validation import _problems, _resource_problem

# -- loading ---------------------------------------------------------------------------------


# More values than any pipeline has: a document that expands beyond it through aliases is an alias bomb.
MAX_YAML_NODES = 100_000


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document that refers to itself through an alias, or grows past :data:`MAX_YAML_NODES` values.

    PyYAML builds ``&a [*a]`` as a list that contains itself, and nine aliases of nine aliases as
    hundreds of millions of values: either one would hang (or overflow) whatever walks the data.
    Counted on the node graph, each shared node once (iteratively: the nesting may be deep).
    """
    sizes: dict[int, int] = {}
    entered: set[int] = set()  # the nodes on the path from the root to the one being read
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            entered.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_YAML_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"its aliases (*name) expand to more than {MAX_YAML_NODES:,} values: "
                    "write the values out, or use fewer aliases of aliases", node.start_mark)
        elif key in entered:
            raise yaml.constructor.ConstructorError(
                None, None, "a value contains an alias (*name) of itself: a pipeline cannot refer to itself",
                node.start_mark)
        elif key not in sizes:
            entered.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """``yaml.SafeLoader`` keeping dates as strings; refusing a repeated key, a self-containing value, an alias bomb."""

    def construct_document(self, node: Any) -> Any:
        """Check the whole document's expansion before building any of it."""
        _check_expansion(node)
        return super().construct_document(node)

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
    except (yaml.YAMLError, RecursionError):
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
    except RecursionError:  # PyYAML reads nested blocks recursively
        raise JMKUsageError(f"{path} nests lists or mappings too deeply to read: a pipeline needs a few "
                            "levels, not hundreds.") from None
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
    if "batch_predict" in raw:  # a batch prediction: the package's own notebook, with the mapping as parameters
        batch_notebook, batch_parameters = batch_step(raw, where, problems)
        raw = {**{k: v for k, v in raw.items() if k not in NOT_WITH_BATCH}, "notebook": str(batch_notebook),
               "parameters": batch_parameters, "cache": raw.get("cache", False)}
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
        seconds = duration_seconds(timeout)
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
