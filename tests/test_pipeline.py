"""``allocator run`` end to end on a tiny random Llama (fast), plus one smoke test on SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocator.cli.main import main
from allocator.pipeline import RunSettings, run
from tests.helpers import sample_text, save_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random 2-block Llama with a byte-level BPE tokenizer, saved as a HF folder."""
    root = tmp_path_factory.mktemp("tiny")
    saved = save_tiny_model(root, layers=2)
    held_out = root / "eval.txt"
    held_out.write_text(sample_text(2))
    return {"model": saved["model"], "calib": saved["calib"], "eval": held_out}


def _settings(tiny: dict[str, Path], **overrides: object) -> RunSettings:
    fields: dict[str, object] = {
        "model": str(tiny["model"]),
        "budget": 3.5,
        "estimator": "hessian",
        "options": "bits=2,3,4,5 group=32",
        "profile_windows": 4,
        "profile_seq_len": 32,
        "quant_windows": 4,
        "eval_windows": 4,
        "seq_len": 32,
        "calib_text": [str(tiny["calib"])],
        "eval_text": [str(tiny["eval"])],
    }
    fields.update(overrides)
    return RunSettings(**fields)


def test_run_writes_every_output_and_fits_the_budget(tiny_model, tmp_path: Path) -> None:
    out = tmp_path / "run"
    results = run(_settings(tiny_model), out, progress=False, log=lambda _m: None)
    for name in ("table.json", "plan.json", "solved_plan.json", "validation.json", "results.json",
                 "results.md", "state.json"):  # fmt: skip
        assert (out / name).is_file(), name
    plan = json.loads((out / "plan.json").read_text())
    assert plan["avg_bits"] <= 3.5 + 1e-9
    methods = [r["method"] for r in results["rows"]]
    assert methods[0] == "unmodified" and methods[1].startswith("plan")
    assert results["validation"]["chosen"] in ("plan", "uniform")
    assert set(results["validation"]["measured_kl"]) == {"plan", "uniform"}
    assert results["validation"]["overlapping_windows"] == 0  # clear of profiling and GPTQ's
    assert (out / "checkpoint").is_dir()
    assert methods[2].startswith("uniform")
    assert results["rows"][2]["avg_bits"] <= 3.5 + 1e-9
    for row in results["rows"]:
        assert row["perplexity"] > 1.0
    assert results["rows"][1]["kl"] >= 0
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]


