"""The kernel side of the launch forms: what a cell would ship, and the ``%%train`` line a form's values make.

The JupyterLab "Run cell as job" form calls :func:`kernel_request` through an execute request's
``user_expressions`` (the reply's ``application/json`` is the answer); the widget form of
``%%train_form`` calls :func:`describe` and :func:`make_line` directly. Every check is the magic's
own (:func:`.train.plan_train`), so a form can neither accept a line ``%%train`` refuses nor refuse
one it accepts. Nothing is staged or submitted here: the form writes the line into the cell and
the magic runs it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.utils.process import arg_split  # type: ignore[attr-defined]  # what parse_argstring splits with

from ..errors import translate
from ..exceptions import JMKUsageError
from ..k8s.presets import configured_presets, preset_summaries
from ..payload import UnpicklableValue, type_name
from .common import parse_flags, service_for, user_errors
from .train import TrainMagics, plan_train

__all__ = [
    "FIELDS",
    "LauncherMagics",
    "LauncherReply",
    "describe",
    "human_size",
    "kernel_request",
    "make_line",
    "measure_pickle",
    "ship_list",
    "split_cell",
]

# The form's values, in the order the line gives them: key -> the flag of %%train.
FIELDS: dict[str, str] = {
    "backend": "--backend",
    "preset": "--preset",
    "gpus": "--gpus",
    "cpu": "--cpu",
    "memory": "--memory",
    "image": "--image",
    "experiment": "--experiment",
    "register": "--register",
    "async": "--async",
}
_DESTS = {"async": "run_async"}  # where argparse keeps a value whose key is not its dest
# Pickles are counted up to this many bytes; a bigger value is shown as ">= 1.0 GB" (it would ship, slowly).
SIZE_BOUND = 10**9
_TRAIN_LINE = re.compile(r"^%%train(?:\s+(?P<flags>.*))?$")
_SAFE_VALUE = re.compile(r"^[^\s'\"-][^\s'\"]*$")


# ---------------------------------------------------------------------------- the kernel bridge


class LauncherReply:
    """A reply for the browser: IPython's formatter puts the dict itself under ``application/json``."""

    def __init__(self, reply: Mapping[str, Any]) -> None:
        self.reply = dict(reply)

    def _repr_json_(self) -> dict[str, Any]:
        return self.reply

    def __repr__(self) -> str:
        return f"<LauncherReply {json.dumps(self.reply)[:200]}>"


