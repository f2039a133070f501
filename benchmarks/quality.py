"""Quality benchmark: allocators at equal real size on SmolLM2-135M (DESIGN.md section 8 setting).

Calibration: Pride and Prejudice + Sense and Sensibility; evaluation: the first 32 contiguous
windows x 512 tokens of Persuasion. Budgets in bits per weight over the block linear layers,
overhead counted by ``allocator.cost``. Each (method, budget) row is cached in
``benchmarks/results/quality/<method>@<budget>.json`` so a killed run resumes; the table goes to
``benchmarks/results/quality.md``.

    python benchmarks/quality.py                       # every method, every budget
    python benchmarks/quality.py --methods ours,uniform --budgets 3.0,3.5
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from tqdm.auto import tqdm

from allocator.models.corpus import cache_dir, default_calibration_text, default_evaluation_text
from allocator.models.loader import load_model
from allocator.models.units import find_units
from allocator.models.windows import token_windows
from allocator.schema import Constraints, Option, Plan, SensitivityTable, Unit
from allocator.schema.io import atomic_write_text, load_table, save_table
from allocator.solve import rules

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "quality"
TABLES = ROOT / "results" / "tables"
BUDGETS = (3.0, 3.5, 2.5, 4.25)
GRID = [Option.parse(f"b{b}-g{g}") for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128, 256)]
LADDER_G128 = [Option.parse(f"b{b}-g128") for b in (2, 3, 4, 5, 6, 8)]


@dataclass
class Bench:
    """The shared state: model source, units, windows, reference log-probs on disk."""

    units: list[Unit]
    eval_ids: torch.Tensor
    calib_ids: torch.Tensor
    ref_path: Path
    quiet: bool
    cache: dict[str, Any] = field(default_factory=dict)

    def constraints(self, budget: float) -> Constraints:
        return Constraints.simple(budget)


def fresh_model() -> torch.nn.Module:
    model = load_model("smollm2").model
    model.eval()
    return model


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, ids: torch.Tensor, path: Path, quiet: bool) -> None:
    """Write the unmodified model's log-probs (n, seq, vocab) as fp16 .npy (once)."""
    if path.is_file():
        return
    tmp = path.with_suffix(".tmp.npy")
    vocab = model.config.vocab_size
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(*ids.shape, vocab))
    for i in tqdm(range(ids.shape[0]), desc="reference", disable=quiet):
        logits = model(ids[i : i + 1]).logits[0].float()
        out[i] = torch.log_softmax(logits, -1).to(torch.float16).numpy()
    out.flush()
    del out
    tmp.rename(path)


@torch.no_grad()
def evaluate(model: torch.nn.Module, bench: Bench) -> tuple[float, float]:
    """(perplexity, mean KL(reference || model) per token in nats) in one pass over eval windows."""
    ref = np.load(bench.ref_path, mmap_mode="r")
    nll, kl, count = 0.0, 0.0, 0
    for i in tqdm(range(bench.eval_ids.shape[0]), desc="eval", disable=bench.quiet):
        ids = bench.eval_ids[i : i + 1]
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        nll -= float(logp[:-1].gather(1, ids[0, 1:, None]).sum())
        ref_logp = torch.from_numpy(np.asarray(ref[i])).float().log_softmax(-1)
        kl += float((ref_logp.exp() * (ref_logp - logp)).sum())
        count += ids.shape[1]
    n_pred = bench.eval_ids.shape[0] * (bench.eval_ids.shape[1] - 1)
    return float(np.exp(nll / n_pred)), kl / count


def cached_perplexity(bench: Bench) -> float:
    """The unmodified model's perplexity from its cached log-probs (saves a forward pass)."""
    ref = np.load(bench.ref_path, mmap_mode="r")
    nll = 0.0
    for i in range(bench.eval_ids.shape[0]):
        logp = torch.from_numpy(np.asarray(ref[i])).float().log_softmax(-1)
        nll -= float(logp[:-1].gather(1, bench.eval_ids[i, 1:, None]).sum())
    return float(np.exp(nll / (bench.eval_ids.shape[0] * (bench.eval_ids.shape[1] - 1))))


def lim_scores(bench: Bench) -> dict[int, float]:
    """LIM score per block: mean 1 - cos(block input, block output) on calibration windows."""
    if "lim" not in bench.cache:
        from allocator.profile.capture import capture_stats

        capture = capture_stats(
            fresh_model(), bench.calib_ids[:8], unit_names=set(), progress=not bench.quiet
        )
        bench.cache["lim"] = {int(k): float(v) for k, v in capture.lim.items()}
    return bench.cache["lim"]


def table(name: str) -> SensitivityTable:
    path = TABLES / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table not measured yet (see the profiling benchmark)")
    return load_table(path)


