"""``%models`` and ``%model alias|load``: the MLflow model registry from a notebook.

The magics parse, call MLflow's client on the configured tracking URI, and print or return.
Registry mistakes (an unknown model, version or alias, a malformed URI) become usage errors
that name what exists and what to type instead.
"""

from __future__ import annotations

import keyword
import re
import shlex
import time
from dataclasses import dataclass
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from ..exceptions import JMKUsageError
from ..widgets.table import Table
from .common import service_for, user_errors

MODEL_USAGE = """Usage:
  %model alias NAME VERSION ALIAS            point models:/NAME@ALIAS at version VERSION
  %model load models:/NAME@ALIAS [--as VAR]  load a model into VAR (default: NAME as an identifier)
  %model load models:/NAME/VERSION [--as VAR]"""
URI_FORMS = "models:/NAME@ALIAS or models:/NAME/VERSION (VERSION a number, or latest)"
_ALIAS_RE = re.compile(r"^[\w-]+$")
_RESERVED_ALIAS_RE = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)
MAX_ALIAS_LENGTH = 255


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: a name and either a version or an alias."""

    name: str
    version: str | None = None  # digits, or "latest"
    alias: str | None = None

    @property
    def uri(self) -> str:
        """The URI again, normalized."""
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; anything else is a usage error."""
    bad = JMKUsageError(f"{uri!r} is not a model URI this magic loads. Write {URI_FORMS}.")
    if not uri.startswith("models:/"):
        raise bad
    rest = uri.removeprefix("models:/")
    if "/" in rest:
        name, _, version = rest.partition("/")
        if not name or not (version.isdigit() or version == "latest"):
            raise bad
        return ModelRef(name, version=version)
    name, at, alias = rest.rpartition("@")
    if not at or not name or not alias:
        raise bad
    return ModelRef(name, alias=alias)


def check_alias(alias: str) -> None:
    """MLflow's alias rules, said before MLflow says them less clearly."""
    if not _ALIAS_RE.match(alias) or len(alias) > MAX_ALIAS_LENGTH:
        raise JMKUsageError(
            f"Alias {alias!r}: use letters, digits, _ and - only (at most {MAX_ALIAS_LENGTH}), "
            "such as champion or staging-2."
        )
    if _RESERVED_ALIAS_RE.match(alias):
        raise JMKUsageError(
            f"Alias {alias!r} is reserved by MLflow (latest and v<number> name versions already). Pick another."
        )


def variable_name(model_name: str) -> str:
    """A Python identifier from a model name: ``iris-clf`` → ``iris_clf``, ``2x`` → ``model_2x``."""
    name = re.sub(r"\W", "_", model_name) or "model"
    if not (name[0].isalpha() or name[0] == "_"):
        name = f"model_{name}"
    return f"{name}_" if keyword.iskeyword(name) else name


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _versions_filter(name: str) -> str:
    quote = '"' if "'" in name else "'"
    return f"name = {quote}{name}{quote}"


class Registry:
    """Lookups on one MLflow client that fail with the user's words."""

    def __init__(self, mlflow_client: Any, tracking_uri: str) -> None:
        self.client = mlflow_client
        self.tracking_uri = tracking_uri

    def model_names(self) -> list[str]:
        """Every registered model's name, sorted."""
        return sorted(m.name for m in self.client.search_registered_models(max_results=1000))

    def model(self, name: str) -> Any:
        """The registered model ``name``; an unknown name lists the known ones."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
        known = self.model_names()
        listed = ", ".join(known[:10]) + (f", ... ({len(known)} in all)" if len(known) > 10 else "")
        raise JMKUsageError(
            f"No registered model {name!r}. Registered models: {listed or 'none yet'}. "
            "Register one with mlflow.register_model('runs:/RUN_ID/model', NAME); %models lists them."
        ) from None

    def versions(self, name: str) -> list[Any]:
        """The versions of model ``name``, newest first."""
        found = self.client.search_model_versions(_versions_filter(name), max_results=10000)
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    def version(self, name: str, version: str) -> Any:
        """Version ``version`` (a number or ``latest``) of model ``name``, which must exist."""
        from mlflow.exceptions import MlflowException

        self.model(name)
        if version == "latest":
            versions = self.versions(name)
            if not versions:
                raise JMKUsageError(f"Model {name!r} has no versions yet.")
            return versions[0]
        if not version.isdigit():
            raise JMKUsageError(f"Version {version!r} of model {name!r}: a version is a number, such as 1.")
        try:
            return self.client.get_model_version(name, version)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
        known = ", ".join(str(v.version) for v in reversed(self.versions(name)))
        raise JMKUsageError(f"Model {name!r} has no version {version}. Versions: {known or 'none yet'}.") from None

    def by_alias(self, name: str, alias: str) -> Any:
        """The version that ``name@alias`` points at; an unknown alias lists the model's aliases."""
        model = self.model(name)
        if alias not in model.aliases:
            known = ", ".join(f"{a} → {v}" for a, v in sorted(model.aliases.items()))
            raise JMKUsageError(
                f"Model {name!r} has no alias {alias!r}. Aliases: {known or 'none yet'}. "
                f"Set one with %model alias {name} VERSION {alias}."
            )
        return self.client.get_model_version(name, model.aliases[alias])

    def resolve(self, ref: ModelRef) -> Any:
        """The model version a ``models:/`` URI names."""
        if ref.alias:
            return self.by_alias(ref.name, ref.alias)
        assert ref.version is not None
        return self.version(ref.name, ref.version)

    def load(self, model_version: Any) -> Any:
        """Download a model version's files from this tracking URI and load them as a pyfunc model."""
        import mlflow.artifacts
        import mlflow.pyfunc

        source = self.client.get_model_version_download_uri(model_version.name, model_version.version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=self.tracking_uri)
        return mlflow.pyfunc.load_model(local)


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

    def _registry(self) -> Registry:
        from ..tracking import client

        uri = service_for(self.shell).settings.tracking_uri
        return Registry(client(uri), uri)

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
        words = shlex.split(line)
        if len(words) > 1:
            raise JMKUsageError("%models takes at most one model name: %models or %models NAME.")
        registry = self._registry()
        if words:
            models = [registry.model(words[0])]
        else:
            models = list(registry.client.search_registered_models(max_results=1000))
        versions: dict[str, list[Any]] = {}
        if len(models) == 1:
            versions[models[0].name] = registry.versions(models[0].name)
        elif models:
            for v in registry.client.search_model_versions(max_results=10000):
                versions.setdefault(v.name, []).append(v)
            for found in versions.values():
                found.sort(key=lambda v: int(v.version), reverse=True)
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
        words = shlex.split(line)
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
        registry = self._registry()
        model_version = registry.version(name, version)
        before = registry.model(name).aliases.get(alias)
        registry.client.set_registered_model_alias(name, alias, model_version.version)
        if before is None:
            was = "new alias"
        elif str(before) == str(model_version.version):
            was = "unchanged"
        else:
            was = f"was version {before}"
        print(f"[jmk] models:/{name}@{alias} → version {model_version.version} ({was})")

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
        registry = self._registry()
        model_version = registry.resolve(ref)
        model = registry.load(model_version)
        name = var or variable_name(ref.name)
        assert self.shell is not None
        self.shell.user_ns[name] = model
        run = f", run {model_version.run_id}" if model_version.run_id else ""
        print(f"[jmk] loaded {ref.uri} (version {model_version.version}{run}) into {name}")
        return model


__all__ = ["ModelRef", "ModelTable", "RegistryMagics", "check_alias", "parse_model_uri", "variable_name"]
