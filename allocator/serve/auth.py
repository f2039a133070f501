"""API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. Each key maps to an owner name;
jobs belong to the owner that submitted them. With no keys configured the service is open to the
single owner ``local`` (the CLI only allows that on a loopback address)."""

from __future__ import annotations

import hmac

from fastapi import Request

from allocator.serve.errors import ApiError

LOCAL_OWNER = "local"


def owner_of(request: Request) -> str:
    keys: dict[str, str] = request.app.state.config.keys
    if not keys:
        return LOCAL_OWNER
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if not given:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    owner = None
    for key, name in keys.items():  # compare with every key in constant time
        if hmac.compare_digest(key.encode(), given.encode()):
            owner = name
    if owner is None:
        raise ApiError(401, "unknown API key")
    return owner
