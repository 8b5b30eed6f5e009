"""Named registries for swappable parts (backends, storage schemes, engines).

Built-ins register in code; plugins come from ``importlib.metadata`` entry points. An unknown
name raises an error listing the known ones; a plugin that fails to load warns and is skipped.
"""

from __future__ import annotations

import warnings
from typing import Generic, TypeVar

from .exceptions import UnknownPlugin

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → class (or factory), filled by built-ins and by the entry-point group ``group``."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._factories: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str, factory: T) -> None:
        """Add or replace ``name``."""
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
        """What is registered as ``name``."""
        if name not in self._factories:
            self._load_plugins()
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownPlugin(self.kind, name, sorted(self._factories)) from None
