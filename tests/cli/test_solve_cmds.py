"""``allocator solve | check | pareto | schema`` through ``main([...])``: outputs and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from allocator.cli.main import main
from allocator.data.example import CONSTRAINTS_PATH, TABLE_PATH
from allocator.schema.io import dump_model, load_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_solve_writes_a_plan_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "plan.json"
    assert main(["solve", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "avg bits" in text and "bits histogram" in text and "3-bit" in text
    plan = load_plan(out)
    assert len(plan.assignments) == 210 and plan.avg_bits <= 3.5 + 1e-9
    assert main(["check", "--plan", str(out)]) == 0
    assert "ok" in capsys.readouterr().out


def test_solve_json_is_machine_readable(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "plan.yaml"
    args = ["solve", "--table", str(TABLE_PATH), "--constraints", str(CONSTRAINTS_PATH)]
    assert main([*args, "--out", str(out), "--json", "--solver", "ilp"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "optimal" and summary["solver"] == "ilp"
    assert summary["units"] == 210 and sum(
        summary["weight_share_by_bits"].values()
    ) == pytest.approx(1)
    assert load_plan(out).solver == "ilp"


@pytest.mark.parametrize("ext", ["yaml", "toml", "json"])
def test_example_constraint_files_solve(ext: str, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    args = ["solve", "--constraints", str(EXAMPLES / f"constraints.{ext}"), "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    plan = load_plan(out)
    assert plan.resources["bops"] <= 5.9e9
    assert len({a.option.key for a in plan.assignments}) <= 4


def test_check_fails_with_exit_5_on_a_tampered_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "plan.json"
    assert main(["solve", "--out", str(out), "--quiet"]) == 0
    plan = load_plan(out)
    plan.assignments[0].cost_bits = 1.0
    dump_model(plan, out)
    assert main(["check", "--plan", str(out)]) == 5
    captured = capsys.readouterr()
    assert "violation:" in captured.out and "cost_bits" in captured.err


def test_infeasible_budget_exits_3_with_the_minimum(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    constraints = tmp_path / "c.yaml"
    constraints.write_text(
        "budget:\n  avg_bits: 2.0\nrules:\n  - pattern: 'down_proj$'\n    min_bits: 3\n"
    )
    code = main(["solve", "--constraints", str(constraints), "--out", str(tmp_path / "p.json")])
    assert code == 3
    err = capsys.readouterr().err
    assert "smallest plan" in err and "avg bits" in err and "Binding: budget" in err
    assert not (tmp_path / "p.json").exists()


def test_unsupported_solver_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["solve", "--constraints", str(EXAMPLES / "constraints.yaml"), "--solver", "cvxpy_relax"]
    assert main([*args, "--out", str(tmp_path / "p.json")]) == 4
    assert "does not support" in capsys.readouterr().err


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("budget:\n  avg_bits: 3\nbudjet: 4\n")
    assert main(["solve", "--constraints", str(bad), "--out", str(tmp_path / "p.json")]) == 2
    assert "budjet" in capsys.readouterr().err
    assert main(["solve", "--table", str(tmp_path / "missing.json"), "--out", "x.json"]) == 2
    assert main(["solve", "--bogus-flag"]) == 2


def test_pareto_writes_json_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "front.json"
    assert main(["pareto", "--out", str(out), "--budgets", "2,3,4", "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert [p["feasible"] for p in data["points"]] == [False, True, True]
    assert "plan" not in data["points"][1]
    csv_out = tmp_path / "front.csv"
    assert main(["pareto", "--out", str(csv_out), "--budgets", "3,4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["budget_avg_bits"] == 3.0
    assert csv_out.read_text().count("\n") == 3
    assert main(["pareto", "--out", str(out), "--budgets", "3,x"]) == 2


def test_schema_prints_json_schema(capsys: pytest.CaptureFixture) -> None:
    assert main(["schema", "constraints"]) == 0
    assert "budget" in json.loads(capsys.readouterr().out)["properties"]
    assert main(["schema", "nonsense"]) == 2


def test_console_script_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    exe = shutil.which("allocator") or f"{sys.executable} -m allocator"
    result = subprocess.run(
        [*exe.split(), "solve", "--out", str(tmp_path / "p.json"), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["units"] == 210  # no solver banner on stdout
