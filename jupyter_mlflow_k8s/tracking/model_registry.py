"""The MLflow model registry, for every front door: models, versions, aliases, resolving a ``models:/`` URI.

Every function takes the tracking URI (``None``: MLflow's default, as the inference server uses)
and returns MLflow's own entities (``RegisteredModel``, ``ModelVersion``), read-only. A model,
version or alias that does not exist is a :class:`~jupyter_mlflow_k8s.errors.NotFoundError` that
names what does exist; a tracking server that does not answer an
:class:`~jupyter_mlflow_k8s.errors.UnavailableError`. No filter string is built from a name that
could break it (a model name may hold quotes). Registering a model from inside a job is
:mod:`.registry`.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from ..errors import NotFoundError
from .refs import LATEST, ModelRef, check_version
from .store import client, import_mlflow, mlflow_errors, pages, resolved_uri

MAX_LISTED = 10


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


# -- models ----------------------------------------------------------------------------------------


def registered_models(tracking_uri: str | None) -> list[Any]:
    """Every registered model (with its latest versions, aliases and tags)."""
    mlflow_client = client(tracking_uri)
    with mlflow_errors(tracking_uri):
        return list(pages(mlflow_client.search_registered_models, max_results=1000))


def model_names(tracking_uri: str | None) -> list[str]:
    """Every registered model's name, sorted."""
    return sorted(m.name for m in registered_models(tracking_uri))


def registered_model(tracking_uri: str | None, name: str) -> Any:
    """The registered model ``name``; :class:`NotFoundError` listing the known ones otherwise."""
    mlflow_client = client(tracking_uri)
    try:
        with mlflow_errors(tracking_uri):
            return mlflow_client.get_registered_model(name)
    except NotFoundError:
        pass  # said below, with what exists
    known = model_names(tracking_uri)
    raise NotFoundError(
        f"No registered model {name!r}. Registered models: {_listed(known) or 'none yet'}. "
        "Register one with %%train --register NAME or mlflow.register_model('runs:/RUN_ID/model', NAME)."
    ) from None


# -- versions --------------------------------------------------------------------------------------


def _name_filter(name: str) -> str | None:
    """MLflow's filter for one model's versions, or ``None`` when the name holds both kinds of quote.

    MLflow's filter syntax has no escapes: a name is quoted with the quote it does not contain.
    """
    if "'" not in name:
        return f"name = '{name}'"
    if '"' not in name:
        return f'name = "{name}"'
    return None


def model_versions(tracking_uri: str | None, name: str) -> list[Any]:
    """Every version of model ``name``, newest first (empty for an unknown model)."""
    mlflow_client = client(tracking_uri)
    query = _name_filter(name)
    with mlflow_errors(tracking_uri):
        if query is not None:
            found = list(pages(mlflow_client.search_model_versions, filter_string=query, max_results=10000))
        else:  # no filter can name it: look through every version
            found = [v for v in pages(mlflow_client.search_model_versions, max_results=10000) if v.name == name]
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def all_model_versions(tracking_uri: str | None) -> dict[str, list[Any]]:
    """Every version of every model, by model name, newest first."""
    mlflow_client = client(tracking_uri)
    versions: dict[str, list[Any]] = {}
    with mlflow_errors(tracking_uri):
        for v in pages(mlflow_client.search_model_versions, max_results=10000):
            versions.setdefault(v.name, []).append(v)
    for found in versions.values():
        found.sort(key=lambda v: int(v.version), reverse=True)
    return versions


def describe(tracking_uri: str | None, name: str) -> str:
    """``versions 1, 2 and aliases prod`` of a model, for an error message ('' when it has none or is unknown)."""
    try:
        versions = [str(v.version) for v in reversed(model_versions(tracking_uri, name))]
        aliases = sorted(registered_model(tracking_uri, name).aliases or {})
    except NotFoundError:
        return ""
    if not versions:
        return ""
    return f"versions {', '.join(versions)}" + (f" and aliases {', '.join(aliases)}" if aliases else "")


def model_version(tracking_uri: str | None, name: str, version: str) -> Any:
    """Version ``version`` (a number, or ``latest``: the highest) of model ``name``; both must exist."""
    registered_model(tracking_uri, name)
    if version == LATEST:
        versions = model_versions(tracking_uri, name)
        if not versions:
            raise NotFoundError(f"Model {name!r} has no versions yet. Register one first.")
        return versions[0]
    version = check_version(version, name)
    mlflow_client = client(tracking_uri)
    try:
        with mlflow_errors(tracking_uri):
            return mlflow_client.get_model_version(name, version)
    except NotFoundError:
        pass  # said below, with what exists
    known = ", ".join(str(v.version) for v in reversed(model_versions(tracking_uri, name)))
    raise NotFoundError(f"Model {name!r} has no version {version}. Versions: {known or 'none yet'}.") from None


def version_by_alias(tracking_uri: str | None, name: str, alias: str) -> Any:
    """The version that ``name@alias`` points at; :class:`NotFoundError` listing the model's aliases otherwise."""
    model = registered_model(tracking_uri, name)
    aliases = dict(model.aliases or {})
    if alias not in aliases:
        known = ", ".join(f"{a} → {v}" for a, v in sorted(aliases.items()))
        raise NotFoundError(
            f"Model {name!r} has no alias {alias!r}. Aliases: {known or 'none yet'}. "
            f"Set one with %model alias {name} VERSION {alias}."
        )
    return model_version(tracking_uri, name, str(aliases[alias]))


