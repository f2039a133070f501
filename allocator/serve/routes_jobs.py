"""Jobs: submit, list, inspect (state, stage, progress, log tail), cancel, retry, delete, and
their artifacts (files, or folders as .tar.gz archives). Each key sees only its own jobs."""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import TypeAdapter, ValidationError
from starlette.background import BackgroundTask

from allocator.errors import InputError
from allocator.schema.io import describe_validation_error
from allocator.serve.auth import owner_of
from allocator.serve.errors import ApiError
from allocator.serve.limits import check_table
from allocator.serve.models import (
    Artifact,
    ArtifactList,
    ErrorBody,
    JobList,
    JobRequest,
    JobState,
    JobView,
)
from allocator.serve.paths import BUILTIN_MODELS, confine, confine_list

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413)
}


def _confined(
    settings: Any, root: Path, max_cells: int, jobs: Callable[[str], Path]
) -> dict[str, Any]:
    """Settings as JSON with every model/text path checked and made absolute under ``root``
    (or under the output folder of a finished job of the same owner: ``job:ID/PATH``)."""
    for name in ("table",):
        if hasattr(settings, name):
            check_table(getattr(settings, name), max_cells)
    data = settings.model_dump(mode="json")
    for name in ("model", "reference"):
        if data.get(name) is not None:
            data[name] = confine(data[name], root, name, BUILTIN_MODELS, jobs)
    for name in ("text", "calib_text", "eval_text"):
        if name in data:
            data[name] = confine_list(data[name], root, name, jobs)
    return data


def _tail(path: Path, lines: int) -> list[str]:
    if not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode("utf-8", errors="replace")
    # progress bars rewrite one line with carriage returns: keep the last state of each line
    rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
    return [row for row in rows if row.strip()][-lines:]


def view(request: Request, job: dict[str, Any], *, detail: bool = True) -> JobView:
    manager = request.app.state.manager
    lines = request.app.state.config.log_tail_lines
    fields = {k: job[k] for k in JobView.model_fields if k in job and k not in ("settings",)}
    if detail:
        fields["log_tail"] = _tail(manager.folder(job["id"]) / "log.txt", lines)
        fields["settings"] = job["settings"]
    return JobView(**fields)


def _own(request: Request, job_id: str, owner: str) -> dict[str, Any]:
    job = request.app.state.manager.store.get(job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}")
    if job["owner"] != owner:
        raise ApiError(403, f"job {job_id!r} belongs to another API key")
    return job


JOB_REQUEST = TypeAdapter(JobRequest)
JOB_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/JobRequest"}}}}}  # fmt: skip


@router.post("", response_model=JobView, status_code=201, responses=ERRORS, openapi_extra=JOB_BODY)
async def submit(request: Request, owner: str = Depends(owner_of)) -> JobView:
    """Queue a job of one kind (solve, pareto, profile, apply, eval, run, export)."""
    config = request.app.state.config
    manager = request.app.state.manager
    raw = await request.body()

    def finished_job(job_id: str) -> Path:
        found = _own(request, job_id, owner)
        if found["state"] != "succeeded":
            raise ApiError(
                409, f"job {job_id} is {found['state']}; use a succeeded job's artifacts"
            )
        return manager.folder(job_id) / "out"

    def accept() -> str:  # on a thread: a big table's parsing never holds up the event loop
        try:
            job = JOB_REQUEST.validate_json(raw)
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc, "request")) from None
        settings = _confined(job.settings, config.root, config.max_table_cells, finished_job)
        return manager.submit(owner, job.kind, settings)

    job_id = await run_in_threadpool(accept)
    return view(request, manager.store.get(job_id))


@router.get("", response_model=JobList, responses=ERRORS)
async def list_jobs(
    request: Request,
    state: JobState | None = None,
    limit: int = Query(100, ge=1, le=1000),
    owner: str = Depends(owner_of),
) -> JobList:
    """This key's jobs, newest first."""
    jobs = request.app.state.manager.store.list(owner, state, limit)
    return JobList(jobs=[view(request, job, detail=False) for job in jobs])


