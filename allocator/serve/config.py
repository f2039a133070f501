"""The service's settings: where it keeps its data, what clients may read, limits, API keys."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from allocator.errors import InputError

KEYS_ENV = "ALLOCATOR_API_KEYS"
MiB = 1024 * 1024


def default_data_dir() -> Path:
    from allocator.models.corpus import cache_dir

    return cache_dir() / "serve"


@dataclass
class ServeConfig:
    """``data_dir`` holds the job database and job folders; job settings may only name model and
    text paths under ``data_root``. ``keys`` maps API key -> owner name; empty means no keys
    (allowed only on a loopback address). ``workers``: processes for synchronous solves and
    concurrent jobs (0 = solve on threads, for tests)."""

    data_dir: Path = field(default_factory=default_data_dir)
    data_root: Path | None = None
    database_url: str | None = None
    ray: str | None = None  # "local", "auto" or a Ray cluster address: jobs run as Ray tasks
    workers: int = 2
    job_slots: int | None = None
    keys: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = 64 * MiB
    max_table_cells: int = 20_000_000
    max_budgets: int = 64
    log_tail_lines: int = 40
    run_jobs: bool = True

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        if self.data_root is None:
            self.data_root = self.data_dir / "inputs"
        self.data_root = Path(self.data_root).absolute()
        if self.workers < 0:
            raise InputError(f"--workers {self.workers}: give 0 or more")

    @property
    def slots(self) -> int:
        return self.job_slots if self.job_slots is not None else max(1, self.workers)

    @property
    def root(self) -> Path:
        assert self.data_root is not None
        return self.data_root


def _owner_for(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_keys(text: str, source: str) -> dict[str, str]:
    """``name:key`` or ``key`` entries, one per line or comma-separated; ``#`` starts a comment."""
    keys: dict[str, str] = {}
    for raw in text.replace(",", "\n").splitlines():
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        name, sep, key = entry.partition(":")
        if not sep:
            name, key = "", name
        name, key = name.strip(), key.strip()
        if len(key) < 8:
            raise InputError(f"{source}: API key of {name or 'an entry'} is shorter than 8 chars")
        keys[key] = name or _owner_for(key)
    return keys


def load_keys(keys_file: Path | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """Keys from ``keys_file`` and the ALLOCATOR_API_KEYS environment variable."""
    environ: Mapping[str, str] = os.environ if env is None else env
    keys: dict[str, str] = {}
    if keys_file is not None:
        path = Path(keys_file)
        if not path.is_file():
            raise InputError(f"--keys-file {path}: no such file")
        keys.update(parse_keys(path.read_text(), str(path)))
    if environ.get(KEYS_ENV):
        keys.update(parse_keys(environ[KEYS_ENV], KEYS_ENV))
    return keys