def solve_table(tab: SensitivityTable, budget: float, solver: str = "auto") -> Plan:
    from allocator.solve.api import solve

    return solve(tab, Constraints.simple(budget), solver=solver)


OURS_GRID = "bits=2,3,4,5,6 group=64,128,256,c"


def fisher_diag(model: torch.nn.Module, ids: torch.Tensor, names: list[str], quiet: bool) -> dict:
    """Empirical Fisher diagonal per weight: mean over windows of (d mean-NLL / dW)^2."""
    model.requires_grad_(False)
    params = {n: model.get_submodule(n).weight for n in names}
    for p in params.values():
        p.requires_grad_(True)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in tqdm(range(ids.shape[0]), desc="fisher", disable=quiet):
        model.zero_grad(set_to_none=True)
        out = model(ids[i : i + 1], labels=ids[i : i + 1])
        out.loss.backward()
        for n, p in params.items():
            fisher[n] += p.grad.detach().square() / ids.shape[0]
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    return fisher


@torch.no_grad()
def fisher_table(bench: Bench, windows: int = 8, seq_len: int = 512) -> SensitivityTable:
    """``loss[u, o] = 1/2 sum_ij F_ij dW_ij^2`` (second-order end-to-end loss increase) with dW
    the option's RTN error and F the empirical Fisher diagonal on calibration windows."""
    from allocator.profile.options import parse_options
    from allocator.quant.compress import compress_weight

    model = fresh_model()
    loaded_tok = load_model("smollm2").tokenizer
    ids = token_windows(loaded_tok, default_calibration_text(), seq_len=seq_len,
                        n_windows=windows, seed=1)  # fmt: skip
    names = [u.name for u in bench.units]
    with torch.enable_grad():
        fisher = fisher_diag(model, ids, names, bench.quiet)
    options = parse_options(OURS_GRID)
    losses = {}
    for unit in tqdm(bench.units, desc="fisher table", disable=bench.quiet):
        weight = model.get_submodule(unit.name).weight.detach().float()
        losses[unit.name] = {
            o.key: 0.5
            * float((fisher[unit.name] * (compress_weight(weight, o) - weight).square()).sum())
            for o in options
        }
    return SensitivityTable(units=bench.units, options=options, losses=losses,
                            provenance={"estimator": "fisher(benchmark)",
                                        "settings": {"windows": windows, "seq_len": seq_len,
                                                     "seed": 1, "options": OURS_GRID}})  # fmt: skip


def ours_table(bench: Bench) -> SensitivityTable:
    """The table for ours (empirical Fisher x RTN error, cached in benchmarks/results/tables)."""
    path = TABLES / "smollm2_fisher_bench.json"
    if path.is_file():
        return load_table(path)
    tab = fisher_table(bench)
    save_table(tab, path)
    return tab


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


def with_method(plan: Plan, method: str) -> Plan:
    """The same plan with every option's quantizer set to ``method``."""
    assignments = [
        a.model_copy(update={"option": a.option.model_copy(update={"method": method})})
        for a in plan.assignments
    ]
    return plan.model_copy(update={"assignments": assignments})


def refined_plan(bench: Bench, budget: float) -> Plan:
    """Ours after closed-loop refinement (KL of the plan per layer group on 4 calib windows)."""
    from allocator.pipeline import Job, RunSettings, SubsetMeasurer
    from allocator.refine import refine
    from allocator.solve.api import solve

    if "measurer" not in bench.cache:
        job = Job(RunSettings(method="gptq"), not bench.quiet, lambda _m: None)
        bench.cache["measurer"] = SubsetMeasurer(job, 4)
    tab = ours_table(bench)
    result = refine(tab, Constraints.simple(budget), bench.cache["measurer"],
                    lambda t, c: solve(t, c), rounds=3)  # fmt: skip
    atomic_write_text(RESULTS / f"refine@{budget}.json", json.dumps(result.summary(), indent=1))
    return result.plan


