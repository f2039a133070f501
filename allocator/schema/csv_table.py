"""Sensitivity tables as CSV (one row per unit and option): reading with every cell checked, writing."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from allocator.errors import InputError, SchemaError
from allocator.patterns import shown
from allocator.schema.base import describe_errors
from allocator.schema.option import Option
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit

CSV_COLUMNS = ("unit", "numel", "bits", "group_size", "sparsity", "loss")
MAX_CSV_CELL = 1 << 20  # characters in one CSV cell
MAX_CSV_NUMBER = (
    1e30  # numel, bits, group size, shape in CSV cells (the schema bounds them further)
)


def _csv_where(source: str, line: int, column: str, raw: str) -> str:
    return f"{source}: line {line}, column '{column}' = {shown(raw)}"


def _csv_float(row: dict[str, str], column: str, line: int, source: str) -> float:
    """A finite number from a cell; inf, nan and overflowing values (1e400) are refused."""
    raw = (row.get(column) or "").strip()
    try:
        value = float(raw)
    except ValueError:
        raise InputError(
            f"{_csv_where(source, line, column, raw)}: expected a number, e.g. 0.25"
        ) from None
    if not math.isfinite(value):
        raise InputError(
            f"{_csv_where(source, line, column, raw)}: expected a finite number (no inf or nan)"
        )
    return value


def _csv_int(row: dict[str, str], column: str, line: int, source: str) -> int:
    """A whole number from a cell (``4`` or ``4.0``), at most ``MAX_CSV_NUMBER`` in size."""
    raw = (row.get(column) or "").strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan  # reported below, as for any non-number
    if not math.isfinite(value) or abs(value) > MAX_CSV_NUMBER or value != int(value):
        raise InputError(
            f"{_csv_where(source, line, column, raw)}: expected a whole number below "
            f"{MAX_CSV_NUMBER:g}"
        )
    return int(value)


def _csv_nm(raw: str, line: int, source: str) -> tuple[int, int]:
    parts = raw.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() and len(p.strip()) <= 5 for p in parts):
        raise InputError(
            f"{_csv_where(source, line, 'nm', raw)}: write N:M sparsity as two whole numbers "
            "with 0 < N < M, e.g. 2:4"
        )
    n, m = (int(p) for p in parts)
    if not 0 < n < m:
        raise InputError(
            f"{_csv_where(source, line, 'nm', raw)}: N:M sparsity needs 0 < N < M, e.g. 2:4"
        )
    return n, m


def _csv_rows(text: str, source: str):  # type: ignore[no-untyped-def]
    """(line, row) of each data row, after checking the header and each row's cell count."""
    old_limit = csv.field_size_limit()
    csv.field_size_limit(MAX_CSV_CELL)
    try:
        reader = csv.reader(io.StringIO(text))
        try:
            header = [h.strip() for h in next(reader, [])]
        except csv.Error as exc:
            raise InputError(f"{source}: line 1 (header): not valid CSV: {exc}") from None
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise InputError(
                f"{source}: missing CSV columns {missing}; the header must include "
                f"{','.join(CSV_COLUMNS)}"
            )
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputError(
                    f"{source}: line {reader.line_num}: not valid CSV ({exc}); cells are limited "
                    f"to {MAX_CSV_CELL} characters and quotes must be closed"
                ) from None
            line = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue  # blank line
            if len(cells) != len(header):
                raise InputError(
                    f"{source}: line {line} has {len(cells)} cells but the header has "
                    f"{len(header)}; give every row one cell per column (empty cells are allowed)"
                )
            yield line, dict(zip(header, cells, strict=True))
    finally:
        csv.field_size_limit(old_limit)


def table_from_csv(text: str, source: str = "<csv>") -> SensitivityTable:
    """Long format: one row per (unit, option) with columns ``unit,numel,bits,group_size,sparsity,loss``.

    Optional columns: ``symmetric`` (0/1), ``method``, ``nm`` (e.g. ``2:4``), ``out_features`` and
    ``in_features`` (shape). An empty group_size, ``c`` or ``-1`` means per-channel.
    """
    from allocator.schema.io import validate

    units: dict[str, Unit] = {}
    options: dict[str, Option] = {}
    losses: dict[str, dict[str, float]] = {}
    for line, row in _csv_rows(text, source):
        name = (row["unit"] or "").strip()
        if not name:
            raise InputError(f"{source}: line {line}, column 'unit' is empty; name the unit")
        group_raw = (row.get("group_size") or "").strip()
        fields: dict[str, Any] = {
            "bits": _csv_int(row, "bits", line, source),
            "group_size": None
            if group_raw in ("", "c", "-1", "0")
            else _csv_int(row, "group_size", line, source),
            "symmetric": (row.get("symmetric") or "0").strip().lower() in ("1", "true", "yes"),
            "method": (row.get("method") or "rtn").strip() or "rtn",
        }
        nm = (row.get("nm") or "").strip()
        if nm:
            n, m = _csv_nm(nm, line, source)
            fields.update(sparsity_pattern="nm", nm=(n, m))
        else:
            fields["sparsity"] = (
                _csv_float(row, "sparsity", line, source) if row["sparsity"].strip() else 0.0
            )
        option = Option.parse(fields, where=f"{source}: line {line}")
        options.setdefault(option.key, option)
        shape = None
        has_out = bool((row.get("out_features") or "").strip())
        has_in = bool((row.get("in_features") or "").strip())
        if has_out != has_in:
            raise InputError(
                f"{source}: line {line}: give both out_features and in_features, or neither"
            )
        if has_out:
            shape = (
                _csv_int(row, "out_features", line, source),
                _csv_int(row, "in_features", line, source),
            )
        numel = _csv_int(row, "numel", line, source)
        if name not in units:
            try:
                units[name] = Unit(name=name, numel=numel, shape=shape)
            except SchemaError as exc:
                raise InputError(describe_errors(exc.errors, f"{source}: line {line}")) from None
        elif units[name].numel != numel or (shape is not None and shape != units[name].shape):
            earlier = units[name]
            raise InputError(
                f"{source}: line {line}: unit {shown(name)} has numel {numel} and shape {shape}, "
                f"earlier rows {earlier.numel} and {earlier.shape}; one unit has one size"
            )
        losses.setdefault(name, {})[option.key] = _csv_float(row, "loss", line, source)
    data = {
        "units": [u.model_dump() for u in units.values()],
        "options": [o.model_dump() for o in options.values()],
        "losses": losses,
        "provenance": Provenance(estimator="csv", settings={"source": source}).model_dump(),
    }
    return validate(SensitivityTable, data, source)


def table_to_csv(table: SensitivityTable) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, "symmetric", "method", "nm", "out_features", "in_features"])
    for unit in table.units:
        for key, loss in table.losses[unit.name].items():
            opt = table.option(key)
            shape = unit.shape or ("", "")
            writer.writerow(
                [
                    unit.name,
                    unit.numel,
                    opt.bits,
                    "c" if opt.group_size is None else opt.group_size,
                    f"{opt.sparsity:g}",
                    repr(loss),
                    int(opt.symmetric),
                    opt.method,
                    f"{opt.nm[0]}:{opt.nm[1]}" if opt.nm else "",
                    shape[0],
                    shape[1],
                ]
            )
    return buffer.getvalue()
