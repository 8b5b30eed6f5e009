"""``models:/`` URIs: the one parser, printer and set of alias rules of the package.

A :class:`ModelRef` is a registered model's name and one of a version number, ``latest`` or an
alias. MLflow forbids ``/`` and ``:`` in a model name but allows ``@`` and quotes, and an alias is
letters, digits, ``_`` and ``-``: so ``models:/NAME/VERSION`` splits at the only ``/``, and
``models:/NAME@ALIAS`` at the last ``@``. Pure: resolving a reference to a concrete version is
:func:`jupyter_mlflow_k8s.tracking.model_registry.resolve`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import JMKUsageError

SCHEME = "models:/"
URI_FORMS = "models:/NAME@ALIAS or models:/NAME/VERSION (VERSION a number, or latest)"
LATEST = "latest"
_ALIAS_RE = re.compile(r"^[\w-]+$")
_RESERVED_ALIAS_RE = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)
MAX_ALIAS_LENGTH = 255


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: a name and either a version (digits, or ``latest``) or an alias."""

    name: str
    version: str | None = None  # digits, or "latest"
    alias: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``; else a usage error."""
        bad = JMKUsageError(f"{uri!r} is not a registered model's URI. Write {URI_FORMS}.")
        if not isinstance(uri, str) or not uri.startswith(SCHEME):
            raise bad
        rest = uri.removeprefix(SCHEME)
        if "/" in rest:
            name, _, version = rest.partition("/")
            if not name or not (version.isdigit() or version == LATEST):
                raise bad
            return cls(name, version=str(int(version)) if version.isdigit() else version)
        name, at, alias = rest.rpartition("@")
        if not at or not name or not alias:
            raise bad
        return cls(name, alias=alias)

    @classmethod
    def maybe(cls, uri: str) -> ModelRef | None:
        """The reference a ``models:/`` URI makes; ``None`` for another kind of URI (``runs:/``, a path)."""
        return cls.parse(uri) if uri.startswith(SCHEME) else None

    @property
    def uri(self) -> str:
        """The URI again, normalized."""
        return f"{SCHEME}{self.name}@{self.alias}" if self.alias else f"{SCHEME}{self.name}/{self.version}"

    def __str__(self) -> str:
        return self.uri

    @property
    def is_pinned(self) -> bool:
        """Whether the reference names one version for good (a number, not an alias or ``latest``)."""
        return self.version is not None and self.version.isdigit()

    @property
    def selector(self) -> str:
        """What picks the version: the number, ``latest`` or the alias (a label value, ``iris@prod`` -> ``prod``)."""
        return str(self.alias or self.version)

    def pinned(self, version: str | int) -> ModelRef:
        """The same model at one concrete version."""
        return ModelRef(self.name, version=str(int(version)))

    def endpoint_stem(self) -> str:
        """What an endpoint serving it is called before DNS rules: ``iris-prod``, ``iris-v2``, ``iris-latest``."""
        if self.alias:
            return f"{self.name}-{self.alias}"
        return f"{self.name}-v{self.version}" if self.is_pinned else f"{self.name}-{self.version}"


def parse_model_uri(uri: str) -> ModelRef:
    """``ModelRef.parse(uri)``."""
    return ModelRef.parse(uri)


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


def check_version(version: str, name: str) -> str:
    """``version`` if it is a version number (``"3"``); a usage error that says so otherwise."""
    if not str(version).strip().isdigit():
        raise JMKUsageError(f"Version {version!r} of model {name!r}: a version is a number, such as 1.")
    return str(int(str(version).strip()))