# name -> (description, plan builder, quantizer)
METHODS: dict[str, tuple[str, Callable[[Bench, float], Plan], str]] = {
    "ours": (
        "ours: Fisher table, exact solve, GPTQ",
        lambda b, x: solve_table(ours_table(b), x),
        "gptq",
    ),
    "uniform": ("uniform RTN", lambda b, x: rule_plan(b, x, "uniform"), "rtn"),
    "llama": ("llama.cpp Q4_K_M rule, RTN", lambda b, x: rule_plan(b, x, "llama"), "rtn"),
    "uniform_gptq": ("uniform GPTQ", lambda b, x: rule_plan(b, x, "uniform"), "gptq"),
    "lim": ("LIM layer ordering, RTN", lambda b, x: rule_plan(b, x, "lim"), "rtn"),
    "hawq": (
        "HAWQ-V3: Hutchinson trace table, ILP, RTN",
        lambda b, x: solve_table(table("smollm2_hutchinson_g128.json"), x, "ilp"),
        "rtn",
    ),
    "baq": (
        "BAQ equal-loss closed form on hessian table, RTN",
        lambda b, x: solve_table(table("smollm2_hessian_g128.json"), x, "equal_loss"),
        "rtn",
    ),
    "exl2": (
        "ExLlamaV2-style: block_error, prod(1-err) objective, RTN",
        lambda b, x: solve_table(exl2_objective(table("smollm2_block_error_g128.json")), x),
        "rtn",
    ),
    "ours_refined": ("ours + closed-loop refinement, GPTQ", refined_plan, "gptq"),
    "ours_sparse": (
        "ours + sparsity options (KL table), GPTQ/SparseGPT",
        lambda b, x: solve_table(table("smollm2_kl_sparse_g128.json"), x),
        "gptq",
    ),
}


@torch.no_grad()
def quantize(bench: Bench, plan: Plan, quantizer: str) -> torch.nn.Module:
    """A fresh model with the plan applied (RTN fake-quant, or the executor's GPTQ apply_plan)."""
    model = fresh_model()
    if quantizer == "gptq":
        from allocator.quant.apply import apply_plan

        return apply_plan(
            model, with_method(plan, "gptq"), bench.calib_ids, progress=not bench.quiet
        )
    from allocator.quant.compress import compress_weight

    for a in plan.assignments:
        module = model.get_submodule(a.unit)
        module.weight.data = compress_weight(module.weight.data, a.option).to(module.weight.dtype)
    return model


def run_row(bench: Bench, name: str, budget: float) -> dict[str, Any]:
    out = RESULTS / f"{name}@{budget}.json"
    if out.is_file():
        return json.loads(out.read_text())
    label, build, quantizer = METHODS[name]
    t0 = time.perf_counter()
    plan = build(bench, budget)
    t1 = time.perf_counter()
    model = quantize(bench, plan, quantizer)
    t2 = time.perf_counter()
    ppl, kl = evaluate(model, bench)
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


def write_markdown(base: dict[str, Any]) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*@*.json"))]
    lines = [
        "# Quality benchmark (SmolLM2-135M, eval Persuasion 32 x 512, calib P&P + S&S)",
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
    atomic_write_text(ROOT / "results" / "quality.md", "\n".join(lines) + "\n")


def setup(quiet: bool, calib_windows: int) -> tuple[Bench, dict[str, Any]]:
    loaded = load_model("smollm2")
    tok = loaded.tokenizer
    eval_ids = token_windows(
        tok, default_evaluation_text(), seq_len=512, n_windows=32, contiguous=True
    )
    calib_ids = token_windows(
        tok, default_calibration_text(), seq_len=512, n_windows=calib_windows, seed=0
    )
    ref_path = cache_dir() / "quality" / f"ref_{loaded.model_hash[:12]}_persuasion_32x512.npy"
    ref_path.parent.mkdir(parents=True, exist_ok=True)
    reference_logprobs(loaded.model, eval_ids, ref_path, quiet)
    bench = Bench(find_units(loaded.model), eval_ids, calib_ids, ref_path, quiet)
    base_file = RESULTS / "unmodified.json"
    if base_file.is_file():
        return bench, json.loads(base_file.read_text())
    base = {"perplexity": cached_perplexity(bench), "kl": 0.0}
    atomic_write_text(base_file, json.dumps(base, indent=1) + "\n")
    return bench, base


def main(
    methods: str = typer.Option(",".join(METHODS), help="comma-separated method names"),
    budgets: str = typer.Option(",".join(str(b) for b in BUDGETS), help="bits per weight"),
    calib_windows: int = typer.Option(32, help="calibration windows of 512 tokens (GPTQ, LIM)"),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Run the quality benchmark; rows already cached are not recomputed."""
    torch.manual_seed(0)
    bench, base = setup(quiet, calib_windows)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    for budget in [float(b) for b in budgets.split(",")]:
        for name in names:
            try:
                row = run_row(bench, name, budget)
            except (FileNotFoundError, ImportError) as exc:
                print(f"skip {name}@{budget}: {exc}", file=sys.stderr)
                continue
            print(
                f"{budget:5} {name:14} bits {row['avg_bits']:.3f} ppl {row['perplexity']:8.2f} "
                f"kl {row['kl']:.4f}",
                flush=True,
            )
            write_markdown(base)


if __name__ == "__main__":
    typer.run(main)
