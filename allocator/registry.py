"""A tiny name -> object registry shared by solvers, estimators, quantizers and exporters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from allocator.errors import UnsupportedError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to registered objects; unknown names raise a clear UnsupportedError."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise UnsupportedError(f"unknown {self.kind} {name!r}; choose one of: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
