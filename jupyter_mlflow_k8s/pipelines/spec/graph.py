"""The graph of a pipeline's steps (running order, upstream steps, cycles) and resolving its templates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...exceptions import JMKUsageError
from ..model import Pipeline, Step
from .base import (
    _OUTPUT_REF_RE,
    _PARAMETER_REF_RE,
    _TEMPLATE_RE,
    _did_you_mean,
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
