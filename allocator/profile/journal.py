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
