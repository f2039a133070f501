"""Quality benchmark: allocators at equal real size on SmolLM2-135M (DESIGN.md section 8 setting).

Calibration: Pride and Prejudice + Sense and Sensibility; evaluation: the first 32 contiguous
windows x 512 tokens of Persuasion. Budgets in bits per weight over the block linear layers,
overhead counted by ``allocator.schema.size``. Each (method, budget) row is cached in
``benchmarks/results/quality/<method>@<budget>.json`` so a killed run resumes; the table goes to
``benchmarks/results/quality.md``.

    python -m benchmarks.quality                       # every method, every budget
    python -m benchmarks.quality --methods ours,uniform --budgets 3.0,3.5
    python -m benchmarks.quality --model path/to.gguf --device cuda   # evaluate on a GPU

Tables for the table-based methods are measured by the library's estimators
(``benchmarks.quality_tables``) and cached in ``benchmarks/results/tables``; perplexity and KL
are the library's evaluation (``benchmarks.quality_bench``). Quantization runs on the CPU (the executor's ``apply_plan``);
evaluation and table measurement run on ``--device``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from allocator.evaluate import LogProbCache
from allocator.models.corpus import default_calibration_text, default_evaluation_text
from allocator.models.loader import load_model
from allocator.models.units import find_units
from allocator.models.windows import token_windows
from allocator.schema import Constraints, Option, Plan, SensitivityTable
from allocator.schema.io import atomic_write_text, load_table, save_table
from allocator.solve import rules

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import quality_tables as qt
from benchmarks.quality_bench import (
    Bench,
    cached_reference,
    evaluate_model,
    quantize,
    reference_perplexity,
)

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "quality"  # defaults of --results / --tables
TABLES = ROOT / "results" / "tables"
BUDGETS = (3.0, 3.5, 2.5, 4.25)
GRID = [Option.parse(f"b{b}-g{g}") for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128, 256)]
LADDER_G128 = [Option.parse(f"b{b}-g128") for b in (2, 3, 4, 5, 6, 8)]
TABLE_GRID = [
    Option.parse(f"b{b}-g{g}") for b in (2, 3, 4, 5, 6) for g in ("64", "128", "256", "c")
]
SPARSE_OPTIONS = [
    Option.parse(k) for k in ("b4-g128-2:4", "b6-g128-2:4", "b4-g128-s0.5", "b6-g128-s0.5")
]


def cached_table(bench: Bench, name: str) -> SensitivityTable:
    """Measure (once) and cache a table under TABLES: kl (dense + sparse options), fisher,
    hutchinson, block_error."""
    path = bench.tables / f"smollm2_{name}_bench.json"
    if path.is_file():
        return load_table(path)
    start = time.perf_counter()
    options = TABLE_GRID + SPARSE_OPTIONS if name == "kl" else TABLE_GRID
    model = bench.fresh_model()
    tab = qt.measure_table(model, bench.calib_ids, name, bench.units, options,
                           device=bench.device, quiet=bench.quiet)  # fmt: skip
    tab.provenance.settings["seconds"] = round(time.perf_counter() - start, 1)
    tab.provenance.settings["device"] = bench.device
    save_table(tab, path)
    return tab


def dense(tab: SensitivityTable) -> SensitivityTable:
    """The table restricted to dense options."""
    keep = [o for o in tab.options if o.sparsity == 0]
    keys = {o.key for o in keep}
    losses = {u: {k: v for k, v in row.items() if k in keys} for u, row in tab.losses.items()}
    return tab.model_copy(update={"options": keep, "losses": losses})


def lim_scores(bench: Bench) -> dict[int, float]:
    if "lim" not in bench.cache:
        bench.cache["lim"] = qt.lim_scores(bench.fresh_model(), bench.calib_ids, bench.quiet)
    return bench.cache["lim"]


def solve_table(tab: SensitivityTable, budget: float, solver: str = "auto") -> Plan:
    from allocator.solve.api import solve

    return solve(tab, Constraints.simple(budget), solver=solver)


def exl2_objective(tab: SensitivityTable) -> SensitivityTable:
    """ExLlamaV2's optimizer maximises prod(1 - err_i); its log is the additive -log(1 - err)."""
    losses = {
        u: {k: float(-np.log1p(-min(v, 0.999))) for k, v in row.items()}
        for u, row in tab.losses.items()
    }
    return tab.model_copy(update={"losses": losses})


