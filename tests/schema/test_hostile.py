"""Issue 11's hostile inputs, one test each: every one ends in an InputError (CLI exit 2) naming
the file, the field and a short form of the value, never a traceback, hang or wrong answer."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from allocator.cli.main import main
from allocator.errors import InputError
from allocator.schema import io
from allocator.schema.constraints import Constraints
from allocator.solve.api import solve
from allocator.solve.checker import check_plan
from allocator.solve.pareto import sweep
from tests.schema._golden_objects import golden_table

GOLDEN = Path(__file__).parent / "golden"
CSV_LINES = (GOLDEN / "table.csv").read_text().splitlines()


def _write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _csv(tmp_path: Path, line: int, column: str, value: str) -> Path:
    header = CSV_LINES[0].split(",")
    lines = list(CSV_LINES)
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    return _write(tmp_path / "t.csv", "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("bits", "four", "whole number"),
        ("bits", "inf", "whole number"),
        ("numel", "1e400", "whole number"),
        ("numel", "nan", "whole number"),
        ("numel", "8192.5", "whole number"),
        ("group_size", "x", "whole number"),
        ("sparsity", "x", "expected a number"),
        ("sparsity", "-inf", "finite"),
        ("loss", "1e400", "finite"),
        ("nm", "2:0", "0 < N < M"),
        ("nm", "2:4:8", "two whole numbers"),
        ("nm", "a:b", "two whole numbers"),
        ("out_features", "-64", "between 1 and"),
        ("in_features", "9" * 5000, "whole number"),
    ],
)
def test_bad_csv_cells_name_row_and_column(
    tmp_path: Path, column: str, value: str, fragment: str
) -> None:
    line = 2 if column.endswith("features") else 3  # line 2 introduces the unit's shape
    path = _csv(tmp_path, line, column, value)
    with pytest.raises(InputError, match=fragment) as info:
        io.load_table(path)
    message = str(info.value)
    assert str(path) in message and f"line {line}" in message
    assert len(message) < 600  # a 5000-digit cell is not echoed whole


def test_short_row_and_huge_cell(tmp_path: Path) -> None:
    lines = list(CSV_LINES)
    lines[2] = ",".join(lines[2].split(",")[:4])
    with pytest.raises(InputError, match=r"line 3 has 4 cells but the header has 11"):
        io.load_table(_write(tmp_path / "a.csv", "\n".join(lines) + "\n"))
    lines = list(CSV_LINES)
    lines[2] = '"' + "x" * (2 << 20) + '"' + lines[2][lines[2].index(",") :]
    with pytest.raises(InputError, match="line 3") as info:
        io.load_table(_write(tmp_path / "b.csv", "\n".join(lines) + "\n"))
    assert len(str(info.value)) < 600


def test_not_utf8(tmp_path: Path) -> None:
    for name in ("c.yaml", "t.csv", "c.json", "c.toml"):
        path = _write(tmp_path / name, b"budget:\n  avg_bits: 4\n\xff\xfe\n")
        with pytest.raises(InputError, match=r"not UTF-8 .*line 3"):
            io.load_table(path) if name.endswith("csv") else io.load_constraints(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.json", "[" * 5000 + "]" * 5000),
        ("c.yaml", "a: " + "[" * 5000 + "]" * 5000),
        ("c.toml", "a = " + "[" * 5000 + "]" * 5000),
        ("c.json", '{"budget": {"avg_bits": 4}, "x": ' + "[" * 100 + "]" * 100 + "}"),
    ],
)
def test_deep_nesting(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(InputError, match="nest"):
        io.load_constraints(_write(tmp_path / name, text))


def test_yaml_alias_bomb(tmp_path: Path) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for k in range(1, 9):
        prev, cur = chr(ord("a") + k - 1), chr(ord("a") + k)
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    started = time.perf_counter()
    with pytest.raises(InputError, match="more than"):
        io.load_constraints(_write(tmp_path / "c.yaml", "\n".join(lines) + "\n"))
    assert time.perf_counter() - started < 10


def test_huge_integers(tmp_path: Path) -> None:
    table = json.loads((GOLDEN / "table.json").read_text())
    for field, value in [("numel", 10**30), ("shape", [10**20, 2])]:
        data = json.loads(json.dumps(table))
        data["units"][2][field] = value
        with pytest.raises(InputError, match=f"units.2.*{field}"):
            io.load_table(_write(tmp_path / "t.json", json.dumps(data)))
    text = "budget:\n  avg_bits: 4\noverhead:\n  scale_bits: " + "9" * 5000 + "\n"
    with pytest.raises(InputError, match=r"c\.yaml"):
        io.load_constraints(_write(tmp_path / "c.yaml", text))
    text = "budget:\n  avg_bits: 4\noverhead:\n  zero_bits: 1000000000000000000000\n"
    with pytest.raises(InputError, match=r"overhead\.zero_bits"):
        io.load_constraints(_write(tmp_path / "d.yaml", text))


def test_negative_shape_is_refused_by_solve_and_check(tmp_path: Path) -> None:
    data = json.loads((GOLDEN / "table.json").read_text())
    data["units"][0]["shape"] = [-1000, -1]
    data["units"][0]["numel"] = 1000
    path = _write(tmp_path / "t.json", json.dumps(data))
    with pytest.raises(InputError, match="shape"):
        io.load_table(path)
    assert main(["check", "--plan", str(GOLDEN / "plan.json"), "--table", str(path)]) == 2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("budget:\n  avg_bits: .inf\n", "finite"),
        ("budget:\n  total_bytes: .nan\n", "finite"),
        ("budget:\n  avg_bits: 4\nformat_version: 2\n", "newer than the 1"),
        ("budget:\n  avg_bits: 4\nallowed:\n  keys: [b4-g128-0:0]\n", "0 < N < M"),
        ("budget:\n  avg_bits: 4\nallowed:\n  keys: [b" + "9" * 5000 + "-g128]\n", "too long"),
        ("budget:\n  avg_bits: 4\nrules:\n  - pattern: '(?=x)'\n", "RE2"),
        ("budget:\n  avg_bits: 4\nties: [['(a)\\1']]\n", "ties"),
        ("budget:\n  avg_bits: 4\nresources:\n  - name: bops\n    max: .inf\n", "finite"),
    ],
)
def test_bad_constraints(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment) as info:
        io.load_constraints(_write(tmp_path / "c.yaml", text))
    assert "c.yaml" in str(info.value)


def test_newer_table_and_plan_versions(tmp_path: Path) -> None:
    for name, loader in (("table.json", io.load_table), ("plan.json", io.load_plan)):
        data = json.loads((GOLDEN / name).read_text())
        data["format_version"] = 7
        with pytest.raises(InputError, match="format_version 7, newer"):
            loader(_write(tmp_path / name, json.dumps(data)))


@pytest.mark.parametrize(
    "pattern", ["(a+)+$", "((((.*)*)*)*)*X", "(x+x+)+y", "(.*a){20}", "([a-z]+)*" * 50 + "!"]
)
def test_backtracking_patterns_run_in_linear_time(pattern: str) -> None:
    table = golden_table()
    c = Constraints.model_validate(
        {"budget": {"avg_bits": 8}, "rules": [{"pattern": pattern, "min_bits": 3}], "strict": True}
    )
    started = time.perf_counter()
    with pytest.raises(InputError, match="matches no unit"):
        solve(table, c)
    assert time.perf_counter() - started < 1.0


def test_long_pattern_is_refused_and_not_echoed(tmp_path: Path) -> None:
    text = "budget:\n  avg_bits: 4\nrules:\n  - pattern: '" + "a" * 10_000_000 + "'\n"
    started = time.perf_counter()
    with pytest.raises(InputError, match="longer than") as info:
        io.load_constraints(_write(tmp_path / "c.yaml", text))
    assert len(str(info.value)) < 1000
    assert time.perf_counter() - started < 15  # YAML parsing 10 MB, not matching it


def test_checker_refuses_what_solve_refuses() -> None:
    table = golden_table()
    plan = solve(table, Constraints.simple(8.0))
    bad = Constraints.model_validate(
        {
            "budget": {"avg_bits": 8},
            "rules": [{"pattern": "nothing_here", "min_bits": 3}],
            "strict": True,
        }
    )
    with pytest.raises(InputError, match="matches no unit"):
        solve(table, bad)
    with pytest.raises(InputError, match="matches no unit"):
        check_plan(plan, table, bad)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"time_limit": "x"}, "time_limit"),
        ({"time_limit": float("nan")}, "time_limit"),
        ({"time_limit": -1}, "time_limit"),
        ({"mip_gap": "x"}, "mip_gap"),
        ({"mip_gap": -1}, "mip_gap"),
        ({"mip_gap": float("inf")}, "mip_gap"),
        ({"solver": 3}, "solver"),
    ],
)
def test_bad_solver_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        solve(golden_table(), Constraints.simple(8.0), **kwargs)


@pytest.mark.parametrize("budgets", [[float("nan")], [float("inf")], [-1.0], [], ["x"]])
def test_bad_pareto_budgets(budgets: list) -> None:
    with pytest.raises(InputError, match="budgets"):
        sweep(golden_table(), Constraints.simple(8.0), budgets)


@pytest.mark.parametrize("budgets", ["nan", "inf", "1e400", "-3", "x"])
def test_bad_pareto_budgets_cli(tmp_path: Path, budgets: str) -> None:
    args = ["pareto", "--out", str(tmp_path / "f.json"), "--budgets", budgets, "--quiet"]
    assert main([*args, "--table", str(GOLDEN / "table.json")]) == 2


def test_out_naming_a_folder_and_bad_mip_gap(tmp_path: Path) -> None:
    c = _write(tmp_path / "c.yaml", "budget:\n  avg_bits: 8\n")
    args = ["solve", "--table", str(GOLDEN / "table.json"), "--constraints", str(c), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "ok.json")]) == 0
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert main([*args, "--out", str(tmp_path / "p.json"), "--mip-gap", "-1"]) == 2
    blocker = _write(tmp_path / "file", "x")
    assert main([*args, "--out", str(blocker / "p.json")]) == 2


def test_plan_json_is_strict(tmp_path: Path) -> None:
    plan = solve(golden_table(), Constraints.simple(8.0))
    io.save_plan(plan, tmp_path / "p.json")
    text = (tmp_path / "p.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_huge_losses_give_a_finite_gap() -> None:
    table = golden_table().model_dump()
    for row in table["losses"].values():
        for key in row:
            row[key] = 1e98 * (1 + len(key))
    from allocator.schema.table import SensitivityTable

    plan = solve(SensitivityTable.model_validate(table), Constraints.simple(8.0))
    assert plan.gap is not None and plan.gap == plan.gap and plan.gap >= 0
    table["losses"]["lm_head"]["fp16"] = 1e308
    with pytest.raises(ValueError, match="<= 1e"):
        SensitivityTable.model_validate(table)


def test_stale_temp_files_are_removed_on_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    stale = _write(tmp_path / ".plan.json.abc123.tmp", "x" * 1000)
    other = _write(tmp_path / ".other.json.abc123.tmp", "x")
    io.atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert not stale.exists()
    assert other.exists()  # a temp file of another target is not ours to remove
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".plan.json")]
    assert leftovers == []


def test_a_temp_file_in_use_is_kept(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    busy = _write(tmp_path / ".plan.json.busy.tmp", "x")
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        io.atomic_write_text(tmp_path / "plan.json", "{}\n")
        assert busy.exists()
    finally:
        os.close(fd)


def test_target_rules_for_thousands_of_experts_stay_under_the_pattern_limit() -> None:
    from allocator.patterns import MAX_PATTERN_CHARS, compile_pattern, exact_name_patterns

    kinds = ("gate_proj", "up_proj", "down_proj")
    names = [
        f"model.layers.{i}.mlp.experts.{e}.{k}"
        for i in range(48)
        for e in range(128)
        for k in kinds
    ]
    patterns = exact_name_patterns(names)
    assert len(patterns) > 1 and all(len(p) <= MAX_PATTERN_CHARS for p in patterns)
    regexes = [compile_pattern(p) for p in patterns]
    assert all(any(r.search(n) for r in regexes) for n in names[::37])
    assert not any(r.search("model.layers.48.mlp.experts.0.up_proj") for r in regexes)
