"""A Python client for the allocation service (``allocator serve``).

    from allocator.client import Client
    client = Client("http://127.0.0.1:8765", api_key="...")
    plan = client.solve("table.json", "constraints.yaml")
    job = client.submit("profile", {"model": "smollm2", "estimator": "fisher"})
    client.wait(job["id"])                       # with a progress bar
    client.download(job["id"], "table.json", "table.json")

Errors come back as the library's own exceptions (InputError for 400, InfeasibleError with the
minimum size for 422, UnsupportedError for 501) or ServiceError (401, 403, 404, 409, 413, 5xx).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from allocator.errors import AllocatorError, InfeasibleError, InputError, UnsupportedError
from allocator.schema.plan import Plan

FINAL = ("succeeded", "failed", "cancelled")


class ServiceError(AllocatorError):
    """The service refused or failed a request (status and message as it answered)."""

    exit_code = 6

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"server answered {status}: {message}")
        self.status = status


def _as_json(value: Any, kind: str) -> Any:
    from allocator.schema import io

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, str | os.PathLike):
        loader = {"table": io.load_table, "constraints": io.load_constraints, "plan": io.load_plan}
        return loader[kind](Path(value)).model_dump(mode="json")
    return value


class Client:
    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 600.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code < 400:
            return response.json() if response.content else None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:500]}
        message = body.get("error", str(body))
        if response.status_code == 400:
            raise InputError(message)
        if response.status_code == 422 and "min_size_bits" in body:
            raise InfeasibleError(
                message, min_size_bits=body["min_size_bits"], binding=body.get("binding")
            )
        if response.status_code == 501:
            raise UnsupportedError(message)
        raise ServiceError(response.status_code, message)

    # --- synchronous endpoints -----------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def solvers(self) -> list[str]:
        return self._call("GET", "/v1/solvers")["solvers"]

    def solve(
        self, table: Any, constraints: Any, *, solver: str = "auto",
        time_limit: float | None = None, mip_gap: float = 0.0,
    ) -> Plan:  # fmt: skip
        body = {"table": _as_json(table, "table"),
                "constraints": _as_json(constraints, "constraints"),
                "solver": solver, "time_limit": time_limit, "mip_gap": mip_gap}  # fmt: skip
        return Plan.model_validate(self._call("POST", "/v1/solve", json=body))

    def check(self, plan: Any, table: Any, constraints: Any) -> dict[str, Any]:
        body = {"plan": _as_json(plan, "plan"), "table": _as_json(table, "table"),
                "constraints": _as_json(constraints, "constraints")}  # fmt: skip
        return self._call("POST", "/v1/check", json=body)

    def pareto(
        self, table: Any, constraints: Any, budgets: list[float], *, solver: str = "auto",
        time_limit: float | None = None,
    ) -> list[Any]:  # fmt: skip
        from allocator.solve.pareto import ParetoPoint

        body = {"table": _as_json(table, "table"),
                "constraints": _as_json(constraints, "constraints"),
                "budgets": list(budgets), "solver": solver, "time_limit": time_limit}  # fmt: skip
        return [ParetoPoint.model_validate(p) for p in self._call("POST", "/v1/pareto", json=body)]

    # --- jobs ----------------------------------------------------------------------------------
    def submit(self, kind: str, settings: dict[str, Any] | BaseModel | None = None) -> dict:
        if isinstance(settings, BaseModel):
            settings = settings.model_dump(mode="json")
        settings = dict(settings or {})
        for name in ("table", "constraints", "plan"):
            if name in settings:
                settings[name] = _as_json(settings[name], name)
        return self._call("POST", "/v1/jobs", json={"kind": kind, "settings": settings})

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/jobs", params={"state": state} if state else None)["jobs"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/retry")

    def delete(self, job_id: str) -> None:
        self._call("DELETE", f"/v1/jobs/{job_id}")

    def wait(
        self, job_id: str, *, progress: bool = True, poll: float = 0.5,
        timeout: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Poll until the job ends (a tqdm bar shows stage and progress); returns the job."""
        from tqdm import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = tqdm(total=1.0, disable=not progress, bar_format="{desc} {percentage:3.0f}%|{bar}|")
        try:
            while True:
                job = self.job(job_id)
                bar.set_description(f"{job['kind']} {job['state']} {job['stage'] or ''}".strip())
                bar.n = job["progress"]
                bar.refresh()
                if job["state"] in FINAL:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
                time.sleep(poll)
        finally:
            bar.close()

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/artifacts")["artifacts"]

    def download(self, job_id: str, name: str, dest: str | os.PathLike[str]) -> Path:
        """Save one artifact (a folder arrives as a .tar.gz archive) to ``dest``."""
        target = Path(dest)
        with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
            if response.status_code >= 400:
                response.read()
                raise ServiceError(response.status_code, response.text[:500])
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        return target
