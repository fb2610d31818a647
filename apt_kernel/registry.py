"""The component registry: kind -> name -> (factory, owning plugin)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import DuplicateComponentError
from .kinds import KINDS


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    factory: Callable[[dict, Any], Any]
    plugin: str
    distribution: str | None
    summary: str = ""

    @property
    def owner(self) -> str:
        return self.distribution or self.plugin


class Registry:
    def __init__(self) -> None:
        self._items: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}

    def add(self, registration: Registration) -> None:
        existing = self._items[registration.kind].get(registration.name)
        if existing is not None and existing.plugin != registration.plugin:
            raise DuplicateComponentError(registration.kind, registration.name, existing.owner, registration.owner,
                                          disable=registration.plugin)
        self._items[registration.kind][registration.name] = registration

    def get(self, kind: str, name: str) -> Registration | None:
        return self._items[kind].get(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def remove_plugin(self, plugin: str) -> None:
        for table in self._items.values():
            for name in [n for n, r in table.items() if r.plugin == plugin]:
                del table[name]

