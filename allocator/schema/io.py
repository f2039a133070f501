"""Reading and writing tables, constraints and plans (JSON, YAML, TOML, long-format CSV).

Every write is atomic (temp file in the same folder, then rename). Every read error becomes an
InputError naming the file, the field, the value and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from allocator.errors import InputError
from allocator.schema.constraints import Constraints
from allocator.schema.option import Option
from allocator.schema.plan import Plan
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit

M = TypeVar("M", bound=BaseModel)

_UMASK = os.umask(0o022)
os.umask(_UMASK)

CSV_COLUMNS = ("unit", "numel", "bits", "group_size", "sparsity", "loss")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text to path atomically: a reader sees the old file or the new one, never half."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One readable line per problem: where (file and field path), what value, what is wrong."""
    lines = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing; add it"
        lines.append(f"{source}: field '{loc}' = {shown}: {msg}")
    more = len(exc.errors()) - 5
    if more > 0:
        lines.append(f"... and {more} more problems")
    return "\n".join(lines)


def read_structured(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON, YAML or TOML file by its extension."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file; check the path")
    suffix = p.suffix.lower()
    text = p.read_text(encoding="utf-8")
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if suffix == ".toml":
            return tomllib.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{p}: not valid {suffix[1:].upper()}: {exc}") from None
    raise InputError(f"{p}: unknown extension {suffix!r}; use .json, .yaml, .yml or .toml")


def validate(model: type[M], data: Any, source: str) -> M:
    if not isinstance(data, dict):
        raise InputError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, source)) from None


def load_constraints(path: str | os.PathLike[str]) -> Constraints:
    return validate(Constraints, read_structured(path), str(path))


def load_plan(path: str | os.PathLike[str]) -> Plan:
    return validate(Plan, read_structured(path), str(path))


def load_table(path: str | os.PathLike[str]) -> SensitivityTable:
    """Read a table from JSON (the full schema) or from a long-format CSV."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        if not p.is_file():
            raise InputError(f"{p}: no such file; check the path")
        return table_from_csv(p.read_text(encoding="utf-8"), source=str(p))
    return validate(SensitivityTable, read_structured(p), str(p))


def _csv_float(row: dict[str, str], column: str, line: int, source: str) -> float:
    raw = (row.get(column) or "").strip()
    try:
        return float(raw)
    except ValueError:
        raise InputError(
            f"{source}: line {line}, column '{column}' = {raw!r}: expected a number"
        ) from None


def table_from_csv(text: str, source: str = "<csv>") -> SensitivityTable:
    """Long format: one row per (unit, option) with columns ``unit,numel,bits,group_size,sparsity,loss``.

    Optional columns: ``symmetric`` (0/1), ``method``, ``nm`` (e.g. ``2:4``), ``out_features`` and
    ``in_features`` (shape). An empty group_size, ``c`` or ``-1`` means per-channel.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(
            f"{source}: missing CSV columns {missing}; the header must include {','.join(CSV_COLUMNS)}"
        )
    units: dict[str, Unit] = {}
    options: dict[str, Option] = {}
    losses: dict[str, dict[str, float]] = {}
    for line, row in enumerate(reader, start=2):
        name = (row["unit"] or "").strip()
        if not name:
            raise InputError(f"{source}: line {line}, column 'unit' is empty")
        group_raw = (row.get("group_size") or "").strip()
        fields: dict[str, Any] = {
            "bits": int(_csv_float(row, "bits", line, source)),
            "group_size": None if group_raw in ("", "c", "-1", "0") else int(float(group_raw)),
            "symmetric": (row.get("symmetric") or "0").strip().lower() in ("1", "true", "yes"),
            "method": (row.get("method") or "rtn").strip() or "rtn",
        }
        nm = (row.get("nm") or "").strip()
        if nm:
            n, m = (int(x) for x in nm.split(":"))
            fields.update(sparsity_pattern="nm", nm=(n, m), sparsity=1 - n / m)
        else:
            fields["sparsity"] = (
                _csv_float(row, "sparsity", line, source) if row["sparsity"].strip() else 0.0
            )
        option = Option.parse(fields, where=f"{source}: line {line}")
        options.setdefault(option.key, option)
        shape = None
        if (row.get("out_features") or "").strip() and (row.get("in_features") or "").strip():
            shape = (int(row["out_features"]), int(row["in_features"]))
        numel = int(_csv_float(row, "numel", line, source))
        if name not in units:
            try:
                units[name] = Unit(name=name, numel=numel, shape=shape)
            except ValidationError as exc:
                raise InputError(describe_validation_error(exc, f"{source}: line {line}")) from None
        elif units[name].numel != numel:
            raise InputError(
                f"{source}: line {line}: unit {name!r} has numel {numel}, earlier {units[name].numel}"
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
        text = json.dumps(data, indent=1) + "\n"
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
