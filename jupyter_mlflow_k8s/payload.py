"""What crosses from the notebook to a job and back: free variables, results, manifests.

The kernel side computes a cell's free variables (AST against the live namespace), serializes
only those with cloudpickle (functions and classes from earlier cells by value, modules by
reference) and stages them content-addressed with a manifest. The job side restores them and
stages its results the same way. No IPython, no MLflow, no backend knowledge here.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import io
import json
import types
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import cloudpickle

from .exceptions import JMKUsageError
from .storage import Storage, blob_key

PAYLOAD_VERSION = 1
# Values whose pickle fits in this many bytes are hashed and kept in memory in one pass;
# bigger ones are hashed first and only pickled again into storage when the hash is new.
INLINE_LIMIT = 64 * 2**20
# Names IPython puts in every user namespace that a cell never means as data.
IGNORED_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "display", "_", "__", "___"})
_BUILTINS = frozenset(dir(builtins))


# ---------------------------------------------------------------------------- cell analysis


@dataclass(frozen=True)
class CellAnalysis:
    """Names a cell reads before assigning them, and names it assigns at top level."""

    reads: tuple[str, ...]
    assigns: tuple[str, ...]
    final_expression: bool

    def inputs(self, namespace: Mapping[str, Any], exclude: Iterable[str] = ()) -> tuple[str, ...]:
        """Free variables that the namespace can supply."""
        skip = set(exclude) | IGNORED_NAMES
        return tuple(n for n in self.reads if n in namespace and n not in skip and not n.startswith("_i"))


class _FreeNames(ast.NodeVisitor):
    """Walks a module in evaluation order, collecting loads of names not yet bound."""

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.reads: dict[str, None] = {}
        self.assigns: dict[str, None] = {}
        self.scopes: list[set[str]] = []  # locals of enclosing functions/comprehensions

    def _load(self, name: str) -> None:
        if any(name in scope for scope in self.scopes) or name in self.bound or name in _BUILTINS:
            return
        self.reads.setdefault(name)

    def _store(self, name: str) -> None:
        if self.scopes:
            self.scopes[-1].add(name)
        else:
            self.bound.add(name)
            self.assigns.setdefault(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._load(node.id)
        else:
            self._store(node.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
        self.visit(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def _visit_loop_target(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in [*node.body, *node.orelse]:
            self.visit(stmt)

    visit_For = visit_AsyncFor = _visit_loop_target

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        # Imported names are bound but not results: the notebook imports what it needs itself.
        for alias in node.names:
            if alias.name == "*":
                continue
            name = alias.asname or alias.name.split(".")[0]
            if self.scopes:
                self.scopes[-1].add(name)
            else:
                self.bound.add(name)

    visit_ImportFrom = visit_Import

    def visit_Global(self, node: ast.Global | ast.Nonlocal) -> None:
        if self.scopes:
            for name in node.names:
                self.scopes[-1].discard(name)

    visit_Nonlocal = visit_Global

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self.visit(default)
        if not isinstance(node, ast.Lambda):
            for decorator in node.decorator_list:
                self.visit(decorator)
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    self.visit(arg.annotation)
            self._store(node.name)
        params = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a}
        # Locals are every name the body binds, wherever (Python decides scope per function).
        local = params | _bound_in(node.body if not isinstance(node, ast.Lambda) else [node.body])
        self.scopes.append(local)
        for stmt in node.body if not isinstance(node, ast.Lambda) else [node.body]:
            self.visit(stmt)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        self.scopes.append(set())
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()
        self._store(node.name)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        self.scopes.append(set())
        for gen in node.generators:
            self.visit(gen.iter)
            self.visit(gen.target)
            for cond in gen.ifs:
                self.visit(cond)
        if isinstance(node, ast.DictComp):
            self.visit(node.key)
            self.visit(node.value)
        else:
            self.visit(node.elt)
        self.scopes.pop()

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._store(node.name)
        for stmt in node.body:
            self.visit(stmt)


def _bound_in(body: list[Any]) -> set[str]:
    """Names bound anywhere in a function body, not descending into nested scopes."""
    names: set[str] = set()
    declared_global: set[str] = set()
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            declared_global.update(node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name.split(".")[0]) for a in node.names if a.name != "*")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            continue
        if isinstance(node, ast.AST):
            stack.extend(ast.iter_child_nodes(node))
    return names - declared_global


def analyze_cell(code: str) -> CellAnalysis:
    """Reads, top-level assignments and whether the cell ends in an expression.

    Raises :class:`JMKUsageError` for a syntax error, so nothing is submitted.
    """
    try:
        tree = ast.parse(code, filename="<cell>")
    except SyntaxError as exc:
        line = (exc.text or "").rstrip()
        raise JMKUsageError(
            f"The cell has a syntax error on line {exc.lineno}: {exc.msg}\n    {line}\nFix it; nothing was submitted."
        ) from None
    visitor = _FreeNames()
    for stmt in tree.body:
        visitor.visit(stmt)
    final = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    return CellAnalysis(tuple(visitor.reads), tuple(visitor.assigns), final)


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True)
class ValueEntry:
    """Manifest line for one staged value."""

    name: str
    type: str
    size: int
    sha256: str
    key: str


def type_name(value: Any) -> str:
    """``module.Qualname`` of a value's type, as users see it in errors."""
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class _HashingSink(io.RawIOBase):
    """A write-only file that hashes what it is given and keeps it while it is small."""

    def __init__(self, keep_limit: int) -> None:
        super().__init__()
        self.digest = hashlib.sha256()
        self.size = 0
        self.keep_limit = keep_limit
        self.chunks: list[bytes] | None = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += view.nbytes
        if self.chunks is not None:
            if self.size <= self.keep_limit:
                self.chunks.append(bytes(view))
            else:
                self.chunks = None
        return view.nbytes


