"""``%models`` and ``%model alias|load``: the MLflow model registry from a notebook.

The magics parse, call the tracking facade (:mod:`jupyter_mlflow_k8s.tracking.model_registry`) on
the configured tracking URI, and print or return. Registry mistakes (an unknown model, version or
alias, a malformed URI) become usage errors that name what exists and what to type instead.
"""

from __future__ import annotations

import keyword
import re
import time
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from ..exceptions import JMKUsageError
from ..tracking import model_registry
from ..tracking.refs import URI_FORMS, ModelRef, check_alias, parse_model_uri
from ..widgets.table import Table
from .common import service_for, split_words, user_errors

MODEL_USAGE = """Usage:
  %model alias NAME VERSION ALIAS            point models:/NAME@ALIAS at version VERSION
  %model load models:/NAME@ALIAS [--as VAR]  load a model into VAR (default: NAME as an identifier)
  %model load models:/NAME/VERSION [--as VAR]"""


def variable_name(model_name: str) -> str:
    """A Python identifier from a model name: ``iris-clf`` → ``iris_clf``, ``2x`` → ``model_2x``."""
    name = re.sub(r"\W", "_", model_name) or "model"
    if not (name[0].isalpha() or name[0] == "_"):
        name = f"model_{name}"
    return f"{name}_" if keyword.iskeyword(name) else name


def _created(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""


class ModelTable(Table):
    """``%models`` output: one row per model version, text in terminals and an HTML table in notebooks."""

    columns = ("model", "version", "aliases", "run id", "created")
    css_class = "jmk-ModelTable"

    def __init__(self, models: list[Any], versions: dict[str, list[Any]], empty_message: str) -> None:
        super().__init__()
        self.empty_message = empty_message
        for model in sorted(models, key=lambda m: m.name):
            aliases: dict[str, list[str]] = {}
            for alias, version in sorted(model.aliases.items()):
                aliases.setdefault(str(version), []).append(alias)
            for v in versions.get(model.name, []):
                self.rows.append(
                    (
                        model.name,
                        str(v.version),
                        ", ".join(aliases.get(str(v.version), [])),
                        v.run_id or "",
                        _created(v.creation_timestamp),
                    )
                )
            if not versions.get(model.name):
                self.rows.append((model.name, "", "", "", _created(model.creation_timestamp)))


@magics_class
class RegistryMagics(Magics):
    """``%models`` and ``%model``."""

    def _tracking_uri(self) -> str:
        return service_for(self.shell).settings.tracking_uri

    @line_magic
    @user_errors
    def models(self, line: str = "") -> ModelTable:
        """List registered models: each version with its aliases, the run it came from, and when.

        ``%models NAME`` lists the versions of one model.

        Examples
        --------
        ::

            %models
            %models iris-classifier
        """
        words = split_words(line)
        if len(words) > 1:
            raise JMKUsageError("%models takes at most one model name: %models or %models NAME.")
        uri = self._tracking_uri()
        models = [model_registry.registered_model(uri, words[0])] if words else model_registry.registered_models(uri)
        versions: dict[str, list[Any]] = {}
        if len(models) == 1:
            versions[models[0].name] = model_registry.model_versions(uri, models[0].name)
        elif models:
            versions = model_registry.all_model_versions(uri)
        return ModelTable(
            models, versions, "No registered models yet. Register one with mlflow.register_model(MODEL_URI, NAME)."
        )

    @line_magic
    @user_errors
    def model(self, line: str) -> Any:
        """Point an alias at a model version, or load a registered model into the notebook.

        ``alias NAME VERSION ALIAS`` sets ``models:/NAME@ALIAS`` to version VERSION (moving the
        alias if another version had it). ``load URI [--as VAR]`` loads the model with
        ``mlflow.pyfunc.load_model`` into the variable VAR (default: the model's name made an
        identifier, ``iris-clf`` → ``iris_clf``) and returns it. URI is ``models:/NAME@ALIAS``
        or ``models:/NAME/VERSION`` (VERSION a number, or ``latest``).

        Examples
        --------
        ::

            %model alias iris-clf 3 champion
            %model load models:/iris-clf@champion
            %model load models:/iris-clf/2 --as baseline
            baseline.predict(X_test)
        """
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        words = split_words(line)
        if not words or words[0] not in ("alias", "load"):
            raise JMKUsageError(MODEL_USAGE)
        if words[0] == "alias":
            self._alias(words[1:])
            return None
        return self._load(words[1:])

    def _alias(self, words: list[str]) -> None:
        if len(words) != 3:
            raise JMKUsageError(
                f"%model alias takes NAME VERSION ALIAS, such as %model alias iris 3 champion.\n{MODEL_USAGE}"
            )
        name, version, alias = words
        if not (version.isdigit() or version == "latest"):
            raise JMKUsageError(
                f"%model alias {name} {version} {alias}: VERSION is a number, such as 3, or latest."
            )
        check_alias(alias)
        uri = self._tracking_uri()
        model_version = model_registry.model_version(uri, name, version)
        before = model_registry.set_alias(uri, name, alias, str(model_version.version))
        if before is None:
            was = "new alias"
        elif before == str(model_version.version):
            was = "unchanged"
        else:
            was = f"was version {before}"
        print(f"[jmk] {ModelRef(name, alias=alias).uri} → version {model_version.version} ({was})")

    def _load(self, words: list[str]) -> Any:
        uri, var = None, None
        rest = list(words)
        while rest:
            word = rest.pop(0)
            if word == "--as" and rest:
                var = rest.pop(0)
            elif word.startswith("--as="):
                var = word.removeprefix("--as=")
            elif uri is None and not word.startswith("-"):
                uri = word
            else:
                raise JMKUsageError(f"%model load does not take {word!r}.\n{MODEL_USAGE}")
        if uri is None:
            raise JMKUsageError(f"%model load needs a model URI: {URI_FORMS}.")
        ref = parse_model_uri(uri)
        if var is not None and (not var.isidentifier() or keyword.iskeyword(var)):
            raise JMKUsageError(f"--as {var!r} is not a Python variable name. Write it as --as model_v2.")
        uri = self._tracking_uri()
        model_version = model_registry.resolve(ref, uri)
        model = model_registry.load_pyfunc(uri, model_version)
        name = var or variable_name(ref.name)
        assert self.shell is not None
        self.shell.user_ns[name] = model
        run = f", run {model_version.run_id}" if model_version.run_id else ""
        print(f"[jmk] loaded {ref.uri} (version {model_version.version}{run}) into {name}")
        return model


__all__ = ["ModelTable", "RegistryMagics", "variable_name"]
