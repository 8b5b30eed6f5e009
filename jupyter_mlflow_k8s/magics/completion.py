"""Tab completion for the magics, through IPython's completer (a matcher of its API v2).

``%%train --<TAB>`` completes the flags of the magic itself (read from its parser, never a list
kept here), ``--backend`` and ``--preset`` their values; ``%job attach|logs|cancel|status <TAB>``
the ids of jobs and sweeps, newest first; ``%serve``, ``%model load`` and ``%model alias`` the
``models:/`` names of the registry (and ``@alias`` or ``/version`` after a name); ``%predict`` and
``%serve stop`` the local endpoints. Everything offered is read from files, except the registry:
its names are cached (:class:`~jupyter_mlflow_k8s.tracking.model_registry.ModelNames`), and a
tracking server that does not answer soon gives no names rather than a frozen Tab.

Owns only completion: it never runs, submits or changes anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from IPython.core.completer import CompletionContext, SimpleCompletion, SimpleMatcherResult, context_matcher

JOB_ACTIONS = ("attach", "logs", "cancel", "status")

# ``%%train`` only on a cell's first line; the line magics also after ``name =`` (``ep = %serve ...``).
_CELL_MAGIC = re.compile(r"^\s*%%(train|train_form)(\s.*)?$")
_LINE_MAGIC = re.compile(r"^(?:\s*[A-Za-z_][\w.]*\s*=)?\s*%(job|serve|model|predict)(\s.*)?$")
_SEARCHES = ("grid", "random", "tpe")
_PRUNERS = ("median", "halving")


@dataclass
class Candidates:
    """What one position of a magic's line can be: the words, and the kind IPython shows beside them."""

    words: Sequence[str] = ()
    kind: str = "jmk"
    ordered: bool = False


