"""Fast synchronous endpoints: solve, check, pareto (on the process pool), schema, solvers,
health (liveness) and ready (readiness)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request

from allocator import __version__
from allocator.schema.plan import Plan
from allocator.serve.auth import owner_of
from allocator.serve.compute import do_check, do_pareto, do_solve
from allocator.serve.limits import check_table
from allocator.serve.models import (
    CheckRequest,
    CheckResponse,
    ErrorBody,
    Health,
    ParetoRequest,
    Ready,
    SolveRequest,
    Solvers,
)
from allocator.solve.pareto import ParetoPoint

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 413, 422, 501)
}
router = APIRouter(prefix="/v1")


@router.get("/health", response_model=Health, tags=["service"])
async def health() -> Health:
    """Liveness: answers as long as the event loop runs."""
    return Health(status="ok", version=__version__)


@router.get("/ready", response_model=Ready, tags=["service"])
async def ready(request: Request) -> Ready:
    """Readiness: the job store answers and the scheduler is up."""
    manager = request.app.state.manager
    counts = manager.store.counts()
    return Ready(
        ready=True, workers=request.app.state.config.workers,
        queued=counts.get("queued", 0), running=counts.get("running", 0),
    )  # fmt: skip


@router.get("/solvers", response_model=Solvers, tags=["solve"], dependencies=[Depends(owner_of)])
async def solvers() -> Solvers:
    from allocator.solve.backends import load_all
    from allocator.solve.registry import BACKENDS

    load_all()
    return Solvers(solvers=BACKENDS.names())


@router.get("/schema/{name}", tags=["solve"], responses={400: {"model": ErrorBody}})
async def schema(name: Literal["constraints", "table", "plan"]) -> dict[str, Any]:
    """JSON Schema of a file format."""
    from allocator.schema.io import json_schema

    return json_schema(name)


async def _run(request: Request, endpoint: str, fn: Any, body: Any) -> Any:
    config = request.app.state.config
    check_table(body.table, config.max_table_cells)
    result, seconds = await request.app.state.pool.run(fn, body)
    request.app.state.metrics.solve_seconds.labels(endpoint).observe(seconds)
    return result


@router.post("/solve", response_model=Plan, tags=["solve"], responses=ERRORS)
async def solve(body: SolveRequest, request: Request, _: str = Depends(owner_of)) -> Plan:
    """One option per unit minimising predicted loss under the constraints."""
    return await _run(request, "solve", do_solve, body)


@router.post("/check", response_model=CheckResponse, tags=["solve"], responses=ERRORS)
async def check(body: CheckRequest, request: Request, _: str = Depends(owner_of)) -> Any:
    """Every violation of a plan against its table and constraints (independent checker)."""
    return await _run(request, "check", do_check, body)


@router.post("/pareto", response_model=list[ParetoPoint], tags=["solve"], responses=ERRORS)
async def pareto(body: ParetoRequest, request: Request, _: str = Depends(owner_of)) -> Any:
    """Solve at each average-bits budget; loss is non-increasing along the result."""
    return await _run(request, "pareto", do_pareto, body)
