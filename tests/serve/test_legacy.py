"""The HTTP service answers the solver's endpoints with JSON and maps errors to status codes."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from allocator.data.example import load_example
from allocator.schema.constraints import Budget, Constraints
from allocator.serve.legacy import make_server


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = make_server(port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    table, constraints = load_example()
    return {
        "table": table.model_dump(mode="json"),
        "constraints": constraints.model_dump(mode="json"),
    }


def _call(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_solvers_schema(base_url: str) -> None:
    status, body = _call(f"{base_url}/health")
    assert status == 200 and body["status"] == "ok"
    status, body = _call(f"{base_url}/solvers")
    assert status == 200 and {"ilp", "mckp", "lagrange"} <= set(body["solvers"])
    status, body = _call(f"{base_url}/schema/constraints")
    assert status == 200 and "budget" in body["properties"]
    status, body = _call(f"{base_url}/schema/nonsense")
    assert status == 400 and "nonsense" in body["error"]
    status, body = _call(f"{base_url}/nowhere")
    assert status == 404


def test_solve_then_check_round_trip(base_url: str, example: dict[str, Any]) -> None:
    status, plan = _call(f"{base_url}/solve", {**example, "solver": "mckp"})
    assert status == 200, plan
    assert plan["solver"] == "mckp" and len(plan["assignments"]) == 210
    assert plan["avg_bits"] <= example["constraints"]["budget"]["avg_bits"] + 1e-9
    status, verdict = _call(f"{base_url}/check", {"plan": plan, **example})
    assert status == 200 and verdict == {"ok": True, "violations": []}
    # a tampered plan is caught by the independent checker
    plan["assignments"] = plan["assignments"][1:]
    status, verdict = _call(f"{base_url}/check", {"plan": plan, **example})
    assert status == 200 and not verdict["ok"] and verdict["violations"]


def test_pareto_returns_one_plan_per_budget(base_url: str, example: dict[str, Any]) -> None:
    status, plans = _call(f"{base_url}/pareto", {**example, "budgets": [3.0, 4.0]})
    assert status == 200 and len(plans) == 2
    assert plans[0]["predicted_loss"] >= plans[1]["predicted_loss"]
    status, body = _call(f"{base_url}/pareto", {**example, "budgets": "3.0"})
    assert status == 400 and "budgets" in body["error"]


def test_errors_map_to_status_codes(base_url: str, example: dict[str, Any]) -> None:
    status, body = _call(f"{base_url}/solve", raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = _call(f"{base_url}/solve", {"constraints": example["constraints"]})
    assert status == 400 and "'table'" in body["error"]
    status, body = _call(f"{base_url}/solve", {**example, "solver": "nope"})
    assert status == 501 and "nope" in body["error"]  # unknown solver: UnsupportedError
    bad = {**example["constraints"], "budget": {"avg_bits": "lots"}}
    status, body = _call(f"{base_url}/solve", {**example, "constraints": bad})
    assert status == 400 and "budget" in body["error"]
    tiny = Constraints(budget=Budget(avg_bits=1.0)).model_dump(mode="json")
    status, body = _call(f"{base_url}/solve", {**example, "constraints": tiny})
    assert status == 422 and body["min_size_bits"] > 0
    status, body = _call(f"{base_url}/unknown", {})
    assert status == 404 and "/solve" in body["error"]
