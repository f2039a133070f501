"""Quality on several real models: ``allocator run``'s default vs uniform GPTQ and the llama.cpp rule.

For each model (with its own calibration and held-out evaluation text) and each budget, the
default ``allocator run`` job writes its results (unmodified, plan, uniform GPTQ of the same or
smaller size, all evaluated in one streamed pass); this script adds the llama.cpp Q4_K_M-style
rule at the same budget (GPTQ, same calibration windows), evaluated on the same windows, and
writes a markdown table. Each (model, budget) row is cached in ``results/models/``; the job's
table is shared across budgets (one ``runs`` folder per model).

    python benchmarks/models.py                                  # every model, 3.5 and 4.25
    python benchmarks/models.py --models gemma3-270m --budgets 3.5
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from allocator.pipeline import RunSettings, run

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "models"
RUNS = ROOT.parent / "runs" / "bench"
MODELS = {
    "smollm2": ("austen-calib", "austen-eval"),
    "gemma3-270m": ("pydoc-calib", "pydoc-eval"),
}


def llama_rule_row(settings: RunSettings) -> dict[str, object]:
    """The llama.cpp Q4_K_M-style rule at the budget, GPTQ, on the run's windows."""
    from allocator.evaluate import evaluate
    from allocator.models.units import find_units
    from allocator.pipeline import Job
    from allocator.quant.apply import apply_plan
    from allocator.schema import Constraints
    from allocator.solve import rules

    job = Job(settings, progress=False, log=lambda _m: None)
    units = find_units(job.loaded.model)
    constraints = Constraints.simple(settings.budget)
    from allocator.profile.options import parse_options

    ladder = parse_options("bits=2,3,4,5,6,8 group=128")
    choice = rules.llama_rule_choice(units, constraints, ladder, group_size=128)
    plan = rules.plan_from_choice(units, choice, constraints, solver="rule:llama.cpp")
    calib = job.windows("calib", settings.quant_windows, settings.seq_len)
    model = apply_plan(job.fresh_model(), plan, calib, method=settings.method, progress=False)
    eval_ids = job.windows("eval", settings.eval_windows, settings.seq_len)
    result = evaluate(model, eval_ids, job.loaded.model, progress=False)
    return {"method": "llama.cpp Q4_K_M-style rule (gptq)", "avg_bits": plan.avg_bits,
            "perplexity": result.perplexity, "kl": result.kl}  # fmt: skip


def bench(model: str, budget: float, refresh: bool) -> dict[str, object]:
    cached = RESULTS / f"{model}@{budget}.json"
    if cached.is_file() and not refresh:
        return json.loads(cached.read_text())
    calib, held_out = MODELS[model]
    settings = RunSettings(model=model, budget=budget, calib_text=[calib], eval_text=[held_out])
    began = time.perf_counter()
    results = run(settings, RUNS / model, progress=False, log=print)
    seconds = time.perf_counter() - began
    rows = list(results["rows"])
    rows.append(llama_rule_row(settings))
    record = {"model": model, "budget": budget, "calib": calib, "eval": held_out, "rows": rows,
              "validation": results.get("validation"), "run_seconds": round(seconds, 1),
              "eval_windows": results.get("eval_windows"), "seq_len": results.get("seq_len"),
              "bos": results.get("bos")}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(record, indent=1) + "\n")
    return record


def markdown(records: list[dict[str, object]]) -> str:
    lines = ["# Quality on several models (`python benchmarks/models.py`)", ""]
    for rec in records:
        bos = ", BOS first" if rec.get("bos") else ""
        lines += [f"## {rec['model']} at {rec['budget']} bits/weight "
                  f"(calibration {rec['calib']}, evaluation {rec['eval']}: "
                  f"{rec['eval_windows']} x {rec['seq_len']} tokens{bos})", "",
                  "| method | avg bits | perplexity | KL |", "|---|---|---|---|"]  # fmt: skip
        for row in rec["rows"]:  # type: ignore[union-attr]
            kl = "-" if row["kl"] is None else f"{row['kl']:.4f}"
            lines.append(
                f"| {row['method']} | {row['avg_bits']:.3f} | {row['perplexity']:.2f} | {kl} |"
            )
        val = rec.get("validation")
        if val:
            lines.append("")
            lines.append(f"Validation (held-out calibration KL): {val['measured_kl']}, chosen {val['chosen']}; "
                         f"job wall time {rec['run_seconds']} s.")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(
    models: str = typer.Option(",".join(MODELS), help="comma-separated model names"),
    budgets: str = typer.Option("3.5,4.25", help="comma-separated budgets"),
    refresh: bool = typer.Option(False, help="recompute cached rows"),
) -> None:
    records = [
        bench(m.strip(), float(b), refresh) for m in models.split(",") for b in budgets.split(",")
    ]
    text = markdown(records)
    (ROOT / "results" / "models.md").write_text(text)
    print(text)


if __name__ == "__main__":
    typer.run(main)
