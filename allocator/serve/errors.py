"""One error shape for every answer: ``{"error": message, ...}`` with the library's status codes
(400 input, 422 infeasible with the minimum size, 501 unsupported, 413 over a named limit)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from allocator.errors import AllocatorError, InfeasibleError, UnsupportedError


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


class LimitExceeded(AllocatorError):
    """A request over a configured size limit (413); picklable, so it crosses the pool."""

    def __init__(self, message: str, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


def too_large(what: str, size: int, limit: int, option: str) -> LimitExceeded:
    return LimitExceeded(f"{what} is {size}, over the limit of {limit} ({option})", limit)


def status_for(exc: AllocatorError) -> int:
    if isinstance(exc, LimitExceeded):
        return 413
    if isinstance(exc, InfeasibleError):
        return 422
    if isinstance(exc, UnsupportedError):
        return 501
    return 400


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    body = {"error": message, **{k: v for k, v in extra.items() if v is not None}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, str(exc), **exc.extra)

    @app.exception_handler(InfeasibleError)
    async def _infeasible(_: Request, exc: InfeasibleError) -> JSONResponse:
        return error_response(422, str(exc), min_size_bits=exc.min_size_bits, binding=exc.binding)

    @app.exception_handler(AllocatorError)
    async def _allocator(_: Request, exc: AllocatorError) -> JSONResponse:
        return error_response(status_for(exc), str(exc), limit=getattr(exc, "limit", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid request: " + _describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))
