"""Exception types for errors a user can cause, each with its own CLI exit code.

Messages name the file or field, the offending value and the fix. Catching ``AllocatorError``
catches every error a user can cause through the Python API or the CLI; ``InputError`` (and so
``SchemaError``, raised when a schema object is built from bad fields) is also a ``ValueError``.
"""

from __future__ import annotations


class AllocatorError(Exception):
    """Base class of every error a user can cause; never a bug of ours."""

    exit_code = 2


class InputError(AllocatorError, ValueError):
    """A file, field or argument is malformed, unknown or out of range."""

    exit_code = 2


class SchemaError(InputError):
    """A schema object (Option, SensitivityTable, Constraints, Plan...) was built from invalid
    fields. ``errors`` holds one dict per problem (``loc``, ``msg``, ``type``, ``input``) as
    pydantic reports them; the message has one line per problem."""

    def __init__(
        self, message: str, *, model: str = "", errors: list[dict[str, object]] | None = None
    ) -> None:
        super().__init__(message)
        self.model = model
        self.errors = errors or []


class AllocatorWarning(UserWarning):
    """Something worth knowing that is not an error (e.g. a rule pattern matching no unit)."""


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