def rule_plan(bench: Bench, budget: float, kind: str) -> Plan:
    c = bench.constraints(budget)
    start = time.perf_counter()
    if kind == "uniform":
        choice = rules.uniform_choice(bench.units, c, GRID)
    elif kind == "llama":
        choice = rules.llama_rule_choice(bench.units, c, LADDER_G128)
    else:
        choice = rules.lim_choice(bench.units, c, LADDER_G128, lim_scores(bench))
    return rules.plan_from_choice(
        bench.units, choice, c, solver=f"rule:{kind}", seconds=time.perf_counter() - start
    )


def refined_plan(bench: Bench, budget: float, name: str = "kl") -> Plan:
    """Closed-loop refinement of a table's plan: the plan's KL per layer group on calibration
    windows (RTN weights, 8 x 256 tokens), table rescaled, re-solved, best measured plan kept."""
    from allocator.refine import refine

    if "measure" not in bench.cache:
        bench.cache["measure"] = qt.ChoiceMeasure(bench.fresh_model(), bench.calib_ids, bench.quiet)
    measure = bench.cache["measure"]
    result = refine(dense(cached_table(bench, name)), Constraints.simple(budget), measure,
                    lambda t, c: solve_table(t, budget), rounds=3)  # fmt: skip
    out = bench.results / f"refine_{name}@{budget}.json"
    atomic_write_text(out, json.dumps(result.summary(), indent=1))
    return result.plan


def named_table(bench: Bench, stem: str) -> SensitivityTable:
    """A table made by ``allocator profile`` (commands in estimators.md and the README)."""
    path = bench.tables / f"{stem}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: make it with the commands in estimators.md")
    return load_table(path)


def g128_table(bench: Bench, name: str) -> SensitivityTable:
    """A table of the estimator benchmark (bits 2-6 at g128)."""
    return named_table(bench, f"smollm2_{name}_g128")


def kl_plan(bench: Bench, budget: float, sparse: bool = False, solver: str = "auto") -> Plan:
    tab = cached_table(bench, "kl")
    return solve_table(tab if sparse else dense(tab), budget, solver)


