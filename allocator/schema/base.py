"""The base of every schema class: pydantic models whose validation errors are ``SchemaError``.

Building a schema object from bad fields (``Option(bits=9)``, ``SensitivityTable.model_validate
(data)``, ``Plan.model_validate_json(text)``) raises ``allocator.errors.SchemaError``, an
``InputError`` and so both an ``AllocatorError`` and a ``ValueError``, with one line per problem
(field path, value, what is wrong). Nested validation inside pydantic (FastAPI request bodies,
``TypeAdapter``) is untouched: the wrapping happens only at the public entry points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ValidationError
from pydantic._internal._model_construction import ModelMetaclass

from allocator.errors import SchemaError
from allocator.patterns import shown

MAX_SHOWN_ERRORS = 5


def describe_errors(errors: Sequence[Mapping[str, Any]], source: str) -> str:
    """One readable line per problem: where (source and field path), what value, what is wrong."""
    lines = []
    for err in errors[:MAX_SHOWN_ERRORS]:
        loc = shown(".".join(str(p) for p in err["loc"]), 200)[1:-1] or "(top level)"
        value = err.get("input")
        value_text = shown(value) if not isinstance(value, dict | list) else type(value).__name__
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing; add it"
        if not err["loc"]:  # a whole-object check: its message names the fields
            lines.append(f"{source}: {msg}")
        else:
            lines.append(f"{source}: field '{loc}' = {value_text}: {msg}")
    more = len(errors) - MAX_SHOWN_ERRORS
    if more > 0:
        lines.append(f"... and {more} more problems")
    return "\n".join(lines)


def schema_error(exc: ValidationError, model: str) -> SchemaError:
    errors: list[dict[str, Any]] = [dict(e) for e in exc.errors(include_url=False)]
    for err in errors:
        err.pop("ctx", None)  # may hold the raw exception object
    return SchemaError(describe_errors(errors, model), model=model, errors=errors)


class _WrappingMeta(ModelMetaclass):
    """``Model(...)`` raises SchemaError instead of pydantic's ValidationError."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise schema_error(exc, cls.__name__) from None


if TYPE_CHECKING:  # type checkers see plain pydantic models, with their typed __init__
    _Base = BaseModel
else:

    class _Base(BaseModel, metaclass=_WrappingMeta):
        pass


class SchemaModel(_Base):
    """A pydantic model whose constructors raise ``SchemaError`` (see the module docstring)."""

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise schema_error(exc, cls.__name__) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            raise schema_error(exc, cls.__name__) from None
