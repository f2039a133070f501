"""Fixtures for the service tests: an app on a temporary data directory with two API keys."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from allocator.data.example import load_example
from allocator.serve.app import create_app
from allocator.serve.config import ServeConfig

ALICE = {"X-API-Key": "alice-secret-1"}
BOB = {"Authorization": "Bearer bob-secret-22"}
KEYS = {"alice-secret-1": "alice", "bob-secret-22": "bob"}


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    table, constraints = load_example()
    return {
        "table": table.model_dump(mode="json"),
        "constraints": constraints.model_dump(mode="json"),
    }


def make_client(tmp: Path, **overrides: Any) -> TestClient:
    config = ServeConfig(data_dir=tmp / "data", data_root=tmp / "root", workers=0, keys=KEYS)
    for name, value in overrides.items():
        setattr(config, name, value)
    return TestClient(create_app(config))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("serve")) as c:
        yield c


@contextlib.contextmanager
def live_server(data_dir: Path, **config: Any) -> Iterator[str]:
    """The app on uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeConfig(data_dir=data_dir, **{"workers": 0, "keys": KEYS, **config}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait(client: TestClient, job_id: str, headers: dict[str, str], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")
