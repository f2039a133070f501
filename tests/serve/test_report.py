"""``allocator report``: a self-contained HTML page with every figure embedded, plus SVG/PNG files,
from a plan file or a run folder (results and validation overlaid)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from allocator.cli.main import main
from allocator.data.example import TABLE_PATH, load_example
from allocator.report import build_report
from allocator.schema.io import save_plan, save_table
from allocator.solve.api import solve


def test_report_from_a_plan_file(tmp_path: Path) -> None:
    plan_path = tmp_path / "plan.json"
    assert main(["solve", "--out", str(plan_path), "--quiet"]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(plan_path), "--table", str(TABLE_PATH), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("<svg") == 4 and "model.layers.0.mlp.down_proj" in text
    assert "src=" not in text  # nothing loaded from elsewhere
    for name in ("heatmap", "size_by_kind", "pareto", "sensitivity"):
        assert (tmp_path / "report_files" / f"{name}.svg").stat().st_size > 1000
        assert (tmp_path / "report_files" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_run_folder(tmp_path: Path) -> None:
    table, constraints = load_example()
    plan = solve(table, constraints, solver="mckp")
    save_plan(plan, tmp_path / "plan.json")
    save_table(table, tmp_path / "table.json")
    rows = [{"method": "unmodified", "avg_bits": 32.0, "perplexity": 20.0, "kl": 0.0},
            {"method": "plan", "avg_bits": plan.avg_bits, "perplexity": 22.0, "kl": 0.05}]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows}))
    validation = {"predicted_loss": plan.predicted_loss, "measured_kl": {"plan": 0.05}}
    (tmp_path / "validation.json").write_text(json.dumps(validation))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report.html")]) == 0
    text = (tmp_path / "report.html").read_text()
    assert text.count("<svg") == 5 and "<h2>results</h2>" in text and "22" in text
    report = build_report(plan)  # a plan alone: heatmap and sizes only
    assert sorted(report.svgs) == ["heatmap", "size_by_kind"]
