"""Fast synchronous endpoints: solve, check, pareto (on the process pool), schema, solvers,
health (liveness) and ready (readiness)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel

from allocator import __version__
from allocator.schema.plan import Plan
from allocator.serve.auth import owner_of
from allocator.serve.compute import check_json, pareto_json, solve_json
from allocator.serve.models import (
    CheckRequest,
    CheckResponse,
    ErrorBody,
    Health,
    ParetoRequest,
    Ready,
    SolveRequest,
    SolverInfo,
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


@router.get("/ready", response_model=Ready, tags=["service"], responses={503: {"model": Ready}})
async def ready(request: Request) -> Any:
    """Readiness: the job store answers and the scheduler is up (503 when it is not)."""
    manager = request.app.state.manager
    counts = manager.store.counts()
    if not manager.alive():
        body = Ready(ready=False, workers=request.app.state.config.workers,
                     queued=counts.get("queued", 0), running=counts.get("running", 0))  # fmt: skip
        return Response(body.model_dump_json(), status_code=503, media_type="application/json")
    return Ready(
        ready=True, workers=request.app.state.config.workers,
        queued=counts.get("queued", 0), running=counts.get("running", 0),
    )  # fmt: skip


@router.get("/solvers", response_model=Solvers, tags=["solve"], dependencies=[Depends(owner_of)])
async def solvers() -> Solvers:
    """The solver backends installed on this server, with what each supports."""
    from allocator.solve.registry import solver_table

    rows = [row for row in solver_table() if row["installed"]]
    return Solvers(solvers=[row["name"] for row in rows], details=[SolverInfo(**r) for r in rows])


@router.get("/schema/{name}", tags=["solve"], responses={400: {"model": ErrorBody}})
async def schema(name: Literal["constraints", "table", "plan"]) -> dict[str, Any]:
    """JSON Schema of a file format."""
    from allocator.schema.io import json_schema

    return json_schema(name)


def body_of(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body read raw (parsed in the pool, so a huge table never blocks the loop)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


RAW_BODIES = (SolveRequest, CheckRequest, ParetoRequest)


async def _run(request: Request, endpoint: str, fn: Any) -> Response:
    """Parse, validate, compute and serialize on the pool; the event loop only moves bytes."""
    raw = await request.body()
    config = request.app.state.config
    result, seconds = await request.app.state.pool.run(fn, raw, config.max_table_cells)
    request.app.state.metrics.solve_seconds.labels(endpoint).observe(seconds)
    return Response(result, media_type="application/json")


def _ok(model: Any) -> dict[int | str, dict[str, Any]]:
    return {**ERRORS, 200: {"model": model, "description": "OK"}}


@router.post("/solve", tags=["solve"], responses=_ok(Plan), openapi_extra=body_of(SolveRequest))
async def solve(request: Request, _: str = Depends(owner_of)) -> Response:
    """One option per unit minimising predicted loss under the constraints."""
    return await _run(request, "solve", solve_json)


@router.post(
    "/check", tags=["solve"], responses=_ok(CheckResponse), openapi_extra=body_of(CheckRequest)
)
async def check(request: Request, _: str = Depends(owner_of)) -> Response:
    """Every violation of a plan against its table and constraints (independent checker)."""
    return await _run(request, "check", check_json)


@router.post(
    "/pareto", tags=["solve"], responses=_ok(list[ParetoPoint]),
    openapi_extra=body_of(ParetoRequest),
)  # fmt: skip
async def pareto(request: Request, _: str = Depends(owner_of)) -> Response:
    """Solve at each average-bits budget; loss is non-increasing along the result."""
    return await _run(request, "pareto", pareto_json)