def stage_value(storage: Storage, name: str, value: Any) -> ValueEntry:
    """Pickle ``value`` into ``storage`` under its content hash, unless it is already there."""
    sink = _HashingSink(INLINE_LIMIT)
    try:
        cloudpickle.dump(value, sink, protocol=5)
    except Exception as exc:
        raise UnpicklableValue(name, value, exc) from exc
    digest = sink.digest.hexdigest()
    key = blob_key(digest)
    if not storage.exists(key):
        if sink.chunks is not None:
            storage.put_bytes(key, b"".join(sink.chunks))
        elif storage.is_local:
            # Pickle again straight to a temporary file, then move it in place atomically.
            tmp_key = f"{key}.{id(sink)}.partial"
            with storage.open(tmp_key, "wb") as handle:
                cloudpickle.dump(value, handle, protocol=5)
            storage.move(tmp_key, key)
        else:
            with storage.open(key, "wb") as handle:
                cloudpickle.dump(value, handle, protocol=5)
    return ValueEntry(name, type_name(value), sink.size, digest, key)


class UnpicklableValue(JMKUsageError):
    """A value that cloudpickle cannot serialize; the message names the variable and its type."""

    def __init__(self, name: str, value: Any, cause: BaseException) -> None:
        super().__init__(
            f"Cannot send {name!r} (type {type_name(value)}) between the notebook and the job: {cause}. "
            f"Create it inside the %%train cell instead, or delete it from the notebook "
            f"(del {name}) if the cell does not need it."
        )
        self.name = name


def load_value(storage: Storage, entry: Mapping[str, Any]) -> Any:
    """Inverse of :func:`stage_value`."""
    with storage.open(entry["key"], "rb") as handle:
        return cloudpickle.load(handle)


# ---------------------------------------------------------------------------- payloads


@dataclass
class Payload:
    """The staged description of one job: code, input manifest, params, outputs wanted."""

    job_id: str
    code: str
    storage_url: str
    inputs: list[ValueEntry] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    tracking: dict[str, str] = field(default_factory=dict)
    register: dict[str, str] | None = None
    assigns: list[str] = field(default_factory=list)
    version: int = PAYLOAD_VERSION

    @property
    def result_key(self) -> str:
        """Where the runner writes its result document."""
        return f"jobs/{self.job_id}/result.json"

    def to_json(self) -> str:
        """Serialized form."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> Payload:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        if data.get("version") != PAYLOAD_VERSION:
            raise ValueError(f"payload version {data.get('version')} is not {PAYLOAD_VERSION}")
        data["inputs"] = [ValueEntry(**e) for e in data["inputs"]]
        return cls(**data)


def stage_inputs(storage: Storage, values: Mapping[str, Any]) -> list[ValueEntry]:
    """Stage every input; an unpicklable one raises :class:`UnpicklableValue` naming it."""
    return [stage_value(storage, name, value) for name, value in values.items()]


def write_payload(storage: Storage, payload: Payload) -> str:
    """Store the payload document; returns the URL the runner is given."""
    key = f"jobs/{payload.job_id}/payload.json"
    storage.put_bytes(key, payload.to_json().encode())
    return storage.url_of(key)


def new_main_module() -> types.ModuleType:
    """A fresh ``__main__`` module for running a cell, with builtins available."""
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    return module
