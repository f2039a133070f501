"""CLI options generated from a pydantic settings model, so a command restates no field.

``with_settings(RunSettings)`` turns every field into an option (``--field-name``; booleans as
``--x/--no-x``; ``list[str]`` fields repeatable; ``Literal`` fields list their values) with the field's
description as help and its default, and calls the command with one validated ``settings``
object. A field added to the model appears on the CLI as it is; invalid values are InputErrors
naming the option.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from allocator.errors import InputError

M = TypeVar("M", bound=BaseModel)
_SCALARS = (bool, int, float, str)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(annotation without None, whether None was allowed)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if (origin is typing.Union or origin is types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return annotation, False


def option_parameter(
    name: str, field: FieldInfo, extra_flags: Sequence[str] = ()
) -> inspect.Parameter:
    """A keyword parameter typer reads as the option of one settings field."""
    annotation, optional = _unwrap(field.annotation)
    default = field.get_default(call_default_factory=True)
    help_text = field.description or ""
    kwargs: dict[str, Any] = {"help": help_text, "show_default": default is not None}
    if annotation is bool:
        decls = [f"{flag(name)}/--no-{flag(name)[2:]}", *extra_flags]
        hint: Any = bool | None if optional else bool
    elif typing.get_origin(annotation) is typing.Literal:
        decls = [flag(name), *extra_flags]
        choices = ", ".join(str(v) for v in typing.get_args(annotation))
        kwargs["help"] = f"{help_text} [one of: {choices}]".strip()
        hint = str | None if optional else str
    elif typing.get_origin(annotation) is list and typing.get_args(annotation)[0] is str:
        decls = [flag(name), *extra_flags]
        hint = list[str] | None
    elif annotation in _SCALARS:
        decls = [flag(name), *extra_flags]
        hint = annotation | None if optional else annotation
    else:
        raise TypeError(f"settings field {name}: {field.annotation} has no CLI option type")
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[hint, typer.Option(*decls, **kwargs)],
    )


def _resolved(command: Callable[..., Any], param: inspect.Parameter) -> inspect.Parameter:
    """``param`` with a string annotation (``from __future__ import annotations``) evaluated."""
    if isinstance(param.annotation, str):
        return param.replace(annotation=eval(param.annotation, command.__globals__))
    return param


def with_settings(
    model: type[M], *, extra_flags: Mapping[str, Sequence[str]] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate ``command(settings: model, **other_options)``: the returned function takes every
    field of ``model`` as an option (before ``command``'s own options) and builds ``settings``."""
    fields = model.model_fields
    extra = dict(extra_flags or {})

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [
            _resolved(command, p)
            for n, p in inspect.signature(command).parameters.items()
            if n != "settings"
        ]
        clash = sorted(set(fields) & {p.name for p in own})
        if clash:
            raise TypeError(f"{command.__name__}: options {clash} are also settings fields")
        generated = [option_parameter(n, f, extra.get(n, ())) for n, f in fields.items()]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            chosen = {n: values.pop(n) for n in fields if n in values}
            try:
                settings = model.model_validate(chosen)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{flag(str(e['loc'][0])) if e['loc'] else 'settings'}: {e['msg']}"
                    for e in exc.errors()
                )
                raise InputError(f"{problems}; see --help") from None
            return command(settings=settings, **values)

        parameters = [*generated, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own)]
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
