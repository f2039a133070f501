"""GPTQ's calibration choices, uniform plans: group ranges and the order of a block's layers.

For each model (its own calibration and held-out texts, as ``benchmarks/models.py``) and each
uniform option, applies GPTQ (act-order, 16 x 512 calibration windows, as ``allocator run``) in
one process as each variant, and evaluates perplexity and KL vs the unmodified model on the
held-out windows:

- ``min-max``: plain min-max group ranges, every layer of a block calibrated on the original
  block (the round-1 quantizer);
- ``searched``: the diag(H)-weighted range search (``allocator.quant.gptq.group_params``), the
  layers calibrated on the original block;
- ``sequential``: the search, and a block's layers calibrated stage by stage on the outputs of
  the compressed earlier stages (``allocator.models.layer_order``; the default of ``apply``).

Rows are cached in ``results/quantizer_ranges.json``; ``results/quantizer_ranges.md`` is the
table.

    python benchmarks/quantizer_ranges.py --models smollm2 --keys b3-g128,b4-g128
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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

    def plain(
        weight: Any, bits: int, group: int, symmetric: bool, importance: Any
    ) -> tuple[Any, Any]:
        del importance  # min-max: no search to weight
        return searched(weight, bits, group, symmetric, None)

    gptq.group_params = sparsegpt.group_params = plain
    try:
        yield
    finally:
        gptq.group_params = sparsegpt.group_params = searched


VARIANTS = ("min-max", "searched", "sequential", "asymmetric")


def measure(model: str, key: str, variant: str, windows: int) -> dict[str, Any]:
    import torch

    from allocator.models.corpus import read_texts
    from allocator.models.loader import load_model
    from allocator.models.windows import token_windows
    from allocator.quant.apply import apply_plan, uniform_plan

    torch.manual_seed(0)
    loaded = load_model(model)
    calib_text, _, _ = texts(model)
    calib = token_windows(loaded.tokenizer, read_texts([calib_text]), seq_len=512, n_windows=windows,
                          seed=0)  # fmt: skip
    began = time.perf_counter()
    plan = uniform_plan(loaded.model, key)
    ranges = min_max_ranges() if variant == "min-max" else nullcontext()
    with ranges:
        apply_plan(loaded.model, plan, calib, method="gptq", act_order=True, progress=False,
                   calibration="plain" if variant in ("min-max", "searched") else variant)  # fmt: skip
    record = {"model": model, "key": key, "variant": variant, "calib_windows": windows,
              "avg_bits": plan.avg_bits,
              "apply_seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
    record.update(evaluate_result(loaded.model, model, 512, None))
    return record


def _windows(row: dict[str, Any]) -> int:
    return int(row.get("calib_windows", 16))  # rows measured before the option: 16


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# GPTQ calibration variants (`python benchmarks/quantizer_ranges.py`)", "",
             "Uniform GPTQ (act-order, calibration windows of 512 tokens); perplexity / KL vs the "
             "unmodified model on each model's held-out text; apply seconds in brackets. "
             "min-max: round 1; searched: group ranges searched; sequential: searched, and each "
             "block's layers calibrated stage by stage; asymmetric: sequential, aiming at the original "
             "model's outputs.", "",
             "| model | option | avg bits | calib windows | " + " | ".join(VARIANTS) + " |",
             "|---|---|---|---|" + "---|" * len(VARIANTS)]  # fmt: skip
    cells: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["model"], row["key"], _windows(row)), {})[row["variant"]] = row
    for (model, key, windows), by_variant in sorted(cells.items()):
        bits = next(iter(by_variant.values()))["avg_bits"]
        shown = [
            f"{r['perplexity']:.2f} / {r['kl']:.3f} ({r['apply_seconds']:.0f} s)"
            if (r := by_variant.get(v))
            else "not run"
            for v in VARIANTS
        ]
        lines.append(f"| {model} | {key} | {bits:.3f} | {windows} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def main(
    models: str = typer.Option("smollm2,gemma3-270m", help="comma-separated models"),
    keys: str = typer.Option("b3-g128,b4-g128", help="comma-separated uniform options"),
    variants: str = typer.Option(",".join(VARIANTS), help="comma-separated variants"),
    windows: int = typer.Option(16, help="calibration windows of 512 tokens (run: 16)"),
    refresh: bool = typer.Option(False, help="measure cached rows again"),
) -> None:
    rows: list[dict[str, Any]] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for model in models.split(","):
        for key in keys.split(","):
            for variant in variants.split(","):
                if variant not in VARIANTS:
                    raise typer.BadParameter(f"{variant!r}: choose from {', '.join(VARIANTS)}")
                done = [
                    r
                    for r in rows
                    if (r["model"], r["key"], r["variant"], _windows(r))
                    == (model, key, variant, windows)
                ]
                if done and not refresh:
                    continue
                rows = [r for r in rows if r not in done] + [measure(model, key, variant, windows)]
                RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
                print(json.dumps(rows[-1]), flush=True)
    text = markdown(rows)
    RESULTS.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    typer.run(main)
