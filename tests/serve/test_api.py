"""The FastAPI service through its test client: every route, every error status, key isolation,
path escapes and size limits."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from allocator.schema.constraints import Budget, Constraints
from tests.serve.conftest import ALICE, BOB, make_client, wait


def test_health_ready_solvers_schema_docs(client: TestClient) -> None:
    assert client.get("/v1/health").json()["status"] == "ok"
    ready = client.get("/v1/ready").json()
    assert ready["ready"] is True and ready["workers"] == 0
    body = client.get("/v1/solvers", headers=ALICE).json()
    assert {"ilp", "mckp", "lagrange"} <= set(body["solvers"])
    assert "budget" in client.get("/v1/schema/constraints").json()["properties"]
    response = client.get("/v1/schema/nonsense")
    assert response.status_code == 400 and "name" in response.json()["error"]
    assert client.get("/v1/nowhere").status_code == 404
    spec = client.get("/openapi.json").json()
    assert {"/v1/solve", "/v1/jobs", "/v1/jobs/{job_id}/artifacts/{name}"} <= set(spec["paths"])
    # the request models are the library's own
    assert {"SensitivityTable", "Constraints", "Plan", "RunSettings"} <= set(
        spec["components"]["schemas"]
    )
    assert "swagger" in client.get("/docs").text.lower()


def test_keys_required(client: TestClient, example: dict[str, Any]) -> None:
    response = client.post("/v1/solve", json=example)
    assert response.status_code == 401 and "API key" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"
    response = client.post("/v1/solve", json=example, headers={"X-API-Key": "wrong-key-123"})
    assert response.status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/v1/health").status_code == 200  # liveness needs no key


def test_solve_check_round_trip(client: TestClient, example: dict[str, Any]) -> None:
    response = client.post("/v1/solve", json={**example, "solver": "mckp"}, headers=ALICE)
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["solver"] == "mckp" and len(plan["assignments"]) == 210
    assert plan["avg_bits"] <= example["constraints"]["budget"]["avg_bits"] + 1e-9
    verdict = client.post("/v1/check", json={"plan": plan, **example}, headers=ALICE).json()
    assert verdict == {"ok": True, "violations": []}
    plan["assignments"] = plan["assignments"][1:]
    verdict = client.post("/v1/check", json={"plan": plan, **example}, headers=BOB).json()
    assert not verdict["ok"] and verdict["violations"]


def test_pareto(client: TestClient, example: dict[str, Any]) -> None:
    response = client.post("/v1/pareto", json={**example, "budgets": [3.0, 4.0]}, headers=ALICE)
    assert response.status_code == 200, response.text
    points = response.json()
    assert len(points) == 2 and points[0]["predicted_loss"] >= points[1]["predicted_loss"]
    response = client.post("/v1/pareto", json={**example, "budgets": "3.0"}, headers=ALICE)
    assert response.status_code == 400 and "budgets" in response.json()["error"]


def test_error_statuses(client: TestClient, example: dict[str, Any]) -> None:
    headers = {**ALICE, "Content-Type": "application/json"}
    response = client.post("/v1/solve", content=b"{not json", headers=headers)
    assert response.status_code == 400
    response = client.post("/v1/solve", json={"constraints": example["constraints"]}, headers=ALICE)
    assert response.status_code == 400 and "table" in response.json()["error"]
    response = client.post("/v1/solve", json={**example, "solver": "nope"}, headers=ALICE)
    assert response.status_code == 501 and "nope" in response.json()["error"]
    bad = {**example["constraints"], "budget": {"avg_bits": "lots"}}
    response = client.post("/v1/solve", json={**example, "constraints": bad}, headers=ALICE)
    assert response.status_code == 400 and "budget" in response.json()["error"]
    tiny = Constraints(budget=Budget(avg_bits=1.0)).model_dump(mode="json")
    response = client.post("/v1/solve", json={**example, "constraints": tiny}, headers=ALICE)
    assert response.status_code == 422 and response.json()["min_size_bits"] > 0
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):  # no CSRF by forms
        headers = {**ALICE, **({"Content-Type": kind} if kind else {})}
        for route in ("/v1/solve", "/v1/jobs"):
            response = client.post(route, content=b'{"kind": "solve"}', headers=headers)
            assert response.status_code == 415, (kind, route, response.text)
    response = client.post("/v1/solve", json={**example, "extra": 1}, headers=ALICE)
    assert response.status_code == 400 and "extra" in response.json()["error"]


def test_size_limits(tmp_path: Path, example: dict[str, Any]) -> None:
    with make_client(tmp_path, max_body_bytes=10_000) as small:
        response = small.post("/v1/solve", json=example, headers=ALICE)
        assert response.status_code == 413
        assert (
            "10000" in response.json()["error"] and "--max-body-bytes" in response.json()["error"]
        )
        assert response.json()["limit"] == 10_000

        def chunks():  # no Content-Length: counted while streaming
            yield b'{"table": '
            yield b" " * 20_000
            yield b"}"

        response = small.post(
            "/v1/solve", content=chunks(), headers={**ALICE, "Content-Type": "application/json"}
        )
        assert response.status_code == 413 and "--max-body-bytes" in response.json()["error"]
    with make_client(tmp_path, max_table_cells=1000) as small:
        for route, extra in (("/v1/solve", {}), ("/v1/pareto", {"budgets": [3.0]})):
            response = small.post(route, json={**example, **extra}, headers=ALICE)
            assert response.status_code == 413, response.text
            assert "--max-table-cells" in response.json()["error"]
        job = {"kind": "solve", "settings": example}
        response = small.post("/v1/jobs", json=job, headers=ALICE)
        assert response.status_code == 413


def test_job_lifecycle_and_isolation(client: TestClient, example: dict[str, Any]) -> None:
    response = client.post("/v1/jobs", json={"kind": "solve", "settings": example}, headers=ALICE)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] in ("queued", "running") and job["kind"] == "solve"
    job = wait(client, job["id"], ALICE)
    assert job["state"] == "succeeded" and job["progress"] == 1 and job["error"] is None
    assert job["started_at"] >= job["created_at"] and job["finished_at"] >= job["started_at"]
    assert any("solve job ends" in line for line in job["log_tail"])
    listed = client.get(f"/v1/jobs/{job['id']}/artifacts", headers=ALICE).json()["artifacts"]
    assert listed == [{"path": "plan.json", "kind": "file", "bytes": listed[0]["bytes"]}]
    plan = client.get(f"/v1/jobs/{job['id']}/artifacts/plan.json", headers=ALICE).json()
    assert len(plan["assignments"]) == 210
    # bob sees none of alice's job
    assert job["id"] not in [j["id"] for j in client.get("/v1/jobs", headers=BOB).json()["jobs"]]
    assert job["id"] in [j["id"] for j in client.get("/v1/jobs", headers=ALICE).json()["jobs"]]
    for method, path in (
        ("get", ""), ("get", "/artifacts"), ("get", "/artifacts/plan.json"),
        ("post", "/cancel"), ("post", "/retry"), ("delete", ""),
    ):  # fmt: skip
        response = getattr(client, method)(f"/v1/jobs/{job['id']}{path}", headers=BOB)
        assert response.status_code == 403, (method, path, response.text)
    # state rules: a succeeded job neither cancels nor retries
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=ALICE).status_code == 409
    assert client.post(f"/v1/jobs/{job['id']}/retry", headers=ALICE).status_code == 409
    assert client.get(f"/v1/jobs/{job['id']}/artifacts/nothing", headers=ALICE).status_code == 404
    assert (
        client.get(f"/v1/jobs/{job['id']}/artifacts/../job.json", headers=ALICE).status_code == 404
    )
    assert client.delete(f"/v1/jobs/{job['id']}", headers=ALICE).status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}", headers=ALICE).status_code == 404
    assert client.get("/v1/jobs/unknown", headers=ALICE).status_code == 404


def test_failed_job_retry_and_cancel(client: TestClient, example: dict[str, Any]) -> None:
    tiny = Constraints(budget=Budget(avg_bits=1.0)).model_dump(mode="json")
    job = client.post(
        "/v1/jobs", json={"kind": "solve", "settings": {**example, "constraints": tiny}},
        headers=ALICE,
    ).json()  # fmt: skip
    job = wait(client, job["id"], ALICE)
    assert job["state"] == "failed" and "InfeasibleError" in job["error"]
    retried = client.post(f"/v1/jobs/{job['id']}/retry", headers=ALICE).json()
    assert retried["state"] in ("queued", "running") and retried["error"] is None
    assert wait(client, job["id"], ALICE)["attempts"] == 2
    # cancel a running job: a sweep of 256 budgets takes ~20 s
    slow = {**example, "budgets": [2.5 + 0.01 * i for i in range(256)], "solver": "ilp"}
    job = client.post("/v1/jobs", json={"kind": "pareto", "settings": slow}, headers=ALICE).json()
    deadline = time.monotonic() + 60
    while (seen := client.get(f"/v1/jobs/{job['id']}", headers=ALICE).json())["progress"] < 0.1:
        assert time.monotonic() < deadline and seen["state"] in ("queued", "running"), seen
        time.sleep(0.05)
    assert seen["state"] == "running" and seen["stage"] == "pareto"  # progress of its bar
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=ALICE)
    assert response.status_code == 200
    job = wait(client, job["id"], ALICE, timeout=10)
    assert job["state"] == "cancelled" and job["finished_at"] is not None
    # a queued job cancels at once
    queued = client.post("/v1/jobs", json={"kind": "pareto", "settings": slow}, headers=ALICE)
    client.post(f"/v1/jobs/{queued.json()['id']}/cancel", headers=ALICE)
    assert wait(client, queued.json()["id"], ALICE, timeout=10)["state"] == "cancelled"
    listed = client.get("/v1/jobs?state=cancelled", headers=ALICE).json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]


def test_paths_confined_to_data_root(client: TestClient, tmp_path: Path) -> None:
    root = client.app.state.config.root
    (root / "texts").mkdir(exist_ok=True)
    (root / "texts" / "calib.txt").write_text("hello " * 100)
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    link = root / "texts" / "escape.txt"
    if not link.exists():
        os.symlink(outside, link)
    bad = [
        {"model": "/etc"},
        {"model": "../data"},
        {"model": "texts/../../data"},
        {"text": [str(outside)]},
        {"text": ["texts/escape.txt"]},  # a symlink that leads out
        {"text": ["missing.txt"]},
        {"model": ""},
        {"settings": {"journal": "/tmp/elsewhere"}},  # server-chosen paths are not settable
    ]
    for settings in bad:
        response = client.post(
            "/v1/jobs", json={"kind": "profile", "settings": settings}, headers=ALICE
        )
        assert response.status_code == 400, (settings, response.text)
        assert "settings." in response.json()["error"]
    response = client.post(
        "/v1/jobs", json={"kind": "run", "settings": {"eval_text": ["/etc/passwd"]}}, headers=ALICE
    )
    assert response.status_code == 400 and "eval_text" in response.json()["error"]
    # built-in names and files inside the root are accepted (cancelled before they run)
    for settings in ({"model": "smollm2", "text": ["austen-calib", "texts/calib.txt"]},):
        with_paths = {"kind": "profile", "settings": {**settings, "estimator": "nonexistent"}}
        response = client.post("/v1/jobs", json=with_paths, headers=BOB)
        assert response.status_code == 201, response.text
        stored = response.json()["settings"]
        assert stored["text"] == ["austen-calib", str((root / "texts" / "calib.txt").resolve())]
        job = wait(client, response.json()["id"], BOB)
        assert job["state"] == "failed" and "nonexistent" in job["error"]


def test_metrics(client: TestClient, example: dict[str, Any]) -> None:
    client.post("/v1/solve", json=example, headers=ALICE)
    text = client.get("/metrics").text
    assert 'allocator_http_requests_total{method="POST",route="/v1/solve",status="200"}' in text
    assert "allocator_http_request_seconds_bucket" in text
    assert 'allocator_solve_seconds_count{endpoint="solve"}' in text
    assert 'allocator_jobs{state="succeeded"}' in text


def test_open_mode_without_keys(tmp_path: Path, example: dict[str, Any]) -> None:
    with make_client(tmp_path, keys={}) as open_client:
        assert open_client.post("/v1/solve", json=example).status_code == 200
        assert open_client.get("/v1/jobs").json() == {"jobs": []}


def test_process_pool(tmp_path: Path, example: dict[str, Any]) -> None:
    with make_client(tmp_path, workers=1) as pooled:
        response = pooled.post("/v1/solve", json=example, headers=ALICE)
        assert response.status_code == 200 and response.json()["avg_bits"] <= 3.5 + 1e-9
        tiny = Constraints(budget=Budget(avg_bits=1.0)).model_dump(mode="json")
        response = pooled.post(
            "/v1/solve", json={**example, "constraints": tiny}, headers=ALICE
        )  # errors cross the process boundary with their fields
        assert response.status_code == 422 and response.json()["min_size_bits"] > 0


def test_web_pages_and_figures(client: TestClient, example: dict[str, Any]) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/solve" in page.text and "/v1/figures" in page.text
    jobs = client.get("/jobs")
    assert jobs.status_code == 200 and "/v1/jobs" in jobs.text
    assert client.get("/v1/example").json()["table"] == example["table"]
    plan = client.post("/v1/solve", json=example, headers=ALICE).json()
    response = client.post("/v1/figures", json={"plan": plan}, headers=ALICE)
    assert response.status_code == 200
    assert sorted(response.json()["figures"]) == ["heatmap", "size_by_kind"]
    assert response.json()["figures"]["heatmap"].startswith("<svg")
    assert client.post("/v1/figures", json={"plan": plan}).status_code == 401


def test_ready_reports_a_dead_scheduler(tmp_path: Path) -> None:
    with make_client(tmp_path) as c:
        assert c.get("/v1/ready").status_code == 200
        manager = c.app.state.manager
        manager._stop.set()
        manager._wake.set()
        manager._thread.join(timeout=10)
        response = c.get("/v1/ready")
        assert response.status_code == 503 and response.json()["ready"] is False