# name -> (description, plan builder, quantizer)
METHODS: dict[str, tuple[str, Callable[[Bench, float], Plan], str]] = {
    "ours": ("ours: single-unit KL table, exact solve, GPTQ", kl_plan, "gptq"),
    "uniform": ("uniform, RTN", lambda b, x: rule_plan(b, x, "uniform"), "rtn"),
    "llama": ("llama.cpp Q4_K_M rule, RTN", lambda b, x: rule_plan(b, x, "llama"), "rtn"),
    "uniform_gptq": ("uniform, GPTQ", lambda b, x: rule_plan(b, x, "uniform"), "gptq"),
    "llama_gptq": ("llama.cpp Q4_K_M rule, GPTQ", lambda b, x: rule_plan(b, x, "llama"), "gptq"),
    "ours_rtn": ("ours (KL table, exact), RTN", kl_plan, "rtn"),
    "ours_refined": ("ours + closed-loop refinement, GPTQ", refined_plan, "gptq"),
    "ours_sparse": (
        "ours + sparsity options (KL table), GPTQ/SparseGPT",
        lambda b, x: kl_plan(b, x, sparse=True),
        "gptq",
    ),
    "lim": ("LIM layer ordering, RTN", lambda b, x: rule_plan(b, x, "lim"), "rtn"),
    "hawq": (
        "HAWQ-V3: Hutchinson trace x ||dW||^2, ILP, RTN",
        lambda b, x: solve_table(cached_table(b, "hutchinson"), x, "ilp"),
        "rtn",
    ),
    "baq": (
        "BAQ-style equal-loss closed form on the KL table, RTN",
        lambda b, x: kl_plan(b, x, solver="equal_loss"),
        "rtn",
    ),
    "exl2": (
        "ExLlamaV2-style: block_error, prod(1-err) objective, RTN",
        lambda b, x: solve_table(exl2_objective(cached_table(b, "block_error")), x),
        "rtn",
    ),
    "hawq_g128": (
        "HAWQ-V3: Hutchinson trace x ||dW||^2 (g128 table), ILP, RTN",
        lambda b, x: solve_table(g128_table(b, "hutchinson"), x, "ilp"),
        "rtn",
    ),
    "baq_g128": (
        "BAQ-style equal-loss closed form on the measured KL table (g128), RTN",
        lambda b, x: solve_table(g128_table(b, "kl"), x, "equal_loss"),
        "rtn",
    ),
    "exl2_g128": (
        "ExLlamaV2-style: block_error (g128 table), prod(1-err) objective, RTN",
        lambda b, x: solve_table(exl2_objective(g128_table(b, "block_error")), x),
        "rtn",
    ),
    "kfac_gptq": (
        "ours: K-FAC table of GPTQ errors (groups 64/128/256), exact solve, GPTQ",
        lambda b, x: solve_table(named_table(b, "smollm2_kfac_gptq"), x),
        "gptq",
    ),
    "fisher_sparse": (
        "ours + sparsity options: Fisher table (bits 2-6 x g64/128/256/c x dense/2:4/50%), "
        "exact solve, GPTQ/SparseGPT",
        lambda b, x: solve_table(named_table(b, "smollm2_fisher_sparse"), x),
        "gptq",
    ),
    "kl_g128": (
        "exact solve on the measured single-unit KL table (g128), RTN",
        lambda b, x: solve_table(g128_table(b, "kl"), x),
        "rtn",
    ),
    "fisher_refined_rtn": (
        "ours: Fisher table + closed-loop refinement, RTN",
        lambda b, x: refined_plan(b, x, "fisher"),
        "rtn",
    ),
    "fisher_refined": (
        "ours: Fisher table + closed-loop refinement, GPTQ",
        lambda b, x: refined_plan(b, x, "fisher"),
        "gptq",
    ),
    "fisher_rtn": (
        "ours: Fisher table (groups 64/128/256/c), exact solve, RTN",
        lambda b, x: solve_table(cached_table(b, "fisher"), x),
        "rtn",
    ),
    "fisher": (
        "ours: Fisher table (groups 64/128/256/c), exact solve, GPTQ",
        lambda b, x: solve_table(cached_table(b, "fisher"), x),
        "gptq",
    ),
}


def run_row(bench: Bench, name: str, budget: float) -> dict[str, Any]:
    out = bench.results / f"{name}@{budget}.json"
    if out.is_file():
        return json.loads(out.read_text())
    label, build, quantizer = METHODS[name]
    t0 = time.perf_counter()
    plan = build(bench, budget)
    t1 = time.perf_counter()
    model = quantize(bench, plan, quantizer)
    t2 = time.perf_counter()
    ppl, kl = evaluate_model(model, bench)
    t3 = time.perf_counter()
    row = {
        "method": name,
        "label": label,
        "budget": budget,
        "quantizer": quantizer,
        "avg_bits": plan.avg_bits,
        "size_bytes": plan.size_bytes,
        "perplexity": ppl,
        "kl": kl,
        "predicted_loss": plan.predicted_loss,
        "alloc_s": t1 - t0,
        "quantize_s": t2 - t1,
        "eval_s": t3 - t2,
        "solver": plan.solver,
        "options": {
            k: sum(1 for a in plan.assignments if a.option.key == k)
            for k in sorted({a.option.key for a in plan.assignments})
        },
    }
    atomic_write_text(out, json.dumps(row, indent=1) + "\n")
    return row


