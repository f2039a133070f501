"""Confining job settings to the data root: model and text paths may name a built-in model or
corpus, or a file/folder under ``--data-root`` (no ``..``, no absolute path outside it, no
symlink that leads out). Accepted paths are rewritten to absolute ones inside the root."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from allocator.errors import InputError

BUILTIN_MODELS = frozenset({"smollm2", "gemma3-270m", "all-minilm-l6-v2"})
BUILTIN_TEXTS = frozenset({"austen-calib", "austen-eval", "pydoc-calib", "pydoc-eval"})


def confine(value: str, root: Path, field: str, builtins: frozenset[str]) -> str:
    """``value`` as an absolute path under ``root`` (or a built-in name); InputError otherwise."""
    if value in builtins:
        return value
    if not value or "\x00" in value:
        raise InputError(f"settings.{field}: give a built-in name or a path under the data root")
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if ".." in parts:
        raise InputError(f"settings.{field} = {value!r}: '..' is not allowed in paths")
    real_root = root.resolve()
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = real_root / candidate
    try:
        resolved = candidate.resolve()
        inside = resolved.is_relative_to(real_root)
        exists = resolved.exists()
    except (OSError, ValueError) as exc:
        raise InputError(
            f"settings.{field} = {value[:80]!r}: not a usable path ({exc.strerror})"
        ) from exc
    if not inside:
        raise InputError(
            f"settings.{field} = {value!r}: outside the data root; put it under the folder the "
            f"server was started with (--data-root) and give a path relative to it"
        )
    if not exists:
        raise InputError(f"settings.{field} = {value!r}: no such file or folder in the data root")
    return str(resolved)


def confine_list(values: list[str] | None, root: Path, field: str) -> list[str] | None:
    if values is None:
        return None
    return [confine(v, root, f"{field}[{i}]", BUILTIN_TEXTS) for i, v in enumerate(values)]
