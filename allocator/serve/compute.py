"""The CPU-bound work behind the synchronous endpoints, as plain functions a process pool can run
(``Pool``); with ``workers=0`` they run on threads instead (tests, tiny deployments)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel

from allocator.schema.plan import Plan
from allocator.serve.models import CheckRequest, CheckResponse, ParetoRequest, SolveRequest

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def do_solve(request: SolveRequest) -> Plan:
    from allocator.solve.api import solve

    return solve(
        request.table, request.constraints, solver=request.solver,
        time_limit=request.time_limit, mip_gap=request.mip_gap,
    )  # fmt: skip


def do_check(request: CheckRequest) -> CheckResponse:
    from allocator.solve.checker import check_plan

    violations = check_plan(request.plan, request.table, request.constraints)
    return CheckResponse(ok=not violations, violations=violations)


def do_pareto(request: ParetoRequest, progress: bool = False) -> list[Any]:
    from allocator.solve.pareto import sweep

    return sweep(
        request.table, request.constraints, request.budgets, solver=request.solver,
        time_limit=request.time_limit, mip_gap=request.mip_gap, progress=progress,
    )  # fmt: skip


def _parse(model: type[M], raw: bytes, max_cells: int) -> M:
    """Validate a request body (an InputError naming the fields when it is wrong)."""
    from pydantic import ValidationError

    from allocator.errors import InputError
    from allocator.schema.io import describe_validation_error
    from allocator.serve.limits import check_table

    try:
        request = model.model_validate_json(raw)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, "request")) from None
    check_table(request.table, max_cells)  # type: ignore[attr-defined]
    return request


def solve_json(raw: bytes, max_cells: int) -> bytes:
    return do_solve(_parse(SolveRequest, raw, max_cells)).model_dump_json().encode()


def check_json(raw: bytes, max_cells: int) -> bytes:
    return do_check(_parse(CheckRequest, raw, max_cells)).model_dump_json().encode()


def pareto_json(raw: bytes, max_cells: int) -> bytes:
    points = do_pareto(_parse(ParetoRequest, raw, max_cells))
    return ("[" + ",".join(p.model_dump_json() for p in points) + "]").encode()


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    began = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - began


def _warm() -> None:
    import allocator.solve.api  # noqa: F401
    from allocator.solve.backends import load_all

    load_all()


class Pool:
    """``await pool.run(fn, *args)`` -> (result, seconds) off the event loop."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def _make(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_warm,
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        loop = asyncio.get_running_loop()
        if self.workers == 0:
            return await loop.run_in_executor(None, partial(_timed, fn, *args))
        if self._executor is None:
            self._executor = self._make()
        try:
            return await loop.run_in_executor(self._executor, partial(_timed, fn, *args))
        except concurrent.futures.process.BrokenProcessPool:
            self._executor = self._make()  # a worker died (e.g. out of memory): start afresh
            raise

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
