"""Size limits: request bodies (checked from Content-Length and while streaming) and tables
(units x options cells), each answered with 413 naming the limit and the option that sets it.
Bodies must be JSON (415 otherwise), so a cross-site form post cannot reach the API."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from allocator.schema.table import SensitivityTable
from allocator.serve.errors import error_response, too_large


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refuse(self, size: int) -> Any:
        exc = too_large("request body", size, self.max_bytes, "--max-body-bytes")
        return error_response(413, str(exc), limit=exc.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        has_body = (declared not in (None, b"0")) or b"transfer-encoding" in headers
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["method"] in ("POST", "PUT", "PATCH") and has_body and kind != b"application/json":
            # JSON only: a cross-site form or text/plain post (no CORS preflight) is refused
            shown = kind.decode("latin-1")[:80] or "none"
            message = f"Content-Type {shown!r}: send the body as application/json"
            await error_response(415, message)(scope, receive, send)
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(int(declared))(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exc = too_large("request body", seen, self.max_bytes, "--max-body-bytes")
                    raise HTTPException(413, str(exc))
            return message

        await self.app(scope, counting_receive, send)


def check_table(table: SensitivityTable, max_cells: int) -> None:
    cells = len(table.units) * len(table.options)
    if cells > max_cells:
        raise too_large("table (units x options)", cells, max_cells, "--max-table-cells")
