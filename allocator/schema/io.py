"""Reading and writing tables, constraints and plans (JSON, YAML, TOML, long-format CSV).

Every write is atomic (temp file in the same folder, then rename); temp files left by an
interrupted write are removed by the next write to the same path. Every read error becomes an
InputError naming the file, the field (row and column for CSV), the value (cut to ~80
characters) and the fix: files that are not UTF-8, nesting deeper than ``MAX_DEPTH``, more than
``MAX_NODES`` values (YAML aliases included), CSV cells that are not finite numbers or not
integers where one is needed, short or long CSV rows, cells over the CSV field limit.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from allocator.errors import InputError
from allocator.patterns import shown
from allocator.schema.constraints import Constraints
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit

M = TypeVar("M", bound=BaseModel)

_UMASK = os.umask(0o022)
os.umask(_UMASK)

CSV_COLUMNS = ("unit", "numel", "bits", "group_size", "sparsity", "loss")
MAX_DEPTH = 64  # nesting of mappings and lists in a structured file
MAX_NODES = 5_000_000  # values in a structured file, counting each use of a YAML alias
MAX_CSV_CELL = 1 << 20  # characters in one CSV cell
MAX_CSV_NUMBER = (
    1e30  # numel, bits, group size, shape in CSV cells (the schema bounds them further)
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text to path atomically: a reader sees the old file or the new one, never half."""
    atomic_write_bytes(path, text.encode())


def _remove_stale_temps(target: Path) -> None:
    """Delete ``.NAME.*.tmp`` files next to ``target`` left by writes that were killed.

    A write in progress holds an exclusive lock on its temp file, so only abandoned ones are
    removed (without ``fcntl``, only those untouched for an hour)."""
    import time

    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if fcntl is None:
                if time.time() - stale.stat().st_mtime > 3600:
                    stale.unlink()
                continue
            fd = os.open(stale, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: a writer holds it
                stale.unlink()
            finally:
                os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    target = Path(path)
    if target.is_dir():
        raise InputError(
            f"{target}: is a folder; name a file to write, e.g. {target / 'plan.json'}"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(target)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(
            f"{target}: cannot write here ({exc.strerror or exc}); choose a writable path"
        ) from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # marks the temp file as in use (see above)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One readable line per problem: where (file and field path), what value, what is wrong."""
    lines = []
    for err in exc.errors()[:5]:
        loc = shown(".".join(str(p) for p in err["loc"]), 200)[1:-1] or "(top level)"
        value = err.get("input")
        value_text = shown(value) if not isinstance(value, dict | list) else type(value).__name__
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing; add it"
        lines.append(f"{source}: field '{loc}' = {value_text}: {msg}")
    more = len(exc.errors()) - 5
    if more > 0:
        lines.append(f"... and {more} more problems")
    return "\n".join(lines)


def read_text(path: str | os.PathLike[str]) -> str:
    """A file's text as UTF-8, or an InputError saying where it is not."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file; check the path")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read it ({exc.strerror or exc}); check the path") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{p}: not UTF-8 text (byte {exc.start}, line {line}: {data[exc.start : exc.start + 4]!r}); "
            "save the file as UTF-8"
        ) from None


def check_shape(data: Any, source: str) -> Any:
    """``data`` when its nesting is at most ``MAX_DEPTH`` deep and it holds at most
    ``MAX_NODES`` values (each use of a YAML alias counted again); an InputError else."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise InputError(
                f"{source}: holds more than {MAX_NODES} values (YAML aliases count each time "
                "they are used); split the file or drop repeated aliases"
            )
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise InputError(
                    f"{source}: nested more than {MAX_DEPTH} levels deep; no allocator file "
                    "needs that, check the file"
                )
            children = node.values() if isinstance(node, dict) else node
            if isinstance(node, dict):
                for key in node:
                    if not isinstance(key, str | int | float | bool) and key is not None:
                        raise InputError(
                            f"{source}: mapping key {shown(key)} is not a plain value; use strings"
                        )
            stack.extend((child, depth + 1) for child in children)
    return data


def parse_structured(text: str, suffix: str, source: str) -> Any:
    """Parse JSON, YAML or TOML text; every parser failure becomes an InputError."""
    kind = suffix[1:].upper()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            # libyaml: linear time and its own nesting limit (the pure-Python scanner takes
            # seconds on a few thousand nested brackets)
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise InputError(
                f"{source}: unknown extension {suffix!r}; use .json, .yaml, .yml or .toml"
            )
    except RecursionError:
        raise InputError(
            f"{source}: nested too deeply to read as {kind} (over {MAX_DEPTH} levels); "
            "no allocator file needs that, check the file"
        ) from None
    except (json.JSONDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{source}: not valid {kind}: {shown(str(exc), 300)[1:-1]}") from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. integers over 4300 digits
        raise InputError(
            f"{source}: cannot read it as {kind}: {shown(str(exc), 200)[1:-1]}; check the file"
        ) from None
    return check_shape(data, source)


def read_structured(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON, YAML or TOML file by its extension."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml", ".toml"):
        if not p.is_file():
            raise InputError(f"{p}: no such file; check the path")
        raise InputError(f"{p}: unknown extension {suffix!r}; use .json, .yaml, .yml or .toml")
    return parse_structured(read_text(p), suffix, str(p))


def validate(model: type[M], data: Any, source: str) -> M:
    if not isinstance(data, dict):
        raise InputError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, source)) from None
    except RecursionError:
        raise InputError(f"{source}: nested too deeply; check the file") from None


def load_constraints(path: str | os.PathLike[str]) -> Constraints:
    return validate(Constraints, read_structured(path), str(path))


def load_plan(path: str | os.PathLike[str]) -> Plan:
    return validate(Plan, read_structured(path), str(path))


def load_table(path: str | os.PathLike[str]) -> SensitivityTable:
    """Read a table from JSON (the full schema) or from a long-format CSV."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return table_from_csv(read_text(p), source=str(p))
    return validate(SensitivityTable, read_structured(p), str(p))


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
            except ValidationError as exc:
                raise InputError(describe_validation_error(exc, f"{source}: line {line}")) from None
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


def dump_model(obj: BaseModel, path: str | os.PathLike[str]) -> None:
    """Write a schema object atomically as JSON, YAML or TOML (by extension)."""
    p = Path(path)
    data = obj.model_dump(mode="json", exclude_none=p.suffix.lower() == ".toml")
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False)
    elif suffix == ".toml":
        import tomli_w

        try:
            text = tomli_w.dumps(data)
        except TypeError as exc:  # TOML has no null: e.g. group_size [128, null] (per-channel)
            raise InputError(
                f"{p}: cannot write this {type(obj).__name__} as TOML ({exc}); TOML has no null "
                "(e.g. a per-channel group_size inside a list): write .yaml or .json instead"
            ) from None
    else:
        text = json.dumps(data, indent=1, allow_nan=False) + "\n"  # strict JSON: no Infinity
    atomic_write_text(p, text)


def save_table(table: SensitivityTable, path: str | os.PathLike[str]) -> None:
    if Path(path).suffix.lower() == ".csv":
        atomic_write_text(path, table_to_csv(table))
    else:
        dump_model(table, path)


def save_plan(plan: Plan, path: str | os.PathLike[str]) -> None:
    dump_model(plan, path)


def json_schema(name: str) -> dict[str, Any]:
    models: dict[str, type[BaseModel]] = {
        "constraints": Constraints,
        "table": SensitivityTable,
        "plan": Plan,
    }
    if name not in models:
        raise InputError(f"schema name {name!r}: choose one of {sorted(models)}")
    return models[name].model_json_schema()
