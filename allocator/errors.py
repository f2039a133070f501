"""Exception types for errors a user can cause, each with its own CLI exit code.

Messages name the file or field, the offending value and the fix.
"""

from __future__ import annotations


class AllocatorError(Exception):
    """Base class of every error a user can cause; never a bug of ours."""

    exit_code = 2


class InputError(AllocatorError):
    """A file, field or argument is malformed, unknown or out of range."""

    exit_code = 2


class InfeasibleError(AllocatorError):
    """No plan satisfies the constraints (for example the budget is below the minimum size)."""

    exit_code = 3

    def __init__(
        self, message: str, *, min_size_bits: float | None = None, binding: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.min_size_bits = min_size_bits
        self.binding = binding or []


class UnsupportedError(AllocatorError):
    """A backend, estimator, exporter or device cannot do what was asked."""

    exit_code = 4


class PlanCheckError(AllocatorError):
    """A plan violates its constraints or does not match its table or model."""

    exit_code = 5


INTERNAL_ERROR_EXIT_CODE = 70
