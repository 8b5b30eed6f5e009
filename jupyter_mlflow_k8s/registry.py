"""Named registries for swappable parts (backends, storage schemes).

A registry never imports its implementations: built-ins are named as ``"module:attribute"``
strings, imported the first time they are asked for, so the module that defines a base class stays
a leaf. Plugins come from ``importlib.metadata`` entry points. An unknown name raises an error
listing the known ones; a plugin that fails to load warns and is skipped.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any, Generic, TypeVar, cast

from .exceptions import UnknownPlugin

T = TypeVar("T")


def load_reference(reference: str) -> Any:
    """The object that ``"package.module:Name"`` (or ``"package.module:Outer.Name"``) names."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{reference!r} is not 'module:attribute'")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


class Registry(Generic[T]):
    """Name → class (or factory), filled by built-ins and by the entry-point group ``group``.

    ``builtins`` maps names to ``"module:attribute"`` references, resolved on first use.
    """

    def __init__(self, kind: str, group: str, builtins: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._factories: dict[str, T | str] = dict(builtins or {})
        self._plugins_loaded = False

    def register(self, name: str, factory: T | str) -> None:
        """Add or replace ``name``: the factory itself, or a ``"module:attribute"`` reference to it."""
        self._factories[name] = factory

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points  # 20 ms: only when a plugin may be needed

        for ep in entry_points(group=self.group):
            if ep.name in self._factories:
                continue
            try:
                self._factories[ep.name] = ep.load()
            except Exception as exc:  # a broken plugin must not break the built-ins
                warnings.warn(f"Could not load {self.kind} plugin {ep.name!r} ({ep.value}): {exc}", stacklevel=2)

    def names(self) -> list[str]:
        """Every known name, plugins included."""
        self._load_plugins()
        return sorted(self._factories)

    def get(self, name: str) -> T:
        """What is registered as ``name`` (a built-in's module is imported now)."""
        if name not in self._factories:
            self._load_plugins()
        try:
            found = self._factories[name]
        except KeyError:
            raise UnknownPlugin(self.kind, name, sorted(self._factories)) from None
        if isinstance(found, str):
            found = self._factories[name] = load_reference(found)
        return cast(T, found)
