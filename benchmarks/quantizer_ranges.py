"""GPTQ's group ranges: min-max against the diag(H)-weighted range search, uniform plans.

For each model (its own calibration and held-out texts, as ``benchmarks/models.py``) and each
uniform option, applies GPTQ (act-order, 16 x 512 calibration windows, as ``allocator run``)
twice in one process: with the searched ranges (``allocator.quant.gptq.group_params``, the
default) and with plain min-max ranges (the search switched off for the baseline), and evaluates
perplexity and KL vs the unmodified model on the held-out windows. Rows are cached in
``results/quantizer_ranges.json``; ``results/quantizer_ranges.md`` is the table.

    python benchmarks/quantizer_ranges.py --models smollm2 --keys b3-g128,b4-g128
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from peers import evaluate_result, texts  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "quantizer_ranges.json"


@contextmanager
def min_max_ranges() -> Iterator[None]:
    """GPTQ and SparseGPT with min-max group ranges (the search off), restored afterwards."""
    import allocator.quant.gptq as gptq
    import allocator.quant.sparsegpt as sparsegpt

    searched = gptq.group_params

    def plain(weight: Any, bits: int, group: int, symmetric: bool, _importance: Any) -> Any:
        return searched(weight, bits, group, symmetric, None)

    gptq.group_params = sparsegpt.group_params = plain
    try:
        yield
    finally:
        gptq.group_params = sparsegpt.group_params = searched


def measure(model: str, key: str, ranges: str) -> dict[str, Any]:
    import torch

    from allocator.models.corpus import read_texts
    from allocator.models.loader import load_model
    from allocator.models.windows import token_windows
    from allocator.quant.apply import apply_plan, uniform_plan

    torch.manual_seed(0)
    loaded = load_model(model)
    calib_text, _, _ = texts(model)
    calib = token_windows(loaded.tokenizer, read_texts([calib_text]), seq_len=512, n_windows=16,
                          seed=0)  # fmt: skip
    began = time.perf_counter()
    plan = uniform_plan(loaded.model, key)
    if ranges == "min-max":
        with min_max_ranges():
            apply_plan(loaded.model, plan, calib, method="gptq", act_order=True, progress=False)
    else:
        apply_plan(loaded.model, plan, calib, method="gptq", act_order=True, progress=False)
    record = {"model": model, "key": key, "ranges": ranges, "avg_bits": plan.avg_bits,
              "apply_seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
    record.update(evaluate_result(loaded.model, model, 512, None))
    return record


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# GPTQ group ranges: min-max vs searched (`python benchmarks/quantizer_ranges.py`)",
             "", "Uniform GPTQ (act-order, 16 x 512 calibration windows); perplexity / KL vs the "
             "unmodified model on each model's held-out text.", "",
             "| model | option | avg bits | min-max: ppl / KL | searched: ppl / KL | apply s "
             "(min-max / searched) |", "|---|---|---|---|---|---|"]  # fmt: skip
    pairs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        pairs.setdefault((row["model"], row["key"]), {})[row["ranges"]] = row
    for (model, key), both in sorted(pairs.items()):
        if len(both) < 2:
            continue
        a, b = both["min-max"], both["searched"]
        lines.append(f"| {model} | {key} | {a['avg_bits']:.3f} | {a['perplexity']:.2f} / "
                     f"{a['kl']:.3f} | **{b['perplexity']:.2f} / {b['kl']:.3f}** | "
                     f"{a['apply_seconds']} / {b['apply_seconds']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(
    models: str = typer.Option("smollm2,gemma3-270m", help="comma-separated models"),
    keys: str = typer.Option("b3-g128,b4-g128", help="comma-separated uniform options"),
    refresh: bool = typer.Option(False, help="measure cached rows again"),
) -> None:
    rows: list[dict[str, Any]] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for model in models.split(","):
        for key in keys.split(","):
            for ranges in ("min-max", "searched"):
                done = [
                    r for r in rows if (r["model"], r["key"], r["ranges"]) == (model, key, ranges)
                ]
                if done and not refresh:
                    continue
                rows = [r for r in rows if r not in done] + [measure(model, key, ranges)]
                RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
                print(json.dumps(rows[-1]), flush=True)
    text = markdown(rows)
    RESULTS.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    typer.run(main)