@router.get("/{job_id}", response_model=JobView, responses=ERRORS)
async def get_job(request: Request, job_id: str, owner: str = Depends(owner_of)) -> JobView:
    """State, stage, progress, timestamps, error and the tail of the log."""
    return view(request, _own(request, job_id, owner))


@router.post("/{job_id}/cancel", response_model=JobView, responses=ERRORS)
async def cancel(request: Request, job_id: str, owner: str = Depends(owner_of)) -> JobView:
    job = _own(request, job_id, owner)
    if not request.app.state.manager.cancel(job_id):
        raise ApiError(409, f"job {job_id} is {job['state']}; only queued or running jobs cancel")
    return view(request, request.app.state.manager.store.get(job_id))


@router.post("/{job_id}/retry", response_model=JobView, responses=ERRORS)
async def retry(request: Request, job_id: str, owner: str = Depends(owner_of)) -> JobView:
    """Queue a failed or cancelled job again; it resumes from what its folder kept."""
    job = _own(request, job_id, owner)
    if not request.app.state.manager.retry(job_id):
        raise ApiError(409, f"job {job_id} is {job['state']}; only failed or cancelled retry")
    return view(request, request.app.state.manager.store.get(job_id))


@router.delete("/{job_id}", status_code=204, responses=ERRORS)
async def delete(request: Request, job_id: str, owner: str = Depends(owner_of)) -> None:
    """Cancel (when running) and remove the job with its artifacts."""
    _own(request, job_id, owner)
    await run_in_threadpool(request.app.state.manager.delete, job_id)


def _artifact_root(request: Request, job_id: str) -> Path:
    return (request.app.state.manager.folder(job_id) / "out").resolve()


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=ERRORS)
async def artifacts(request: Request, job_id: str, owner: str = Depends(owner_of)) -> Any:
    """Top-level files and folders of the job's output (folders download as .tar.gz)."""
    _own(request, job_id, owner)
    root = _artifact_root(request, job_id)
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.is_symlink() or path.name.startswith("."):
            continue
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            found.append(Artifact(path=path.name, kind="folder", bytes=size))
        elif path.is_file():
            found.append(Artifact(path=path.name, kind="file", bytes=path.stat().st_size))
    return ArtifactList(artifacts=found)


@router.get(
    "/{job_id}/artifacts/{name:path}",
    responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}}},
    response_class=FileResponse,
)
async def download(
    request: Request, job_id: str, name: str, owner: str = Depends(owner_of)
) -> FileResponse:
    """One artifact: a file as is, a folder as a .tar.gz archive."""
    _own(request, job_id, owner)
    root = _artifact_root(request, job_id)
    try:
        target = (root / name).resolve()
    except (OSError, ValueError) as exc:
        raise InputError(f"artifact {name!r}: not a valid path") from exc
    if ".." in Path(name).parts or not target.is_relative_to(root) or target == root:
        raise ApiError(404, f"no artifact {name!r} in job {job_id}")
    if target.is_file():
        return FileResponse(target, filename=target.name)
    if not target.is_dir():
        raise ApiError(404, f"no artifact {name!r} in job {job_id}")
    handle = tempfile.NamedTemporaryFile(suffix=".tar.gz", delete=False)  # noqa: SIM115
    with tarfile.open(fileobj=handle, mode="w:gz") as archive:
        for path in sorted(target.rglob("*")):
            if path.is_file() and not path.is_symlink():
                archive.add(path, arcname=str(path.relative_to(target.parent)))
    handle.close()
    return FileResponse(
        handle.name, filename=target.name + ".tar.gz", media_type="application/gzip",
        background=BackgroundTask(Path(handle.name).unlink, missing_ok=True),
    )  # fmt: skip
