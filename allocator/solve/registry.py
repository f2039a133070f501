"""Solver backends register here by name and declare which constraint kinds they support."""

from __future__ import annotations

from typing import ClassVar, Protocol

from allocator.errors import UnsupportedError
from allocator.registry import Registry
from allocator.solve.problem import Problem, Solution


class Backend(Protocol):
    """A solver backend. ``supports`` lists constraint kinds from ``Problem.constraint_kinds``."""

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