class MagicCompleter:
    """The matcher of one shell: call :meth:`matcher` with IPython's :class:`CompletionContext`."""

    def __init__(self, shell: Any) -> None:
        from ..tracking.model_registry import ModelNames

        self.shell = shell
        self.models = ModelNames()

    # -- the matcher ------------------------------------------------------------------------------

    def matcher(self, context: CompletionContext) -> SimpleMatcherResult:
        """Completions for the word under the cursor when it is on one of our magics' lines; none otherwise."""
        none: SimpleMatcherResult = {"completions": [], "suppress": False}
        line = context.text_until_cursor
        found = _CELL_MAGIC.match(line) if context.cursor_line == 0 else None
        if found is None:
            found = _LINE_MAGIC.match(line)
        if found is None:
            return none
        magic, rest = found.group(1), found.group(2)
        if rest is None:  # the cursor is still on the magic's own name
            return none
        words = rest.split()
        current = "" if rest[-1:].isspace() else words.pop()
        try:
            candidates = self.candidates(magic, words, current)
        except Exception:  # a completion that fails must never show the user a traceback on Tab
            return none
        matches = [w for w in candidates.words if w.startswith(current) and w != current]
        if not matches:
            return none
        # IPython replaces its own token (split at ':', '=', ...), which ends our word: complete only that suffix.
        token = context.token if current.endswith(context.token) else current
        cut = len(current) - len(token)
        completions = [SimpleCompletion(text=w[cut:], type=candidates.kind) for w in matches]
        return {"completions": completions, "suppress": True, "ordered": candidates.ordered}

    def candidates(self, magic: str, words: list[str], current: str) -> Candidates:
        """What may come at the position after ``words`` on the line of ``%magic``."""
        if magic in ("train", "train_form"):
            return self._train(words, current)
        if magic == "job":
            return self._job(words, current)
        if magic == "serve":
            return self._serve(words, current)
        if magic == "model":
            return self._model(words)
        if magic == "predict" and not words:
            return Candidates(self._endpoints(), "endpoint")
        return Candidates()

    # -- per magic --------------------------------------------------------------------------------

    def _train(self, words: list[str], current: str) -> Candidates:
        previous = words[-1] if words else ""
        values: dict[str, Callable[[], Sequence[str]]] = {
            "--backend": self._backends,
            "--preset": self._presets,
            "--search": lambda: _SEARCHES,
            "--prune": lambda: _PRUNERS,
        }
        if previous in values and not current.startswith("-"):
            return Candidates(values[previous](), previous.lstrip("-"))
        if current.startswith("-") or not current:
            from .train import TrainMagics

            return Candidates(_flags(TrainMagics.train), "flag")
        return Candidates()

    def _job(self, words: list[str], current: str) -> Candidates:
        if not words:
            return Candidates(JOB_ACTIONS, "action")
        if len(words) == 1 and words[0] in JOB_ACTIONS:
            return Candidates(self._job_ids(), "job", ordered=True)
        if words[0] == "logs" and len(words) >= 2 and (current.startswith("-") or not current):
            return Candidates(("--follow", "--rank"), "flag")
        return Candidates()

    def _serve(self, words: list[str], current: str) -> Candidates:
        if not words:
            return Candidates(("list", "stop", *self._model_uris(current)), "model")
        if words == ["stop"]:
            return Candidates(self._endpoints(), "endpoint")
        if words[-1] == "--backend":
            return Candidates(("local", "kubernetes"), "backend")
        if current.startswith("-"):
            from .serving import ServingMagics

            return Candidates(_flags(ServingMagics.serve), "flag")
        return Candidates()

    def _model(self, words: list[str]) -> Candidates:
        if not words:
            return Candidates(("alias", "load"), "action")
        if words == ["load"]:
            return Candidates(self._model_uris("models:/"), "model")
        if words == ["alias"]:
            return Candidates(sorted(self._registry()), "model")
        if len(words) == 2 and words[0] == "alias":
            return Candidates(self._registry().get(words[1], ([], []))[1], "version")
        return Candidates()

    # -- what the candidates are read from ------------------------------------------------------

    def _service(self) -> Any:
        from .common import service_for

        return service_for(self.shell)

    def _backends(self) -> list[str]:
        from ..backends.base import backends

        return [name for name in backends.names() if name != "pipeline"]  # pipeline steps are not a user's choice

    def _presets(self) -> list[str]:
        from ..k8s.presets import configured_presets

        return sorted(configured_presets(self.shell.config))

    def _job_ids(self) -> list[str]:
        from ..sweeps import job_ids

        return job_ids(self._service())

    def _endpoints(self) -> list[str]:
        from ..serving.manager import ServingManager

        return [e.name for e in ServingManager(self._service().settings).list()]

    def _registry(self) -> dict[str, tuple[list[str], list[str]]]:
        return self.models.get(self._service().settings.tracking_uri)

    def _model_uris(self, current: str) -> list[str]:
        from ..tracking.model_registry import uri_candidates

        return uri_candidates(self._registry(), current)


def _flags(magic: Any) -> list[str]:
    """The long flags of a ``@magic_arguments`` magic, from its own parser."""
    return sorted(option for action in magic.parser._actions for option in action.option_strings
                  if option.startswith("--") and option != "--help")  # fmt: skip


def register(shell: Any) -> MagicCompleter | None:
    """Add the magics' matcher to ``shell``'s completer (once); returns it (``None``: a shell without completer)."""
    if getattr(shell, "Completer", None) is None:
        return None
    completer = getattr(shell, "_jmk_completer", None)
    if completer is None:
        completer = MagicCompleter(shell)
        shell._jmk_completer = completer
        shell.Completer.custom_matchers.append(_as_matcher(completer))
    return completer


def unregister(shell: Any) -> None:
    """Remove the matcher :func:`register` added."""
    completer = shell.__dict__.pop("_jmk_completer", None)
    if completer is not None:
        shell.Completer.custom_matchers[:] = [
            m for m in shell.Completer.custom_matchers if getattr(m, "jmk_completer", None) is not completer
        ]


def _as_matcher(completer: MagicCompleter) -> Any:
    """A function calling ``completer``, marked as a v2 matcher (IPython reads marks set on the function)."""

    def jmk_magics(context: CompletionContext) -> SimpleMatcherResult:
        return completer.matcher(context)

    jmk_magics.jmk_completer = completer  # type: ignore[attr-defined]
    return context_matcher(identifier="jupyter_mlflow_k8s.magics")(jmk_magics)


__all__ = ["Candidates", "MagicCompleter", "register", "unregister"]
