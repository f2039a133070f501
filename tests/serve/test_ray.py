"""Jobs as Ray tasks (``--ray``): a local Ray runs a solve job to the same plan as the local
launcher and cancels a running job through ``ray.cancel``. Skipped without the ray package."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="pip install 'llm-bit-allocator[ray]'")

from tests.serve.conftest import ALICE, make_client, wait  # noqa: E402


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_jobs_run_as_ray_tasks(local_ray: None, tmp_path: Path, example: dict[str, Any]) -> None:
    with make_client(tmp_path, ray="local") as client:
        assert client.app.state.manager.slots > 1000  # Ray queues and places the tasks
        response = client.post("/v1/jobs", json={"kind": "solve", "settings": example},
                               headers=ALICE)  # fmt: skip
        job = wait(client, response.json()["id"], ALICE, timeout=120)
        assert job["state"] == "succeeded", job
        plan = client.get(f"/v1/jobs/{job['id']}/artifacts/plan.json", headers=ALICE).json()
        local = client.post("/v1/solve", json=example, headers=ALICE).json()
        assert plan["assignments"] == local["assignments"]
        slow = {**example, "budgets": [2.5 + 0.01 * i for i in range(256)], "solver": "ilp"}
        job = client.post("/v1/jobs", json={"kind": "pareto", "settings": slow},
                          headers=ALICE).json()  # fmt: skip
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job['id']}", headers=ALICE).json()["progress"] < 0.1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=ALICE).status_code == 200
        assert wait(client, job["id"], ALICE, timeout=60)["state"] == "cancelled"
