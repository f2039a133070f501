"""Solver backends register here by name and declare their metadata: ``supports`` (constraint
kinds), ``exact`` (proves optimality), the docstring's first line (description), optional
``requires`` (import names of optional dependencies) and aliases (``register(name, aliases=...)``).
``allocator solvers``, the service's ``/v1/solvers`` and the tests read this registry."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from allocator.errors import UnsupportedError
from allocator.registry import Registry, describe, importable
from allocator.solve.problem import Problem, Solution


class Backend(Protocol):
    """A solver backend. ``supports`` lists constraint kinds from ``Problem.constraint_kinds``;
    a backend may also declare ``requires: ClassVar[tuple[str, ...]]``."""

    name: ClassVar[str]
    supports: ClassVar[frozenset[str]]
    exact: ClassVar[bool]

    def solve(
        self, problem: Problem, *, time_limit: float | None = None, mip_gap: float = 0.0
    ) -> Solution: ...


BACKENDS: Registry[type[Backend]] = Registry("solver")


def check_supported(backend: type[Backend], problem: Problem) -> None:
    """Refuse clearly when a backend cannot handle a constraint kind the problem has."""
    unsupported = problem.constraint_kinds() - set(backend.supports)
    if unsupported:
        capable = [
            n
            for n in BACKENDS.names()
            if problem.constraint_kinds() <= set(BACKENDS.get(n).supports)
        ]
        raise UnsupportedError(
            f"solver {backend.name!r} does not support {sorted(unsupported)} constraints; "
            f"use one of: {', '.join(capable) or 'none'}"
        )


def solver_table() -> list[dict[str, Any]]:
    """Every registered backend with its metadata (``installed``: its dependencies import here)."""
    from allocator.solve import backends

    backends.load_all()
    aliases: dict[str, list[str]] = {}
    for alias, name in BACKENDS.aliases().items():
        aliases.setdefault(name, []).append(alias)
    rows = []
    for name in BACKENDS.names():
        backend = BACKENDS.get(name)
        rows.append(
            {
                "name": name,
                "aliases": aliases.get(name, []),
                "description": describe(backend),
                "exact": bool(backend.exact),
                "supports": sorted(backend.supports),
                "installed": importable(getattr(backend, "requires", ())),
            }
        )
    return rows


def installed_solvers() -> list[str]:
    """Names of the registered backends whose dependencies are installed here."""
    from allocator.solve import backends

    backends.load_all()
    return BACKENDS.installed()
