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

from allocator.schema.plan import Plan
from allocator.serve.models import CheckRequest, CheckResponse, ParetoRequest, SolveRequest

T = TypeVar("T")


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


def do_pareto(request: ParetoRequest) -> list[Any]:
    from allocator.solve.pareto import sweep

    return sweep(
        request.table, request.constraints, request.budgets, solver=request.solver,
        time_limit=request.time_limit, mip_gap=request.mip_gap,
    )  # fmt: skip


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
