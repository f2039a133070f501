"""The allocation service: a FastAPI app (``create_app``) served by uvicorn (``allocator serve``).

- ``/v1/solve``, ``/v1/check``, ``/v1/pareto``: synchronous, CPU work on a process pool;
- ``/v1/jobs``: long work (solve, pareto, profile, apply, eval, run, export) in worker processes,
  persisted in SQLite under the data directory and resumed after a restart;
- ``/v1/health``, ``/v1/ready``, ``/v1/solvers``, ``/v1/schema/{name}``, ``/metrics``;
- ``/openapi.json`` and the interactive docs at ``/docs``; the web page at ``/`` and ``/jobs``.
Module map: config (settings, keys), models (bodies), auth, limits, errors, compute (pool),
store (SQLite or SQLAlchemy), runner (scheduler), launch (local process or Ray task), worker
(one job), metrics, routes_sync, routes_jobs, web (the page at / and /jobs, figures), docs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import TypeAdapter

from allocator import __version__
from allocator.serve import docs, errors
from allocator.serve.compute import Pool
from allocator.serve.config import ServeConfig
from allocator.serve.limits import BodyLimit
from allocator.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from allocator.serve.runner import JobManager
from allocator.serve.store import open_store


def create_app(config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.root.mkdir(parents=True, exist_ok=True)
    store = open_store(config.data_dir, config.database_url)
    launcher = None
    if config.ray and config.run_jobs:
        from allocator.serve.launch import RayLauncher

        launcher = RayLauncher(config.ray)
    manager = JobManager(
        store, config.data_dir / "jobs", config.slots, run_jobs=config.run_jobs,
        launcher=launcher,
    )  # fmt: skip
    metrics = Metrics(store)
    pool = Pool(config.workers)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        manager.start()
        try:
            yield
        finally:
            manager.stop()
            pool.close()  # the store stays open: a test client may run the lifespan again

    offline_docs = docs.assets()
    app = FastAPI(
        docs_url=None if offline_docs else "/docs",
        redoc_url=None if offline_docs else "/redoc",
        title="allocator",
        version=__version__,
        description="Optimization-based bit allocation as a service: solve, check and sweep "
        "sensitivity tables; profile, apply, evaluate and export models as jobs.",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.manager = manager
    app.state.metrics = metrics
    app.state.pool = pool
    errors.install(app)
    if offline_docs is not None:
        docs.install(app, offline_docs)

    from allocator.serve import routes_jobs, routes_sync, web

    app.include_router(routes_sync.router)
    app.include_router(routes_jobs.router)
    app.include_router(web.router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes, separate_input_output_schemas=False,
            )  # fmt: skip
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            raw_bodies: list[tuple[str, TypeAdapter[Any]]] = [
                (m.__name__, TypeAdapter(m)) for m in routes_sync.RAW_BODIES
            ]
            raw_bodies.append(("JobRequest", routes_jobs.JOB_REQUEST))
            for name, adapter in raw_bodies:  # bodies read raw: add their schemas
                body = adapter.json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[name] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
