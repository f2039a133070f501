"""One test per class of bad input: each raises InputError (exit 2) or InfeasibleError (exit 3)
with a message naming the file or field, the value and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocator.cli.main import main
from allocator.errors import AllocatorWarning, InfeasibleError, InputError
from allocator.schema import io
from allocator.solve.api import solve
from tests.schema._golden_objects import golden_table

GOLDEN = Path(__file__).parent / "golden"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("c.json", '{"budget": {"avg_bits": 3}', "not valid JSON"),
        ("c.yaml", "budget: [avg_bits: 3\n", "not valid YAML"),
        ("c.toml", "[budget\navg_bits = 3\n", "not valid TOML"),
        ("c.yaml", "- just\n- a list\n", "expected a mapping"),
        ("c.ini", "budget=3", "unknown extension"),
    ],
)
def test_malformed_files(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(InputError, match=fragment) as info:
        io.load_constraints(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        io.load_table(tmp_path / "nope.csv")


def test_unknown_field_names_the_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "budget:\n  avg_bits: 3\nmax_disticnt_options: 2\n")
    with pytest.raises(InputError, match=r"'max_disticnt_options'.*unknown field"):
        io.load_constraints(path)


def test_missing_and_conflicting_budget(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'budget'.*required field"):
        io.load_constraints(_write(tmp_path / "a.yaml", "rules: []\n"))
    both = "budget:\n  avg_bits: 3\n  total_bytes: 100\n"
    with pytest.raises(InputError, match="exactly one of avg_bits"):
        io.load_constraints(_write(tmp_path / "b.yaml", both))


def test_bad_option_key(tmp_path: Path) -> None:
    text = "budget:\n  avg_bits: 3\nrules:\n  - pattern: q_proj\n    pin: b4-g128-weird\n"
    with pytest.raises(InputError, match="cannot read option 'b4-g128-weird'"):
        io.load_constraints(_write(tmp_path / "c.yaml", text))


@pytest.mark.parametrize(
    ("value", "fragment"), [("NaN", "finite"), ("Infinity", "finite"), ("-0.5", ">= 0")]
)
def test_bad_loss_in_json(tmp_path: Path, value: str, fragment: str) -> None:
    data = json.loads((GOLDEN / "table.json").read_text())
    text = json.dumps(data).replace('"b3-g64": 0.25', f'"b3-g64": {value}')
    assert value in text
    with pytest.raises(InputError, match=fragment) as info:
        io.load_table(_write(tmp_path / "t.json", text))
    assert "q_proj" in str(info.value) and "b3-g64" in str(info.value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("nan", "finite"), ("inf", "finite"), ("-1", ">= 0"), ("abc", "expected a number")],
)
def test_bad_loss_in_csv(tmp_path: Path, value: str, fragment: str) -> None:
    lines = (GOLDEN / "table.csv").read_text().splitlines()
    lines[1] = lines[1].replace(",0.25,", f",{value},")
    with pytest.raises(InputError, match=fragment):
        io.load_table(_write(tmp_path / "t.csv", "\n".join(lines) + "\n"))


def test_csv_missing_column(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing CSV columns \['loss'\]"):
        io.load_table(
            _write(tmp_path / "t.csv", "unit,numel,bits,group_size,sparsity\nx,1,4,128,0\n")
        )


def test_duplicate_units_and_unknown_option_in_table(tmp_path: Path) -> None:
    data = json.loads((GOLDEN / "table.json").read_text())
    data["units"].append(data["units"][0])
    with pytest.raises(InputError, match="duplicate unit names"):
        io.load_table(_write(tmp_path / "t.json", json.dumps(data)))
    data = json.loads((GOLDEN / "table.json").read_text())
    data["losses"]["lm_head"]["b9-g128"] = 1.0
    with pytest.raises(InputError, match="'b9-g128' is not in options"):
        io.load_table(_write(tmp_path / "u.json", json.dumps(data)))


def test_pattern_matching_nothing_exits_2_when_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rule = "rules:\n  - pattern: 'o_projj$'\n    min_bits: 4\n"
    c = _write(tmp_path / "c.yaml", "budget:\n  avg_bits: 8\nstrict: true\n" + rule)
    args = ["solve", "--table", str(GOLDEN / "table.json"), "--constraints", str(c)]
    assert main([*args, "--out", str(tmp_path / "p.json")]) == 2
    assert "'o_projj$' matches no unit" in capsys.readouterr().err
    lenient = _write(tmp_path / "l.yaml", "budget:\n  avg_bits: 8\n" + rule)
    args = ["solve", "--table", str(GOLDEN / "table.json"), "--constraints", str(lenient)]
    with pytest.warns(AllocatorWarning, match="matches no unit"):
        assert main([*args, "--out", str(tmp_path / "p.json")]) == 0


def test_option_no_unit_allows_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    c = _write(tmp_path / "c.yaml", "budget:\n  avg_bits: 8\nallowed:\n  keys: [b8-g128]\n")
    args = ["solve", "--table", str(GOLDEN / "table.json"), "--constraints", str(c)]
    assert main([*args, "--out", str(tmp_path / "p.json")]) == 2
    assert "'b8-g128' is offered by no unit" in capsys.readouterr().err


def test_budget_below_minimum_exits_3_with_the_minimum(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    c = _write(tmp_path / "c.yaml", "budget:\n  avg_bits: 1.0\n")
    args = ["solve", "--table", str(GOLDEN / "table.json"), "--constraints", str(c)]
    assert main([*args, "--out", str(tmp_path / "p.json")]) == 3
    err = capsys.readouterr().err
    # smallest: q_proj b3-g64 (3.5 bits), down_proj b4-g128-2:4 or b3-g64, lm_head b4-g128
    with pytest.raises(InfeasibleError) as info:
        solve(golden_table(), io.load_constraints(c))
    smallest = info.value.min_size_bits
    assert smallest is not None and f"{smallest:.0f} bits" in err
    assert f"at least {smallest / (8192 + 32768 + 4096):.4f}" in err
    assert not (tmp_path / "p.json").exists()


def test_toml_cannot_hold_null_lists(tmp_path: Path) -> None:
    from allocator.schema.constraints import Constraints, OptionFilter

    c = Constraints.simple(4.0, allowed=OptionFilter(group_size=[128, None]))
    with pytest.raises(InputError, match="TOML has no null"):
        io.dump_model(c, tmp_path / "c.toml")
