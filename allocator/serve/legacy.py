"""The original stdlib JSON-over-HTTP front for the solver (kept as the benchmark baseline;
``allocator serve --legacy``). The service proper is ``allocator.serve.app`` (FastAPI).

Endpoints (all JSON):
- ``GET /health`` -> ``{"status": "ok", "version": ...}``
- ``GET /solvers`` -> names of the installed solver backends
- ``GET /schema/{constraints|table|plan}`` -> JSON Schema
- ``POST /solve`` ``{"table": ..., "constraints": ..., "solver": "auto", "time_limit": null}`` -> Plan
- ``POST /check`` ``{"plan": ..., "table": ..., "constraints": ...}`` -> ``{"ok": bool, "violations": [...]}``
- ``POST /pareto`` ``{"table": ..., "constraints": ..., "budgets": [2.5, 3.0]}`` -> list of Plans

User errors answer 400 (input), 422 (infeasible, with the minimum size), 501 (unsupported);
bodies over ``max_body_bytes`` answer 413. Each request is handled on its own thread.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel

from allocator import __version__
from allocator.errors import AllocatorError, InfeasibleError, InputError, UnsupportedError
from allocator.schema import Constraints, Plan, SensitivityTable
from allocator.schema.io import json_schema, validate

MAX_BODY_BYTES = 256 * 1024 * 1024


def _status_for(exc: AllocatorError) -> HTTPStatus:
    if isinstance(exc, InfeasibleError):
        return HTTPStatus.UNPROCESSABLE_ENTITY
    if isinstance(exc, UnsupportedError):
        return HTTPStatus.NOT_IMPLEMENTED
    return HTTPStatus.BAD_REQUEST


def _field(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise InputError(f"request body: field '{name}' is missing; add it")
    return body[name]


def handle_solve(body: dict[str, Any]) -> Any:
    from allocator.solve.api import solve

    table = validate(SensitivityTable, _field(body, "table"), "request.table")
    constraints = validate(Constraints, _field(body, "constraints"), "request.constraints")
    return solve(
        table, constraints, solver=body.get("solver", "auto"), time_limit=body.get("time_limit")
    )


def handle_check(body: dict[str, Any]) -> Any:
    from allocator.solve.checker import check_plan

    plan = validate(Plan, _field(body, "plan"), "request.plan")
    table = validate(SensitivityTable, _field(body, "table"), "request.table")
    constraints = validate(Constraints, _field(body, "constraints"), "request.constraints")
    violations = check_plan(plan, table, constraints)
    return {"ok": not violations, "violations": violations}


def handle_pareto(body: dict[str, Any]) -> Any:
    from allocator.solve.pareto import sweep

    table = validate(SensitivityTable, _field(body, "table"), "request.table")
    constraints = validate(Constraints, _field(body, "constraints"), "request.constraints")
    budgets = _field(body, "budgets")
    if not isinstance(budgets, list) or not all(isinstance(b, int | float) for b in budgets):
        raise InputError(
            f"request.budgets = {budgets!r}: give a list of average bits, e.g. [2.5, 3.0]"
        )
    return sweep(table, constraints, [float(b) for b in budgets])


POST_ROUTES = {"/solve": handle_solve, "/check": handle_check, "/pareto": handle_pareto}


def _jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [_jsonable(item) for item in result]
    return result


class AllocatorHandler(BaseHTTPRequestHandler):
    """Routes requests to the solver; every answer is JSON."""

    server_version = f"allocator/{__version__}"
    max_body_bytes = MAX_BODY_BYTES

    def log_message(self, format: str, *args: Any) -> None:
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)

    def _reply(self, status: HTTPStatus, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str, **extra: Any) -> None:
        self._reply(status, {"error": message, **extra})

    def do_GET(self) -> None:
        try:
            if self.path == "/health":
                self._reply(HTTPStatus.OK, {"status": "ok", "version": __version__})
            elif self.path == "/solvers":
                from allocator.solve.registry import installed_solvers

                self._reply(HTTPStatus.OK, {"solvers": installed_solvers()})
            elif self.path.startswith("/schema/"):
                self._reply(HTTPStatus.OK, json_schema(self.path.removeprefix("/schema/")))
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route GET {self.path}")
        except AllocatorError as exc:
            self._error(_status_for(exc), str(exc))

    def do_POST(self) -> None:
        route = POST_ROUTES.get(self.path)
        if route is None:
            self._error(
                HTTPStatus.NOT_FOUND, f"no route POST {self.path}; use one of {sorted(POST_ROUTES)}"
            )
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.max_body_bytes:
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes exceeds {self.max_body_bytes}",
            )
            return
        try:
            body = json.loads(self.rfile.read(length) or b"null")
            if not isinstance(body, dict):
                raise InputError("request body must be a JSON object")
            self._reply(HTTPStatus.OK, _jsonable(route(body)))
        except json.JSONDecodeError as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"request body is not valid JSON: {exc}")
        except InfeasibleError as exc:
            self._error(
                _status_for(exc), str(exc), min_size_bits=exc.min_size_bits, binding=exc.binding
            )
        except AllocatorError as exc:
            self._error(_status_for(exc), str(exc))
        except Exception as exc:  # a bug of ours: answer 500, keep serving
            self._error(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}: {exc}"
            )


def make_server(
    host: str = "127.0.0.1", port: int = 8765, *, quiet: bool = False
) -> ThreadingHTTPServer:
    """A ready-to-serve server (call ``serve_forever``); port 0 picks a free port."""
    server = ThreadingHTTPServer((host, port), AllocatorHandler)
    server.quiet = quiet  # type: ignore[attr-defined]
    server.daemon_threads = True
    return server
