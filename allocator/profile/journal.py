"""Unit-by-unit persistence of slow measurements (JSON lines), so a killed run resumes.

Line 1 is ``{"header": {...}}`` with the settings hash; each further line is
``{"unit": name, "losses": {option_key: value}}``, appended and flushed (fsync) as soon as the unit
is measured. On resume, a torn last line (the process died mid-write) is dropped, and a journal
written with other settings is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from allocator.errors import InputError
from allocator.schema.io import atomic_write_text


class Journal:
    """Appends one JSON line per finished unit; ``done`` holds what earlier runs measured."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any], resume: bool) -> None:
        self.path = Path(path)
        self.header = header
        self.done: dict[str, dict[str, float]] = {}
        lines = [json.dumps({"header": header}, sort_keys=True)]
        if self.path.is_file() and not resume:
            raise InputError(
                f"{self.path}: a journal of an earlier run exists; pass --resume to continue it "
                "or delete the file to start over"
            )
        if resume and self.path.is_file():
            lines += self._load()
        atomic_write_text(self.path, "".join(line + "\n" for line in lines))

    def _load(self) -> list[str]:
        kept = []
        raw = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(raw):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a killed run
            if number == 0:
                old = record.get("header", {}).get("settings_hash")
                if old != self.header.get("settings_hash"):
                    raise InputError(
                        f"{self.path}: journal was written with other settings (hash {old}, now "
                        f"{self.header.get('settings_hash')}); delete it or drop --resume"
                    )
                continue
            if "unit" in record and isinstance(record.get("losses"), dict):
                self.done[record["unit"]] = {k: float(v) for k, v in record["losses"].items()}
                kept.append(json.dumps(record, sort_keys=True))
        return kept

    def append(self, unit: str, losses: dict[str, float]) -> None:
        self.done[unit] = losses
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"unit": unit, "losses": losses}, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def open_journal(ctx: Any, name: str) -> Journal | None:
    """The journal named in ``ctx.settings['journal']`` (None when not asked for)."""
    path = ctx.settings.get("journal")
    if not path:
        return None
    digest = ctx.settings.get("journal_hash") or ctx.settings.get("settings_hash")
    header = {"estimator": name, "settings_hash": digest}
    return Journal(path, header, bool(ctx.settings.get("resume")))


class StateCheckpoint:
    """Running sums of an estimator (e.g. Fisher's squared gradients) saved atomically as
    safetensors every ``every_s`` seconds, so a killed run loses at most that much work.

    The file carries the settings hash and the number of windows done; one written with other
    settings is refused, and an existing one without ``resume`` is an error, like a Journal.
    """

    def __init__(self, path: str | os.PathLike[str], settings_hash: str, resume: bool,
                 every_s: float = 30.0) -> None:  # fmt: skip
        self.path = Path(path)
        self.settings_hash = settings_hash
        self.every_s = every_s
        self.last = time_now()
        if self.path.is_file() and not resume:
            raise InputError(
                f"{self.path}: a checkpoint of an earlier run exists; pass --resume to continue "
                "it or delete the file to start over"
            )
        self.resume = resume

    def load(self) -> tuple[dict[str, Any], int] | None:
        """(tensors, windows done) of an earlier run with the same settings, or None."""
        if not (self.resume and self.path.is_file()):
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("settings_hash") != self.settings_hash:
                raise InputError(
                    f"{self.path}: checkpoint was written with other settings; delete it or "
                    "drop --resume"
                )
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        return tensors, int(meta.get("done", 0))

    def maybe_save(self, tensors: dict[str, Any], done: int, *, force: bool = False) -> None:
        if not force and time_now() - self.last < self.every_s:
            return
        from safetensors.torch import save_file

        tmp = self.path.with_name(f".{self.path.name}.tmp")
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(tmp),
            metadata={"settings_hash": self.settings_hash, "done": str(done)},
        )  # fmt: skip
        os.replace(tmp, self.path)
        self.last = time_now()


def time_now() -> float:
    import time

    return time.monotonic()


def discard_checkpoints(journal: str | os.PathLike[str] | None) -> None:
    """Remove the state checkpoints beside ``journal`` once the table they led to is saved: they
    hold one float per weight (gigabytes on large models), and a rerun would refuse to start
    over them. Unit journals (``.jsonl``: small, reusable measured points) stay."""
    if journal is None:
        return
    path = Path(journal)
    for checkpoint in path.parent.glob(f"{path.name}.*.safetensors"):
        checkpoint.unlink(missing_ok=True)


def open_checkpoint(ctx: Any, name: str) -> StateCheckpoint | None:
    """The state checkpoint beside ``ctx.settings['journal']`` (None when no journal was asked)."""
    path = ctx.settings.get("journal")
    if not path:
        return None
    digest = str(ctx.settings.get("settings_hash") or "")
    every = float(ctx.settings.get("checkpoint_every_s", 30.0))
    return StateCheckpoint(
        Path(f"{path}.{name}.safetensors"), digest, bool(ctx.settings.get("resume")), every
    )
