"""Sphinx extension: the reference pages generated from the code, so they cannot drift from it.

A page asks for a generated part with a MyST comment line of its own, replaced before parsing:

- ``% jmk-reference: magics``: every magic that ``%load_ext jupyter_mlflow_k8s`` registers, with
  its docstring (as ``%%train?`` shows it) and, for magics with ``magic_arguments``, every flag.
- ``% jmk-reference: configuration``: every ``config=True`` trait of the package's configurable
  classes (found by their ``tag(config=True)``), with type, default and help.
- ``% jmk-reference: errors``: every place the package builds a user-facing error (a subclass of
  ``JMKError``, or an HTTP error of the sidebar's API) with the message text, grouped by where a
  user meets it, and what to do for the common ones.

A flag or a trait without help text is reported as a Sphinx warning, so ``sphinx -W`` fails.
Nothing here runs at import time; the package is imported when a page asks for a part.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import string
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "jupyter_mlflow_k8s"
MARKER = re.compile(r"^% jmk-reference: (?P<part>[a-z]+)[ \t]*$", re.MULTILINE)
_PUNCTUATION = set(string.punctuation)


def md_escape(text: str) -> str:
    """Text shown as is by Markdown (every ASCII punctuation character escaped)."""
    return "".join(f"\\{ch}" if ch in _PUNCTUATION else ch for ch in text)


def package_root() -> Path:
    """The directory of the installed (or checked-out) package."""
    module = importlib.import_module(PACKAGE)
    assert module.__file__ is not None
    return Path(module.__file__).parent


def module_files() -> Iterator[tuple[str, Path]]:
    """``(module name, path)`` of every Python module of the package, in path order."""
    root = package_root()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).with_suffix("")
        if "labextension" in relative.parts or any(p.startswith(".") for p in relative.parts):
            continue
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


# --------------------------------------------------------------------------------------------
# Magics


@dataclass
class Flag:
    """One argument of a magic: its spelling, default and help."""

    names: str
    default: Any
    help: str


@dataclass
class MagicDoc:
    """One magic as the reference shows it."""

    name: str
    kind: str  # "line" or "cell"
    cls: type
    doc: str
    usage: str
    flags: list[Flag]

    @property
    def spelled(self) -> str:
        """``%name`` or ``%%name``."""
        return ("%%" if self.kind == "cell" else "%") + self.name


class _Recorder:
    """Stands in for the IPython shell in ``load_ipython_extension``: records the magics classes."""

    def __init__(self) -> None:
        self.classes: list[type] = []

    def register_magics(self, cls: type) -> None:
        self.classes.append(cls)


def magic_classes() -> list[type]:
    """The magics classes ``%load_ext jupyter_mlflow_k8s`` registers, in its order."""
    package = importlib.import_module(PACKAGE)
    recorder = _Recorder()
    package.load_ipython_extension(recorder)
    return recorder.classes


def _flags(parser: argparse.ArgumentParser) -> list[Flag]:
    flags = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                names += f" {action.metavar or action.dest.upper()}"
        else:
            names = str(action.metavar or action.dest)
        default = None if action.default in (None, False, argparse.SUPPRESS) else action.default
        flags.append(Flag(names, default, action.help or ""))
    return flags


def _usage_constant(module: Any, name: str, names_in_module: int) -> str:
    for attr in (f"{name.upper()}_USAGE", *(["USAGE"] if names_in_module == 1 else [])):
        value = getattr(module, attr, None)
        if isinstance(value, str):
            return value.removeprefix("Usage:").strip("\n")
    return ""


def magics() -> list[MagicDoc]:
    """Every magic of the extension with its docstring, usage and flags."""
    found = []
    for cls in magic_classes():
        module = inspect.getmodule(cls)
        table: dict[str, dict[str, str]] = cls.magics  # type: ignore[attr-defined]
        count = sum(len(v) for v in table.values())
        for kind in ("cell", "line"):
            for name, attr in table[kind].items():
                func = getattr(cls, attr)
                parser = getattr(func, "parser", None)
                spelled = ("%%" if kind == "cell" else "%") + name
                if parser is not None:
                    doc = inspect.cleandoc(parser.description or "")
                    usage = parser.format_usage().replace("::", "").strip("\n")
                    usage = re.sub(rf"^(\s*)%{re.escape(name)}\b", rf"\g<1>{spelled}", usage, count=1)
                    flags = _flags(parser)
                else:
                    doc = inspect.getdoc(func) or ""
                    usage = _usage_constant(module, name, count)
                    flags = []
                found.append(MagicDoc(name, kind, cls, doc, textwrap.dedent(usage).strip("\n"), flags))
    return found


def docstring_to_markdown(doc: str) -> str:
    """A numpydoc docstring as MyST Markdown: section headers as rubrics, ``::`` blocks as code."""
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", nxt.strip()) and len(nxt.strip()) == len(line.strip()):
            out += [f"```{{rubric}} {line.strip()}", "```", ""]
            i += 2
            continue
        if line.rstrip().endswith("::"):
            text = line.rstrip()[:-2].rstrip()
            if text:
                out.append(text + ":")
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```ipython3", inspect.cleandoc("\n".join(block)), "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip() + "\n"


def magics_markdown(warn: Callable[[str], None]) -> str:
    """The magics reference as Markdown."""
    parts = []
    for magic in magics():
        parts.append(f"(magic-{magic.name})=\n## `{magic.spelled}`\n")
        parts.append(f"*{magic.kind} magic, `{magic.cls.__module__}.{magic.cls.__name__}`*\n")
        if magic.usage:
            parts.append(f"```text\n{magic.usage}\n```\n")
        parts.append(docstring_to_markdown(magic.doc))
        if magic.flags:
            parts.append("```{rubric} Arguments\n```\n")
            for flag in magic.flags:
                if not flag.help.strip():
                    warn(f"{magic.spelled} {flag.names}: the argument has no help text")
                default = f" (default: `{flag.default}`)" if flag.default not in (None, "") else ""
                parts.append(f"- `{flag.names}`{default}: {md_escape(flag.help.strip() or 'no help text')}")
            parts.append("")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TraitDoc:
    """One configurable setting."""

    cls: str
    name: str
    type: str
    default: str
    help: str


def configurable_classes() -> list[type]:
    """Classes of the package with ``config=True`` traits, from the modules that tag any."""
    from traitlets import HasTraits

    classes = []
    for name, path in module_files():
        if "tag(config=True)" not in path.read_text(encoding="utf-8"):
            continue
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, HasTraits) and cls.class_traits(config=True):
                classes.append(cls)
    return classes


def _owner(cls: type, name: str) -> type:
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass
    return cls


def _type_name(trait: Any) -> str:
    name = type(trait).__name__
    if getattr(trait, "klass", None) is not None and name in ("Instance", "Type"):
        name += f"({getattr(trait.klass, '__name__', trait.klass)})"
    if getattr(trait, "allow_none", False):
        name += " or None"
    return name


def traits() -> list[TraitDoc]:
    """Every ``config=True`` trait that the package defines, per configurable class."""
    found = []
    cls: Any
    for cls in configurable_classes():
        generators = getattr(cls, "_trait_default_generators", {})
        for name, trait in sorted(cls.class_traits(config=True).items()):
            if not _owner(cls, name).__module__.startswith(PACKAGE):
                continue  # inherited from Jupyter Server or traitlets: documented there
            if name in generators:
                doc = inspect.getdoc(generators[name])
                default = f"computed when read{': ' + doc if doc else ' (see the help)'}"
            else:
                default = f"`{trait.default_value_repr()}`"
            found.append(TraitDoc(cls.__name__, name, _type_name(trait), default, (trait.help or "").strip()))
    return found


def configuration_markdown(warn: Callable[[str], None]) -> str:
    """The configuration reference as Markdown, one section per class."""
    parts = []
    by_class: dict[str, list[TraitDoc]] = {}
    for trait in traits():
        by_class.setdefault(trait.cls, []).append(trait)
    classes = {cls.__name__: cls for cls in configurable_classes()}
    for name, items in by_class.items():
        cls = classes[name]
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0]
        parts.append(f"(config-{name})=\n## `{name}`\n")
        parts.append(f"`{cls.__module__}.{name}`: {summary}\n")
        for trait in items:
            if not trait.help:
                warn(f"c.{name}.{trait.name}: the trait has no help text")
            parts.append(f"(config-{name}-{trait.name})=\n### `c.{name}.{trait.name}`\n")
            parts.append(f"- type: `{trait.type}`\n- default: {trait.default}\n")
            parts.append(md_escape(trait.help or "no help text") + "\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Errors

GROUPS: list[tuple[str, str, str]] = [
    # (title, id, pattern on the path relative to the package)
    ("The magics", "errors-magics", r"^magics/"),
    ("The jmk command", "errors-cli", r"(^|/)(cli|schedule_cli|trigger_cli)\.py$"),
    ("Pipelines", "errors-pipelines", r"^(pipelines/|backends/pipeline\.py)"),
    ("Kubernetes jobs", "errors-kubernetes", r"^(backends/kubernetes|manifests\.py)"),
    ("Serving", "errors-serving", r"^serving/"),
    ("Batch prediction", "errors-batch", r"^batch/"),
    ("The sidebar and its REST API", "errors-sidebar", r"^labapp/"),
    ("Jobs, payloads, storage and tracking", "errors-jobs", r""),
]

# What to do, for the messages users meet most; matched against the message template.
ADVICE: list[tuple[str, str]] = [
    (r"^No job ", "The id is the 8 characters `%jobs` shows. Jobs live under the state directory: a kernel or "
     "`jmk` with another `JMK_STATE_DIR` (or `c.JMKSettings.state_dir`) sees other jobs."),
    (r"Unknown .*known:", "Use one of the names listed. A backend or engine from another package needs that "
     "package installed in the kernel's environment (entry points)."),
    (r"cannot be (pickled|serialized)|could not be pickled",
     "Recreate the object inside the `%%train` cell (open files, locks, database connections, generators), "
     "or pass what it is made from instead."),
    (r"^Cannot use the job storage", "Check the bucket name and the AWS variables (`AWS_ACCESS_KEY_ID`, "
     "`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for MinIO) in the environment of the kernel or the server."),
    (r"is not KEY=VALUE", "Repeat the flag once per pair: `--param lr=0.01 --param epochs=5`."),
    (r"^No endpoint ", "`%serve list` (or `jmk serve list`) shows the endpoints under this state directory."),
    (r"refused the input", "The model's signature decides the columns and types: compare the DataFrame's "
     "columns with the input example the model was registered with."),
    (r"already in use", "Leave `--port` out to get a free port, or stop what listens there."),
    (r"is invalid", "Every problem is listed with its path in the file: fix them all, then run "
     "`jmk pipeline validate` (or `%pipeline validate`) again."),
    (r"Magics \(%\.\.\.\) and shell commands", "Put `!pip install ...` or `%cd` in a cell of its own before the "
     "`%%train` cell; inside the job, use Python (`subprocess`, `os.chdir`)."),
    (r"not allowed|Forbidden|forbidden", "The service account lacks a permission: see the Role in "
     "[Kubernetes jobs](kubernetes.md#rbac)."),
]


@dataclass
class ErrorSite:
    """One place where the package builds a user-facing error."""

    path: str  # relative to the repository root, e.g. jupyter_mlflow_k8s/magics/train.py
    line: int
    cls: str
    message: str  # Markdown, placeholders as code
    template: str  # plain text with <placeholders>, for matching advice
    multiline: bool


def user_error_classes() -> dict[str, type]:
    """``{qualified name: class}`` of every error class a user can see a message of."""
    import tornado.web

    from jupyter_mlflow_k8s.exceptions import JMKError

    classes: dict[str, type] = {}
    for name, _path in module_files():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__.startswith(PACKAGE) and (
                issubclass(cls, JMKError) or issubclass(cls, tornado.web.HTTPError)
            ):
                classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return classes


def _placeholder(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _placeholder(node.args[0]) if node.args else _placeholder(node.func)
    if isinstance(node, ast.Subscript):
        return _placeholder(node.value)
    if isinstance(node, (ast.BinOp, ast.BoolOp, ast.IfExp)):
        return "…"
    if isinstance(node, ast.FormattedValue):
        return _placeholder(node.value)
    return "…"


def _constant(module: Any, name: str) -> str | None:
    """The text of a module-level constant (``JOB_USAGE``, ``MAX_ALIAS_LENGTH``), else None."""
    value = getattr(module, name, None)
    if name.isupper() and isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return None


def _pieces(node: ast.AST | None, module: Any, params: dict[str, ast.AST]) -> list[tuple[str, str]]:
    """A message expression as ``[("text", ...), ("var", ...)]``."""
    if node is None:
        return []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [("text", node.value)]
    if isinstance(node, ast.JoinedStr):
        pieces: list[tuple[str, str]] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                pieces.append(("text", str(value.value)))
            elif isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name) and (
                value.value.id in params or _constant(module, value.value.id) is not None
            ):
                pieces += _pieces(value.value, module, params)
            else:
                pieces.append(("var", _placeholder(value)))
        return pieces
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _pieces(node.left, module, params) + _pieces(node.right, module, params)
    if isinstance(node, ast.Name):
        if node.id in params:
            return _pieces(params[node.id], module, {}) or [("var", node.id)]
        constant = _constant(module, node.id)
        if constant is not None:
            return [("text", constant)]
    return [("var", _placeholder(node))]


def _init_message(cls: type) -> tuple[list[str], ast.AST | None] | None:
    """For a class with its own ``__init__``: its parameters and the message it passes up."""
    init = vars(cls).get("__init__")
    if init is None:
        return None
    tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(init)))
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef)
    params = [a.arg for a in func.args.args[1:]]
    for node in ast.walk(func):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__"
                and node.args):
            return params, node.args[0]
    return params, None


def _resolve(node: ast.AST, module: Any) -> Any:
    if isinstance(node, ast.Name):
        return getattr(module, node.id, None)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, module)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def error_sites() -> list[ErrorSite]:
    """Every call that builds a user-facing error, with its message, in path and line order."""
    classes = set(user_error_classes().values())
    root = package_root().parent
    sites = []
    for name, path in module_files():
        module = importlib.import_module(name)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            cls = _resolve(node.func, module)
            if cls not in classes:
                continue
            init = _init_message(cls)
            message: ast.AST | None
            if init is None:
                message = node.args[0] if node.args else None
                pieces = _pieces(message, module, {})
            else:
                params, message = init
                given: dict[str, ast.AST] = dict(zip(params, node.args, strict=False))
                given.update({k.arg: k.value for k in node.keywords if k.arg})
                pieces = _pieces(message, inspect.getmodule(cls), given)
            if not pieces:
                pieces = [("text", f"({cls.__name__}, with the message of the error it wraps)")]
            template = "".join(text if kind == "text" else f"<{text}>" for kind, text in pieces)
            multiline = "\n" in template.strip()
            if multiline:
                markdown = template.strip("\n")
            else:
                markdown = "".join(md_escape(text) if kind == "text" else f"`<{text}>`" for kind, text in pieces)
            sites.append(ErrorSite(path.relative_to(root).as_posix(), node.lineno, cls.__name__, markdown.strip(),
                                   template, multiline))
    sites.sort(key=lambda s: (s.path, s.line))
    return sites


def group_of(path: str) -> tuple[str, str]:
    """The title and id of the group a raise site belongs to, from its file."""
    relative = path.split("/", 1)[1]
    for title, ident, pattern in GROUPS:
        if re.search(pattern, relative):
            return title, ident
    raise AssertionError("the last group matches every path")


def errors_markdown(warn: Callable[[str], None]) -> str:
    """The catalogue of error messages as Markdown."""
    groups: dict[tuple[str, str], list[ErrorSite]] = {(t, i): [] for t, i, _ in GROUPS}
    for site in error_sites():
        groups[group_of(site.path)].append(site)
    parts = []
    for (title, ident), sites in groups.items():
        if not sites:
            continue
        parts.append(f"({ident})=\n## {title}\n")
        for site in sites:
            parts.append(f"- **{site.cls}** <small>`{site.path}:{site.line}`</small>\n")
            if site.multiline:
                fenced = "\n".join(f"  {line}" if line else "" for line in site.message.splitlines())
                parts.append(f"  ```text\n{fenced}\n  ```\n")
            else:
                parts.append(f"  {site.message}\n")
            for pattern, advice in ADVICE:
                if re.search(pattern, site.template):
                    parts.append(f"  *What to do:* {advice}\n")
                    break
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Sphinx wiring

PARTS: dict[str, Callable[[Callable[[str], None]], str]] = {
    "magics": magics_markdown,
    "configuration": configuration_markdown,
    "errors": errors_markdown,
}


def _source_read(app: Any, docname: str, source: list[str]) -> None:
    from sphinx.util import logging

    logger = logging.getLogger(__name__)

    def warn(message: str) -> None:
        logger.warning(message, location=docname)

    def replace(match: re.Match[str]) -> str:
        part = match["part"]
        if part not in PARTS:
            warn(f"unknown generated part {part!r}; known: {', '.join(PARTS)}")
            return ""
        return PARTS[part](warn)

    source[0] = MARKER.sub(replace, source[0])


def setup(app: Any) -> dict[str, Any]:
    """Register the ``source-read`` hook that fills in the generated parts."""
    app.connect("source-read", _source_read)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
