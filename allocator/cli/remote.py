"""``--server URL``: run solve/pareto/run on an allocation service instead of locally."""

from __future__ import annotations

import os
from typing import Any

SERVER_HELP = "solve on this allocation service (e.g. http://127.0.0.1:8765) instead of locally"
KEY_HELP = "API key for --server (default: $ALLOCATOR_API_KEY)"


def client_for(server: str, api_key: str | None) -> Any:
    from allocator.client import Client

    return Client(server, api_key or os.environ.get("ALLOCATOR_API_KEY"))
