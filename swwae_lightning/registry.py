"""Named, registered components (poolings, loss terms, datasets): a new one is ``REGISTRY.register(item)``,
as a class decorator for a class."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> component. Lookup of an unknown name is a ValueError that lists the known ones."""

    def __init__(self, kind: str, on_register: Callable[[str, T], None] | None = None):
        self.kind, self._items, self._on_register = kind, {}, on_register

    def register(self, item: T) -> T:
        """Registers ``item`` under its ``name`` attribute (again is fine for an equal item); returns it."""
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty class attribute 'name'")
        if name in self._items and self._items[name] != item:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        if self._on_register:
            self._on_register(name, item)
        return item

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())

    def names(self) -> list[str]:
        return list(self._items)
