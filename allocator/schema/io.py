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
import json
import os
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from allocator.errors import InputError, SchemaError
from allocator.patterns import shown
from allocator.schema.base import describe_errors
from allocator.schema.constraints import Constraints
from allocator.schema.csv_table import table_from_csv, table_to_csv
from allocator.schema.plan import Plan
from allocator.schema.table import SensitivityTable

M = TypeVar("M", bound=BaseModel)

_UMASK = os.umask(0o022)
os.umask(_UMASK)

MAX_DEPTH = 64  # nesting of mappings and lists in a structured file
MAX_NODES = 5_000_000  # values in a structured file, counting each use of a YAML alias

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


def replace_folder(tmp: Path, out: Path, *, owned: Callable[[Path], bool], what: str) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an earlier ``out`` only when
    ``owned(out)`` says it is one of ours (or it is empty): readers see the old or the new."""
    import shutil

    if not out.exists():
        os.replace(tmp, out)
        return
    if not owned(out) and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not {what}; choose a new folder or empty it")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


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
    return describe_errors(exc.errors(), source)


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
    except SchemaError as exc:
        raise InputError(describe_errors(exc.errors, source)) from None
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