def kernel_request(shell: Any, request_b64: str) -> LauncherReply:
    """Answer one request of a launch form: base64 of UTF-8 JSON, ``{"op": "describe" | "line", ...}``.

    ``describe`` reads a cell (its ``%%train`` line, what it would ship and return, the presets);
    ``line`` turns the form's values into the exact ``%%train`` line, checked as the magic checks
    it. Nothing is submitted. See the module docstring and docs/magics.md.
    """
    try:
        request = json.loads(base64.b64decode(request_b64, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError) as exc:
        return LauncherReply(_refused(f"The request is not base64 of UTF-8 JSON: {exc}."))
    if not isinstance(request, dict):
        return LauncherReply(_refused("The request must be a JSON object with an 'op'."))
    op, cell = request.get("op"), request.get("cell")
    if op not in ("describe", "line"):
        return LauncherReply(_refused(f"Unknown op {op!r}: use 'describe' or 'line'."))
    if not isinstance(cell, str):
        return LauncherReply(_refused("'cell' must be the cell's full text (a string)."))
    try:
        if op == "describe":
            return LauncherReply(describe(shell, cell))
        values, extra = request.get("values") or {}, request.get("extra") or ""
        if not isinstance(values, dict) or not isinstance(extra, str):
            return LauncherReply(_refused("'values' must be an object and 'extra' a string."))
        return LauncherReply(make_line(shell, cell, values, extra))
    except Exception as exc:  # the form must get an answer it can show, never a silent failure
        error = translate(exc)
        return LauncherReply(_refused(str(error) if error is not None else f"{type(exc).__name__}: {exc}"))


def _refused(why: str) -> dict[str, Any]:
    return {"ok": False, "errors": {"request": why}}


# ---------------------------------------------------------------------------- describe


def split_cell(cell: str) -> tuple[str | None, str]:
    """``(flags, body)``: the flags of the cell's ``%%train`` line (``None`` without one) and the rest."""
    lines = cell.split("\n")
    for index, text in enumerate(lines):
        if not text.strip():
            continue
        found = _TRAIN_LINE.match(text.strip())
        if found is None:
            break
        return (found["flags"] or "").strip(), "\n".join(lines[index + 1 :])
    return None, cell


def describe(shell: Any, cell: str) -> dict[str, Any]:
    """What a form shows for ``cell``: values from its ``%%train`` line, what it ships and returns, presets."""
    flags, body = split_cell(cell)
    errors: dict[str, str] = {}
    values, extra = _default_values(), ""
    if flags:
        try:
            values, extra = _read_flags(flags)
        except (UsageError, JMKUsageError, ValueError) as exc:
            errors["line"] = _message(exc)
            extra = flags  # nothing of what the user typed is lost
    ship: list[dict[str, Any]] = []
    returns: list[str] = []
    planned = _plan_or_refusal(shell, flags or "", body)
    if isinstance(planned, str):
        errors.setdefault("line" if flags else "cell", planned)
        cell_only = _plan_or_refusal(shell, "", body)
        if isinstance(cell_only, str):
            errors["cell"] = cell_only
            if errors.get("line") == cell_only:
                del errors["line"]
        else:
            ship, returns = ship_list(shell, cell_only.spec.inputs), list(cell_only.spec.outputs)
    else:
        ship, returns = ship_list(shell, planned.spec.inputs), list(planned.spec.outputs)
    total = sum(item["size"] for item in ship if item["size"] is not None)
    bounded = any(item["size_text"].startswith(">=") for item in ship)
    return {
        "ok": True,
        "values": values,
        "extra": extra,
        "had_line": flags is not None,
        "body": body,
        "ship": ship,
        "ship_total_text": (">= " if bounded else "") + human_size(total),
        "returns": returns,
        "presets": preset_summaries(configured_presets(shell.config)),
        "backends": backend_names(),
        "default_backend": service_for(shell).settings.default_backend,
        "errors": errors,
    }


def backend_names() -> list[str]:
    """The backends a form offers, built-ins first: all but the pipeline steps' (never submitted alone)."""
    from ..backends.base import BUILTIN_BACKENDS, backends

    order = list(BUILTIN_BACKENDS)
    names = sorted(backends.names(), key=lambda name: (order.index(name) if name in order else len(order), name))
    return [name for name in names if name != "pipeline"]


def _default_values() -> dict[str, Any]:
    return {key: (False if key == "async" else None) for key in FIELDS}


def _parser() -> Any:
    return TrainMagics.train.parser  # type: ignore[attr-defined]  # set by @magic_arguments


def _option(word: str) -> Any:
    """The argparse action a ``--flag`` word names, abbreviations included (argparse allows them); else None."""
    name = word.partition("=")[0]
    actions = [action for action in _parser()._actions if action.option_strings]
    exact = [action for action in actions if name in action.option_strings]
    if exact:
        return exact[0]
    prefixed = [a for a in actions if any(s.startswith(name) for s in a.option_strings if s.startswith("--"))]
    return prefixed[0] if len(prefixed) == 1 and name.startswith("--") and len(name) > 2 else None


def _field_of(action: Any) -> str | None:
    for key, flag in FIELDS.items():
        if flag in action.option_strings:
            return key
    return None


def _words(flags: str) -> list[tuple[str | None, list[str]]]:
    """The flag words as ``parse_flags`` splits them, grouped: ``(form key or None, [flag, value...])``."""
    words = arg_split(flags, strict=True)  # exactly as IPython's parse_argstring splits
    groups: list[tuple[str | None, list[str]]] = []
    index = 0
    while index < len(words):
        word = words[index]
        action = _option(word) if word.startswith("--") else None
        group = [word]
        index += 1
        if action is not None and "=" not in word:
            takes = action.nargs != 0
            if action.nargs == "?":
                takes = index < len(words) and not words[index].startswith("-")
            if takes and index < len(words):
                group.append(words[index])
                index += 1
        groups.append((_field_of(action) if action is not None else None, group))
    return groups


def _read_flags(flags: str) -> tuple[dict[str, Any], str]:
    """The form's values of a ``%%train`` line as ``%%train`` reads them, and its other flags verbatim."""
    args = parse_flags(TrainMagics.train, flags)  # the magic's own reading; raises for a bad line
    groups = _words(flags)
    given = {key for key, _ in groups if key is not None}
    values = _default_values()
    for key in given:
        values[key] = getattr(args, _DESTS.get(key, key))
    extra = " ".join(" ".join(group) for key, group in groups if key is None)
    return values, extra


def _plan_or_refusal(shell: Any, flags: str, body: str) -> Any:
    """The plan of ``%%train FLAGS`` on ``body``, or the message of what the magic would refuse."""
    try:
        return plan_train(shell, flags, body)
    except Exception as exc:
        if isinstance(exc, UsageError) or translate(exc) is not None:
            return _message(exc)
        raise


def _message(exc: BaseException) -> str:
    error = translate(exc)
    return str(error if error is not None else exc)


# ---------------------------------------------------------------------------- the ship list


class _PastBound(Exception):
    """Raised by the counting sink once the bound is passed: stop pickling."""


class _CountingSink:
    """A write-only file that only counts: the pickle is never held."""

    def __init__(self, bound: int) -> None:
        self.size = 0
        self.bound = bound

    def write(self, data: Any) -> int:
        count = memoryview(data).nbytes
        self.size += count
        if self.size > self.bound:
            raise _PastBound
        return count


@dataclass(frozen=True)
class PickledSize:
    """How big a value's pickle is (``exact`` False: at least ``size``), or why it cannot be pickled."""

    size: int | None
    exact: bool
    error: BaseException | None = None


def measure_pickle(value: Any, bound: int = SIZE_BOUND) -> PickledSize:
    """Stream ``value``'s pickle (as the payload pickles it) into a counter, stopping past ``bound`` bytes."""
    sink = _CountingSink(bound)
    try:
        cloudpickle.dump(value, sink, protocol=5)
    except _PastBound:
        return PickledSize(sink.size, exact=False)
    except Exception as exc:
        return PickledSize(None, exact=False, error=exc)
    return PickledSize(sink.size, exact=True)


def human_size(size: int) -> str:
    """``7600163`` -> ``"7.6 MB"``: decimal units, as file managers show them."""
    if size < 1000:
        return f"{size} B"
    amount = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        amount /= 1000
        if amount < 1000 or unit == "TB":
            break
    return f"{amount:.1f} {unit}"


def ship_list(shell: Any, names: Sequence[str], bound: int = SIZE_BOUND) -> list[dict[str, Any]]:
    """Each input the job would get: type, pickled size, and for an unpicklable one why and what to do."""
    shipped = []
    for name in names:
        value = shell.user_ns[name]
        measured = measure_pickle(value, bound)
        warning = None
        if measured.error is not None:
            warning = str(UnpicklableValue(name, value, measured.error))
        size_text = ""
        if measured.size is not None:
            size_text = human_size(measured.size) if measured.exact else f">= {human_size(measured.size)}"
        shipped.append({
            "name": name,
            "type": type(value).__qualname__,
            "type_full": type_name(value),
            "size": measured.size,
            "size_text": size_text,
            "picklable": measured.error is None,
            "warning": warning,
        })  # fmt: skip
    return shipped


# ---------------------------------------------------------------------------- the line


def quote_value(value: str) -> str:
    """``value`` as one word of a ``%%train`` line that ``parse_flags`` reads back as ``value``.

    IPython splits the line without shell escapes and drops one pair of enclosing quotes: a value
    with a space, a quote or a leading ``-`` is put in the kind of quotes it does not contain.
    """
    if "\n" in value or "\r" in value:
        raise ValueError("must be on one line")
    if _SAFE_VALUE.match(value):
        return value
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    raise ValueError("cannot hold both kinds of quotes (' and \"): drop one of them")


def make_line(shell: Any, cell: str, values: Mapping[str, Any], extra: str = "") -> dict[str, Any]:
    """The ``%%train`` line of a form's values, checked as ``%%train`` checks it; nothing submitted.

    Returns ``{"ok": True, "line", "cell"}``, or ``{"ok": False, "errors": {key: message}}`` (with
    ``line`` and ``cell`` when the line could be written): a key of ``values``, ``"extra"`` or ``"cell"``.
    """
    _, body = split_cell(cell)
    errors: dict[str, str] = {}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        errors["request"] = f"Unknown values {', '.join(unknown)}; a form sets {', '.join(FIELDS)}."
    parts: dict[str, str] = {}
    for key, flag in FIELDS.items():
        value = values.get(key)
        if key == "async":
            if value:
                parts[key] = flag
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            errors[key] = f"{flag} must be text, e.g. {flag} {_EXAMPLES.get(key, 'NAME')}."
            continue
        try:
            parts[key] = f"{flag} {quote_value(str(value).strip())}"
        except ValueError as exc:
            errors[key] = f"{flag} {value!r} {exc}."
    extra = extra.strip()
    if "\n" in extra or "\r" in extra:
        errors["extra"] = "The other flags must be on one line."
    elif extra:
        try:
            taken = [group[0] for key, group in _words(extra) if key is not None]
        except ValueError as exc:
            errors["extra"] = (f"Cannot read {extra!r}: {exc}. Close the quote, or put a value with a quote or a "
                               "space in the other kind of quotes.")  # fmt: skip
        else:
            if taken:
                fields = ", ".join(sorted({_field_of(_option(word)) or word for word in taken}))
                errors["extra"] = f"Set {', '.join(taken)} in the form's own fields ({fields}), not in the other flags."
    if errors:
        return {"ok": False, "errors": errors}
    flags = " ".join([*parts.values(), *([extra] if extra else [])])
    line = f"%%train {flags}".rstrip()
    new_cell = f"{line}\n{body}"
    found = _plan_or_refusal(shell, flags, body)
    if not isinstance(found, str):
        return {"ok": True, "line": line, "cell": new_cell}
    return {"ok": False, "line": line, "cell": new_cell, "errors": _attribute(shell, body, parts, extra, found)}


_EXAMPLES = {"gpus": "1", "cpu": "4", "memory": "16Gi", "backend": "kubernetes", "register": "mnist-clf"}


def _attribute(shell: Any, body: str, parts: Mapping[str, str], extra: str, error: str) -> dict[str, str]:
    """Which field each problem of a refused line belongs to: each part checked alone, with the same checks."""
    alone = _plan_or_refusal(shell, "", body)
    if isinstance(alone, str):
        return {"cell": alone}
    errors: dict[str, str] = {}
    for key, part in parts.items():
        found = _plan_or_refusal(shell, part, body)
        if isinstance(found, str):
            errors[key] = found
    if extra:
        found = _plan_or_refusal(shell, extra, body)
        if isinstance(found, str):
            errors["extra"] = found
    if not errors:  # only the combination is refused (e.g. --register with --sweep): the field it names
        named = [key for key in parts if re.search(rf"{re.escape(FIELDS[key])}\b", error)]
        errors[named[0] if named else "extra"] = error
    return errors


# ---------------------------------------------------------------------------- %%train_form


def show_train_form(shell: Any, cell: str, display: Callable[[Any], Any] | None = None) -> Any:
    """Show the launch form for ``cell`` (widgets), or in a terminal print the line to use; returns the form."""
    from ..widgets.status import kernel_widgets
    from ..widgets.train_form import TrainForm, text_form

    described = describe(shell, cell)
    form = TrainForm(
        described,
        make_line=lambda values, extra: make_line(shell, cell, values, extra),
        submit=lambda reply: _submit(shell, reply),
    )
    if kernel_widgets() is None and display is None:
        line = make_line(shell, cell, described["values"], described["extra"])
        print(text_form(described, line))
        return form
    (display or _display)(form.widget)
    return form


def _display(widget: Any) -> None:
    from IPython.display import display

    display(widget)


def _submit(shell: Any, reply: Mapping[str, Any]) -> Any:
    """Write the form's line into the cell, then run it through ``%%train`` itself."""
    flags, body = split_cell(reply["cell"])
    if _in_execute_request(shell):
        shell.set_next_input(reply["cell"], replace=True)
    else:  # a widget's click is a comm message: a payload would land in whichever cell runs next
        print(f"[jmk] to run it again without the form, put this line on top of the cell:\n{reply['line']}")
    return shell.run_cell_magic("train", flags or "", body)


def _in_execute_request(shell: Any) -> bool:
    """True outside a kernel, or while the kernel answers an execute request (where cell payloads go)."""
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return True
    try:
        parent = kernel.get_parent("shell")
    except Exception:
        return False
    return bool(parent) and parent.get("header", {}).get("msg_type") == "execute_request"


@magics_class
class LauncherMagics(Magics):
    """``%%train_form``: a form that writes and runs this cell's ``%%train`` line."""

    @cell_magic
    @user_errors
    def train_form(self, line: str, cell: str) -> None:
        """Show a form for running this cell as a job: resources, presets, what the cell ships.

        The form lists the cell's inputs (the notebook variables it reads) with their type and
        pickled size, and warns about any that cannot be sent. It shows the exact ``%%train`` line
        it will run; a bad value (``--memory lots``) is shown next to its field and the Run button
        stays disabled. "Run as job" runs the cell through ``%%train`` with that line, its output
        in the form. Flags on the ``%%train_form`` line fill the form in. Without a widgets
        frontend (a terminal) it prints the ``%%train`` line to use instead. JupyterLab has the
        same form as the "Run cell as job" command of the cell toolbar.

        Examples
        --------
        Pick the resources in a form, then run::

            %%train_form
            model = fit(X_train, y_train)

        Start from a line::

            %%train_form --backend kubernetes --gpus 1 --memory 16Gi --param lr=0.1
            model = fit(X_train, y_train, lr=lr)

        Or, from code: ``jupyter_mlflow_k8s.train_form("model = fit(X_train, y_train)")``.
        """
        assert self.shell is not None
        text = f"%%train {line}\n{cell}" if line.strip() else cell
        show_train_form(self.shell, text)
