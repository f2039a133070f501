"""Quality on several real models: ``allocator run``'s default vs uniform GPTQ and the llama.cpp rule.

For each model (with its own calibration and held-out evaluation text) and each budget, the
default ``allocator run`` job (with ``compare_llama``) evaluates, in one streamed pass on the
same windows: the unmodified model, the plan, uniform GPTQ of the same or smaller size and the
llama.cpp Q4_K_M-style rule at the budget (GPTQ); this script collects a markdown table. Each (model, budget) row is cached in ``results/models/``; the job's
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
from allocator.quant import APPLY_REVISION

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "models"
RUNS = ROOT.parent / "runs" / "bench"
MODELS = {  # calibration text, held-out evaluation text, evaluation windows x 512 tokens
    "smollm2": ("austen-calib", "austen-eval", 32),
    "gemma3-270m": ("pydoc-calib", "pydoc-eval", 16),  # 262k vocabulary: 4x the head cost
    # a BERT sentence encoder: evaluated on 32 held-out passages (pooled-embedding cosine)
    "all-minilm-l6-v2": ("pydoc-calib", "pydoc-eval", 32),
}
ENCODERS = {"all-minilm-l6-v2"}  # no LM head: no llama.cpp rule, cosine instead of perplexity


def bench(model: str, budget: float, refresh: bool) -> dict[str, object]:
    cached = RESULTS / f"{model}@{budget}.json"
    if cached.is_file() and not refresh:
        return json.loads(cached.read_text())
    calib, held_out, windows = MODELS[model]
    settings = RunSettings(
        model=model, budget=budget, calib_text=[calib], eval_text=[held_out],
        eval_windows=windows, compare_llama=model not in ENCODERS,
    )  # fmt: skip
    began = time.perf_counter()
    results = run(settings, RUNS / model, progress=False, log=print)
    seconds = time.perf_counter() - began
    rows = list(results["rows"])
    record = {"model": model, "budget": budget, "calib": calib, "eval": held_out, "rows": rows,
              "validation": results.get("validation"), "run_seconds": round(seconds, 1),
              "eval_windows": results.get("eval_windows"), "seq_len": results.get("seq_len"),
              "bos": results.get("bos"), "task": results.get("task", "causal_lm"),
              "eval_texts": results.get("eval_texts"),
              "calibrate_options": settings.calibrate_options,
              "calibration": settings.calibration, "apply_revision": APPLY_REVISION,
              "quant_windows": settings.quant_windows}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(record, indent=1) + "\n")
    return record


def markdown(records: list[dict[str, object]]) -> str:
    lines = ["# Quality on several models (`python benchmarks/models.py`)", ""]
    for rec in records:
        lines += _rows(rec)
        lines += ["", f"GPTQ calibration: {rec.get('calibration', 'plain')} (apply revision "
                      f"{rec.get('apply_revision', '2')}), {rec.get('quant_windows', 16)} x 512 "
                      "calibration windows."]  # fmt: skip
        if rec.get("calibrate_options"):
            lines += [
                "",
                "Run with `--calibrate-options` (the default when this row was measured).",
            ]
        val = rec.get("validation")
        if val:
            lines.append("")
            lines.append(f"Validation (held-out calibration, {val.get('metric', 'mean KL')}): "
                         f"{val['measured_kl']}, chosen {val['chosen']}; "
                         f"job wall time {rec['run_seconds']} s.")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def _rows(rec: dict[str, object]) -> list[str]:
    """The record's heading and table: perplexity and KL, or embedding cosine for an encoder."""
    if rec.get("task") == "embedding":
        lines = [f"## {rec['model']} at {rec['budget']} bits/weight (encoder; calibration "
                 f"{rec['calib']}, evaluation {rec['eval']}: {rec['eval_texts']} held-out "
                 "passages, pooled embeddings vs the original)", "",
                 "| method | avg bits | mean cosine | worst cosine | relative MSE |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for row in rec["rows"]:  # type: ignore[union-attr]
            lines.append(f"| {row['method']} | {row['avg_bits']:.3f} | {row['cosine']:.4f} | "
                         f"{row['cosine_min']:.4f} | {row['relative_mse']:.4f} |")  # fmt: skip
        return lines
    bos = ", BOS first" if rec.get("bos") else ""
    lines = [f"## {rec['model']} at {rec['budget']} bits/weight "
             f"(calibration {rec['calib']}, evaluation {rec['eval']}: "
             f"{rec['eval_windows']} x {rec['seq_len']} tokens{bos})", "",
             "| method | avg bits | perplexity | KL |", "|---|---|---|---|"]  # fmt: skip
    for row in rec["rows"]:  # type: ignore[union-attr]
        kl = "-" if row["kl"] is None else f"{row['kl']:.4f}"
        lines.append(
            f"| {row['method']} | {row['avg_bits']:.3f} | {row['perplexity']:.2f} | {kl} |"
        )
    return lines


def main(
    models: str = typer.Option(",".join(MODELS), help="comma-separated model names"),
    budgets: str = typer.Option("3.5,4.25", help="comma-separated budgets"),
    refresh: bool = typer.Option(False, help="recompute cached rows"),
) -> None:
    for m in models.split(","):
        for b in budgets.split(","):
            bench(m.strip(), float(b), refresh)
    cached = [json.loads(p.read_text()) for p in RESULTS.glob("*@*.json")]  # every model measured
    records = sorted(cached, key=lambda r: (list(MODELS).index(r["model"]), r["budget"]))
    text = markdown(records)
    (ROOT / "results" / "models.md").write_text(text)
    print(text)


if __name__ == "__main__":
    typer.run(main)