def resolve(ref: ModelRef | str, tracking_uri: str | None = None) -> Any:
    """The model version a reference (or ``models:/`` URI) names: alias → its version, ``latest`` → the highest."""
    ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
    if ref.alias:
        return version_by_alias(tracking_uri, ref.name, ref.alias)
    assert ref.version is not None
    return model_version(tracking_uri, ref.name, ref.version)


def pin(ref: ModelRef | str, tracking_uri: str | None = None) -> ModelRef:
    """The reference at the concrete version it names now."""
    ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
    return ref if ref.is_pinned else ref.pinned(resolve(ref, tracking_uri).version)


def resolve_alias(model_uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` pinned to the version the alias names now; other URIs as they are.

    Every replica of an endpoint then serves the same version, whatever the alias later points to.
    (``models:/NAME/latest`` is left as it is, as deploying always did; :func:`pin` pins it too.)
    """
    ref = ModelRef.maybe(model_uri)
    return model_uri if ref is None or not ref.alias else pin(ref, tracking_uri).uri


# -- aliases ---------------------------------------------------------------------------------------


def set_alias(tracking_uri: str | None, name: str, alias: str, version: str) -> str | None:
    """Point ``alias`` of model ``name`` at ``version`` (which must exist); returns the version it pointed at before."""
    before = (registered_model(tracking_uri, name).aliases or {}).get(alias)
    found = model_version(tracking_uri, name, version)
    with mlflow_errors(tracking_uri):
        client(tracking_uri).set_registered_model_alias(name, alias, str(found.version))
    return None if before is None else str(before)


def delete_alias(tracking_uri: str | None, name: str, alias: str) -> None:
    """Remove ``alias`` from model ``name``; :class:`NotFoundError` naming its aliases when it has no such alias."""
    model = registered_model(tracking_uri, name)
    if alias not in (model.aliases or {}):
        known = ", ".join(sorted(model.aliases or {})) or "none"
        raise NotFoundError(f"Model {name!r} has no alias {alias!r}. Its aliases: {known}.")
    with mlflow_errors(tracking_uri):
        client(tracking_uri).delete_registered_model_alias(name, alias)


# -- loading ---------------------------------------------------------------------------------------


def download_uri(tracking_uri: str | None, version: Any) -> str:
    """Where a model version's files are (its artifact location)."""
    with mlflow_errors(tracking_uri):
        return str(client(tracking_uri).get_model_version_download_uri(version.name, version.version))


def load_pyfunc(tracking_uri: str | None, version: Any) -> Any:
    """A model version's files downloaded from ``tracking_uri`` (not MLflow's global one), loaded as pyfunc."""
    import mlflow.artifacts
    import mlflow.pyfunc

    source = download_uri(tracking_uri, version)
    with mlflow_errors(tracking_uri):
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=resolved_uri(tracking_uri))
    return mlflow.pyfunc.load_model(local)


# -- names for completion -------------------------------------------------------------------------


class ModelNames:
    """Registered model names with their aliases and versions, for Tab completion: cached, never blocking long.

    A local store (SQLite, files) is read in the caller's thread; a tracking server over HTTP in a
    thread of its own, waited for ``wait`` seconds: a server that does not answer gives no names
    now, and the answer when it comes is kept for the next Tab. Failures give no names, never an
    error. Names are kept ``ttl`` seconds.
    """

    def __init__(self, ttl: float = 30.0, wait: float = 1.5) -> None:
        self.ttl = ttl
        self.wait = wait
        self._fetched: dict[str, tuple[float, dict[str, tuple[list[str], list[str]]]]] = {}
        self._pending: dict[str, threading.Thread] = {}

    def get(self, tracking_uri: str) -> dict[str, tuple[list[str], list[str]]]:
        """``{name: (aliases, versions)}``; ``{}`` while the registry has not answered."""
        cached = self._fetched.get(tracking_uri)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        if not tracking_uri.startswith(("http://", "https://", "databricks")):
            self._fetch(tracking_uri)  # in the foreground: MLflow is never imported off the main thread here
        else:
            import_mlflow()  # in the foreground: the thread below must not be the first to import MLflow
            pending = self._pending.get(tracking_uri)
            if pending is None or not pending.is_alive():
                pending = threading.Thread(target=self._fetch, args=(tracking_uri,), daemon=True,
                                           name="jmk-model-names")  # fmt: skip
                self._pending[tracking_uri] = pending
                pending.start()
            pending.join(self.wait)
        cached = self._fetched.get(tracking_uri)
        return cached[1] if cached is not None else {}

    def _fetch(self, tracking_uri: str) -> None:
        try:
            models = registered_models(tracking_uri)
        except Exception:  # completion never raises: a registry that fails has no names to offer
            return
        names = {}
        for model in models:
            aliases = sorted(getattr(model, "aliases", None) or {})
            versions = sorted({str(v.version) for v in getattr(model, "latest_versions", None) or []}, key=int)
            names[model.name] = (aliases, versions)
        self._fetched[tracking_uri] = (time.monotonic(), names)


def uri_candidates(names: dict[str, tuple[list[str], list[str]]], typed: str) -> list[str]:
    """The ``models:/`` URIs that may complete ``typed``: names; ``@alias`` and ``/version`` after a name."""
    if not ("models:/".startswith(typed) or typed.startswith("models:/")):
        return []
    rest = typed.removeprefix("models:/")
    name = re.split(r"[@/]", rest, maxsplit=1)[0]
    if name in names and rest != name:
        aliases, versions = names[name]
        return [f"models:/{name}@{a}" for a in aliases] + [f"models:/{name}/{v}" for v in [*versions, LATEST]]
    return [f"models:/{n}" for n in sorted(names)] or ["models:/"]