def write_markdown(bench: Bench, base: dict[str, Any]) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(bench.results.glob("*@*.json"))]
    rows = [r for r in rows if "method" in r]
    lines = [
        f"# Quality benchmark (SmolLM2-135M, eval Persuasion {base.get('eval_windows', 32)} x 512, "
        "calib P&P + S&S)",
        "",
        f"Unmodified: perplexity {base['perplexity']:.2f}. Sizes count block linear layers with "
        "fp16 scale + zero per group. KL = mean KL(original || compressed) per token, nats.",
        "",
        "| budget | method | quantizer | avg bits | size (MB) | perplexity | KL | predicted | alloc s | quantize s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(METHODS)
    rows.sort(key=lambda r: (r["budget"], order.index(r["method"]) if r["method"] in order else 99))
    for r in rows:
        lines.append(
            f"| {r['budget']} | {r['label']} | {r['quantizer']} | {r['avg_bits']:.3f} | "
            f"{r['size_bytes'] / 1e6:.2f} | {r['perplexity']:.2f} | {r['kl']:.4f} | "
            f"{r['predicted_loss']:.4g} | {r['alloc_s']:.1f} | {r['quantize_s']:.1f} | {r['eval_s']:.1f} |"
        )
    results = bench.results
    atomic_write_text(results.parent / f"{results.name}.md", "\n".join(lines) + "\n")


def setup(
    model: str,
    device: str,
    folders: tuple[Path, Path],
    quiet: bool,
    calib_windows: int,
    cache_reference: bool,
) -> tuple[Bench, dict[str, Any]]:
    loaded = load_model(model)
    tok = loaded.tokenizer
    eval_ids = token_windows(
        tok, default_evaluation_text(), seq_len=512, n_windows=32, contiguous=True
    )
    calib_ids = token_windows(
        tok, default_calibration_text(), seq_len=512, n_windows=calib_windows, seed=0
    )
    bench = Bench(model, device, find_units(loaded.model), eval_ids, calib_ids, quiet, *folders)
    reference = loaded.model.to(device)
    bench.reference = cached_reference(reference, eval_ids, quiet) if cache_reference else reference
    base_file = bench.results / "unmodified.json"
    if base_file.is_file():
        return bench, json.loads(base_file.read_text())
    base = {"perplexity": reference_perplexity(bench, reference), "kl": 0.0, "device": device}
    atomic_write_text(base_file, json.dumps(base, indent=1) + "\n")
    return bench, base


def main(
    methods: str = typer.Option(",".join(METHODS), help="comma-separated method names"),
    budgets: str = typer.Option(",".join(str(b) for b in BUDGETS), help="bits per weight"),
    calib_windows: int = typer.Option(32, help="calibration windows of 512 tokens (GPTQ)"),
    eval_windows: int = typer.Option(32, help="evaluation windows of 512 tokens (first n)"),
    model: str = typer.Option("smollm2", help="model spec ('smollm2' or a .gguf path)"),
    device: str = typer.Option("cpu", help="device for evaluation and table measurement"),
    results: Path = typer.Option(RESULTS, help="folder of cached rows"),  # noqa: B008
    tables: Path = typer.Option(TABLES, help="folder of cached tables"),  # noqa: B008
    stop_at: float = typer.Option(0.0, help="unix time after which no new row starts (0 = none)"),
    cache_reference: bool = typer.Option(True, help="cache reference log-probs on disk (CPU)"),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Run the quality benchmark; rows already cached are not recomputed."""
    results.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    bench, base = setup(model, device, (results, tables), quiet, calib_windows,
                        cache_reference and device == "cpu")  # fmt: skip
    if eval_windows < bench.eval_ids.shape[0]:
        bench.eval_ids = bench.eval_ids[:eval_windows]
        if isinstance(bench.reference, LogProbCache):  # cached on all windows: rebuild on fewer
            bench.reference = cached_reference(bench.fresh_model(), bench.eval_ids, quiet)
        base_file = results / "unmodified.json"
        if "eval_windows" not in base:
            ppl = reference_perplexity(bench, bench.fresh_model())
            base = {"perplexity": ppl, "kl": 0.0, "device": device, "eval_windows": eval_windows}
            atomic_write_text(base_file, json.dumps(base, indent=1) + "\n")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    for budget in [float(b) for b in budgets.split(",")]:
        for name in names:
            if stop_at and time.time() > stop_at:
                print(f"stop time reached; {name}@{budget} not started", flush=True)
                continue
            try:
                row = run_row(bench, name, budget)
            except Exception as exc:  # one broken method must not lose the others' rows
                traceback.print_exc()
                print(f"FAILED {name}@{budget}: {exc!r}", flush=True)
                continue
            print(
                f"{budget:5} {name:14} bits {row['avg_bits']:.3f} ppl {row['perplexity']:8.2f} "
                f"kl {row['kl']:.4f} ({row['quantize_s'] + row['eval_s'] + row['alloc_s']:.0f}s)",
                flush=True,
            )
            write_markdown(bench, base)


if __name__ == "__main__":
    typer.run(main)