def test_rerun_resumes_and_a_new_budget_reuses_the_table(tiny_model, tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = _settings(tiny_model, compare_uniform=False)
    first = run(settings, out, progress=False, log=lambda _m: None)
    logs: list[str] = []
    again = run(settings, out, progress=False, log=logs.append)
    assert again == first
    assert any("profile" in m and "skipped" in m for m in logs)
    assert any("evaluate" in m and "skipped" in m for m in logs)
    logs.clear()
    lower = run(settings.model_copy(update={"budget": 3.0}), out, progress=False, log=logs.append)
    assert any("profile" in m and "skipped" in m for m in logs)
    assert not any("solve" in m and "skipped" in m for m in logs)
    assert json.loads((out / "solved_plan.json").read_text())["avg_bits"] <= 3.0 + 1e-9
    assert lower["budget"] == 3.0


def test_cli_run_quiet_and_bad_out(tiny_model, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = ["run", "--model", str(tiny_model["model"]), "--budget", "4", "--out", str(out),
            "--estimator", "hessian", "--options", "bits=2,3,4,5 group=32",
            "--profile-windows", "2", "--profile-seq-len", "32", "--quant-windows", "2",
            "--eval-windows", "2", "--seq-len", "32", "--no-compare-uniform",
            "--calib-text", str(tiny_model["calib"]), "--eval-text", str(tiny_model["eval"]),
            "--quiet"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "perplexity" in printed.out and "%|" not in printed.err
    assert (out / "results.json").is_file()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = [*args[:5], "--out", str(blocker), *args[7:]]
    assert main(bad) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.model
def test_run_on_smollm2_smoke(tmp_path: Path) -> None:
    """The real default model with tiny token budgets: a plan that fits and a sane perplexity."""
    out = tmp_path / "smollm2"
    settings = RunSettings(
        estimator="hessian",
        options="bits=3,4,5 group=128",
        profile_windows=2,
        profile_seq_len=128,
        quant_windows=2,
        eval_windows=2,
        seq_len=128,
        compare_uniform=False,
        calibrate_options=False,
        validate_windows=2,
        method="rtn",
        budget=4.5,
    )
    results = run(settings, out, progress=False, log=lambda _m: None)
    base, planned = results["rows"][0], results["rows"][1]
    assert planned["avg_bits"] <= 4.5 + 1e-9
    assert 5 < base["perplexity"] < 200
    assert planned["perplexity"] < 3 * base["perplexity"]


def test_run_with_refinement_records_rounds(tiny_model, tmp_path: Path) -> None:
    out = tmp_path / "refined"
    settings = _settings(tiny_model, compare_uniform=False, refine_rounds=2, refine_windows=2,
                         budget=3.0)  # fmt: skip
    run(settings, out, progress=False, log=lambda _m: None)
    summary = json.loads((out / "refine.json").read_text())
    assert 1 <= len(summary["rounds"]) <= 2
    first = summary["rounds"][0]
    assert first["measured"] >= 0 and len(first["group_measured"]) == len(first["scales"])
    assert summary["best_measured"] <= first["measured"]
    plan = json.loads((out / "solved_plan.json").read_text())
    assert plan["avg_bits"] <= 3.0 + 1e-9 and "refined" in plan["notes"]


def test_plan_measured_worse_than_uniform_falls_back(
    tiny_model, tmp_path: Path, monkeypatch
) -> None:
    """Validation on held-out calibration windows decides: a worse plan is replaced by uniform."""
    import allocator.evaluate as evaluation

    real = evaluation.evaluate_many

    def rigged(models, windows, reference=None, **kwargs):
        results = real(models, windows, reference, **kwargs)
        if kwargs.get("desc") == "validate":
            for name in ("plan", "near_uniform"):
                if name in results:
                    results[name].kl = results["uniform"].kl + 1.0
        return results

    monkeypatch.setattr(evaluation, "evaluate_many", rigged)
    out = tmp_path / "fallback"
    logs: list[str] = []
    results = run(_settings(tiny_model), out, progress=False, log=logs.append)
    assert results["chosen"] == "uniform"
    assert any("falling back to uniform" in m for m in logs)
    chosen = json.loads((out / "plan.json").read_text())
    assert chosen["solver"] == "rule:uniform"
    assert json.loads((out / "solved_plan.json").read_text())["solver"] != "rule:uniform"
    assert "[chosen]" in results["rows"][2]["method"]


def test_validation_measures_a_near_uniform_candidate(
    tiny_model, tmp_path: Path, monkeypatch
) -> None:
    """Validation also measures the table re-solved near the uniform setting and keeps the best
    measured candidate of the three."""
    import allocator.evaluate as evaluation

    real = evaluation.evaluate_many

    def rigged(models, windows, reference=None, **kwargs):
        results = real(models, windows, reference, **kwargs)
        if kwargs.get("desc") == "validate":
            if "plan" in results:
                results["plan"].kl = 10.0
            if "near_uniform" in results:
                results["near_uniform"].kl = 0.0
        return results

    monkeypatch.setattr(evaluation, "evaluate_many", rigged)
    out = tmp_path / "near"
    logs: list[str] = []
    settings = _settings(tiny_model, options="bits=2,3,4,5 group=32,64,c sparsity=0,0.5")
    results = run(settings, out, progress=False, log=logs.append)
    validation = json.loads((out / "validation.json").read_text())
    assert set(validation["candidates"]) == {"plan", "uniform", "near_uniform"}
    assert validation["chosen"] == results["chosen"] == "near_uniform"
    near = json.loads((out / "near_uniform_plan.json").read_text())
    assert near["avg_bits"] <= 3.5 + 1e-9
    assert all(
        a["option"]["sparsity"] == 0 and a["option"]["group_size"] for a in near["assignments"]
    )
    assert json.loads((out / "plan.json").read_text()) == near
    for name in ("plan", "uniform", "near_uniform"):
        entry = validation["candidates"][name]
        assert entry["measured"] is not None and entry["apply_key"]
    assert validation["candidates"]["plan"]["predicted"] is not None
    assert any("near uniform" in m for m in logs)
    assert any("[chosen]" in r["method"] and "near uniform" in r["method"] for r in results["rows"])
    # a rerun measures nothing again and keeps the same choice; new evaluation windows reuse
    # every candidate's checkpoint
    again = run(settings, out, progress=False, log=logs.append)
    assert again["chosen"] == "near_uniform"
    logs.clear()
    more = run(settings.model_copy(update={"eval_windows": 3}), out, progress=False,
               log=logs.append)  # fmt: skip
    assert more["chosen"] == "near_uniform" and more["rows"] != results["rows"]
    assert sum("checkpoint is up to date" in m for m in logs) == 3


def test_rescale_to_method_rescales_the_table_and_re_profiles(tiny_model, tmp_path: Path) -> None:
    out = tmp_path / "rescaled"
    quiet = {"progress": False, "log": lambda _m: None}
    base = _settings(tiny_model, validate_plan=False, compare_uniform=False)
    run(base, out, **quiet)
    plain = json.loads((out / "table.json").read_text())
    assert "method_scaling" not in plain["provenance"]["settings"]
    run(base.model_copy(update={"rescale_to_method": True}), out, **quiet)
    rescaled = json.loads((out / "table.json").read_text())
    report = rescaled["provenance"]["settings"]["method_scaling"]
    assert report["method"] == "gptq" and report["factors"]
    assert rescaled["losses"] != plain["losses"]
