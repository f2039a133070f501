"""A tiny name -> object registry shared by solvers, estimators, quantizers and exporters.

Registered objects carry their own metadata; the registry reads it duck-typed, so one class
serves every kind:

- ``description`` (else the first docstring line): what it is, for CLI help and listings;
- ``requires``: import names of optional dependencies; ``installed()`` lists only the entries
  whose dependencies are importable here (checked with ``find_spec``, nothing is imported).

Aliases (``register(name, aliases=...)``) resolve to the canonical entry in ``get`` but are not
listed by ``names``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from allocator.errors import UnsupportedError

T = TypeVar("T")


def importable(modules: Iterable[str]) -> bool:
    """Whether every module can be imported here (found on the path; nothing is imported)."""
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def describe(obj: Any) -> str:
    """An object's ``description``, else the first line of its docstring."""
    text = getattr(obj, "description", None)
    if isinstance(text, str) and text:
        return text
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry(Generic[T]):
    """Maps names (and aliases) to registered objects; unknown names raise a clear
    UnsupportedError listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: Iterable[str] = ()) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} registered twice")
            self._items[name] = obj
            self._aliases.update(dict.fromkeys(aliases, name))
            return obj

        return decorate

    def canonical(self, name: str) -> str:
        """The registered name of ``name`` (itself, or what the alias stands for)."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = ", ".join(sorted([*self._items, *self._aliases])) or "none"
        raise UnsupportedError(f"unknown {self.kind} {name!r}; choose one of: {known}")

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names (aliases left out), sorted."""
        return sorted(self._items)

    def aliases(self) -> dict[str, str]:
        """Alias -> registered name."""
        return dict(sorted(self._aliases.items()))

    def installed(self) -> list[str]:
        """Registered names whose optional dependencies (``requires``) are importable here."""
        return [n for n in self.names() if importable(getattr(self._items[n], "requires", ()))]

    def description(self, name: str) -> str:
        return describe(self.get(name))

    def help(self, *, installed_only: bool = False) -> str:
        """``name (alias), ...`` for CLI help."""
        by_target: dict[str, list[str]] = {}
        for alias, target in self._aliases.items():
            by_target.setdefault(target, []).append(alias)
        names = self.installed() if installed_only else self.names()
        return ", ".join(
            f"{n} ({', '.join(sorted(by_target[n]))})" if n in by_target else n for n in names
        )

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
