"""Reading notebooks without running them: the cell tagged ``parameters`` and the ``output(...)`` calls."""

from __future__ import annotations

import ast
import copy
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...exceptions import JMKUsageError
from .base import (
    _OUTPUT_MODULES,
    PARAMETERS_TAG,
)

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
