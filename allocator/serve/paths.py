"""Confining job settings to the data root: model and text paths may name a built-in model or
corpus, or a file/folder under ``--data-root`` (no ``..``, no absolute path outside it, no
symlink that leads out), or ``job:ID/PATH`` for an artifact of one of the caller's succeeded
jobs (a checkpoint to evaluate, a table to reuse). Accepted paths are rewritten to absolute ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

from allocator.errors import InputError

BUILTIN_MODELS = frozenset({"smollm2", "gemma3-270m", "all-minilm-l6-v2"})
BUILTIN_TEXTS = frozenset({"austen-calib", "austen-eval", "pydoc-calib", "pydoc-eval"})
JOB_PREFIX = "job:"


def _inside(base: Path, value: str, field: str, where: str) -> str:
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if ".." in parts:
        raise InputError(f"settings.{field} = {value!r}: '..' is not allowed in paths")
    real_base = base.resolve()
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = real_base / candidate
    try:
        resolved = candidate.resolve()
        inside = resolved.is_relative_to(real_base)
        exists = resolved.exists()
    except (OSError, ValueError) as exc:
        raise InputError(
            f"settings.{field} = {value[:80]!r}: not a usable path "
            f"({getattr(exc, 'strerror', None) or exc})"
        ) from exc
    if not inside:
        raise InputError(
            f"settings.{field} = {value!r}: outside {where}; put it under the folder the "
            f"server was started with (--data-root) and give a path relative to it"
        )
    if not exists:
        raise InputError(f"settings.{field} = {value!r}: no such file or folder in {where}")
    return str(resolved)


def confine(
    value: str, root: Path, field: str, builtins: frozenset[str],
    jobs: Callable[[str], Path] | None = None,
) -> str:  # fmt: skip
    """``value`` as an absolute path under ``root`` (or a built-in name, or ``job:ID/PATH``: an
    artifact of one of the caller's finished jobs); InputError otherwise."""
    if value in builtins:
        return value
    if not value or "\x00" in value:
        raise InputError(f"settings.{field}: give a built-in name or a path under the data root")
    if value.startswith(JOB_PREFIX) and jobs is not None:
        job_id, _, rest = value.removeprefix(JOB_PREFIX).partition("/")
        if not rest:
            raise InputError(f"settings.{field} = {value!r}: write job:ID/ARTIFACT")
        return _inside(jobs(job_id), rest, field, f"the artifacts of job {job_id}")
    return _inside(root, value, field, "the data root")


def confine_list(
    values: list[str] | None, root: Path, field: str, jobs: Callable[[str], Path] | None = None
) -> list[str] | None:
    if values is None:
        return None
    return [confine(v, root, f"{field}[{i}]", BUILTIN_TEXTS, jobs) for i, v in enumerate(values)]
