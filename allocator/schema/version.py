"""The file-format version this allocator reads and writes."""

from __future__ import annotations

FORMAT_VERSION = 1


def check_format_version(version: int, kind: str) -> int:
    """``version`` when this allocator can read it; a ValueError (pydantic names the field) else."""
    if version > FORMAT_VERSION:
        raise ValueError(
            f"this {kind} file has format_version {version}, newer than the {FORMAT_VERSION} "
            "this allocator reads; upgrade allocator or write the file with format_version "
            f"{FORMAT_VERSION}"
        )
    if version < 1:
        raise ValueError(f"format_version must be {FORMAT_VERSION} (or omitted)")
    return version
