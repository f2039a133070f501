"""llama.cpp's own perplexity: allocator plans vs llama.cpp presets at the same file size.

Everything is quantized by llama.cpp (``llama_model_quantize`` through llama-cpp-python) from the
same F32 GGUF with the same importance matrix (allocator's: mean squared inputs on the
calibration text), and evaluated by llama.cpp (logits from ``llama_cpp.Llama``) on the same
held-out token windows:

1. for each preset (Q3_K_M, Q4_K_M, Q5_K_M) its file, and the bytes of its block linear tensors;
2. a sensitivity table whose options are ggml types: for each option (bit widths 2-8, and 4 and
   5 bits both asymmetric and ``-sym``), llama.cpp quantizes every block linear to the type the
   option maps to (``ggml_type_for``: K-quants where rows are multiples of 256, else Q4_1/Q5_1
   for asymmetric and Q4_0/Q5_0 for symmetric options, Q8_0 above 5 bits) and allocator's
   estimator (Fisher by default) scores the real llama.cpp weight error of each tensor
   (``fisher_losses`` on the weights read back);
3. for each preset an allocator plan whose block tensors take at most the preset's bytes
   (resource ``ggml_bits``), quantized over the same preset (so embeddings and output match);
4. perplexity of all of them, the F32 GGUF, and allocator's own evaluation of the original.

Usage: ``.venv/bin/python benchmarks/deploy_gguf.py [--model smollm2] [--out results.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocator.deploy import gguf as dg
from allocator.profile.context import ProfileContext

OPTIONS = ("b2-g32", "b3-g32", "b4-g32", "b4-g32-sym", "b5-g32", "b5-g32-sym", "b6-g32", "b8-g32")


@dataclass
class GGMLContext(ProfileContext):
    """A profile context whose "compressed weight" of an option is llama.cpp's quantization of
    the unit to the ggml type that option becomes, read back from a GGUF."""

    ggml: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def compress(self, unit, option, *, with_stats=None):  # type: ignore[override]
        return torch.from_numpy(self.ggml[option.key][unit.name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--presets", default="Q3_K_M,Q4_K_M,Q5_K_M")
    parser.add_argument("--calib-windows", type=int, default=16)
    parser.add_argument("--estimator", default="fisher", help="fisher or hessian")
    parser.add_argument("--fisher-windows", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--out", default="benchmarks/results/deploy_gguf.json")
    parser.add_argument("--work", default=None, help="folder for the GGUF files (default: temp)")
    args = parser.parse_args()

    from allocator import solve
    from allocator.evaluate import evaluate
    from allocator.export.llamacpp import GGML_TYPES, ggml_type_for
    from allocator.models import corpus
    from allocator.models.gguf_names import hf_to_gguf
    from allocator.models.loader import load_model
    from allocator.models.units import find_units
    from allocator.models.windows import token_windows
    from allocator.profile.estimators.fisher import fisher_losses
    from allocator.profile.estimators.hessian import hessian_losses
    from allocator.quant.apply import uniform_plan
    from allocator.schema.constraints import Constraints
    from allocator.schema.option import Option
    from allocator.schema.table import SensitivityTable
    from allocator.schema.targets import constraints_for_target

    began = time.perf_counter()
    log: dict = {"model": args.model, "seq_len": args.seq_len}
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    units = find_units(model)
    names = [u.name for u in units]
    calib = token_windows(
        tok, corpus.default_calibration_text(), seq_len=args.seq_len,
        n_windows=args.calib_windows, seed=0,
    )  # fmt: skip
    held = token_windows(
        tok, corpus.default_evaluation_text(), seq_len=args.seq_len,
        n_windows=args.eval_windows, contiguous=True,
    )  # fmt: skip
    log["calib_tokens"], log["eval_tokens"] = calib.numel(), held.numel()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="deploy_gguf-"))
    work.mkdir(parents=True, exist_ok=True)

    def step(what: str) -> None:
        print(f"[{time.perf_counter() - began:7.1f} s] {what}", flush=True)

    f32 = dg.source_gguf(args.model, work / "f32.gguf")
    imatrix = dg.importance_matrix(model, calib)
    step(f"F32 GGUF and imatrix ({len(imatrix)} tensors)")

    # 2. a table of llama.cpp's real weight errors, scored by allocator's Fisher estimator
    options = [Option.parse(key) for key in OPTIONS]
    ggml: dict[str, dict[str, np.ndarray]] = {}
    for option in options:
        overrides, _ = dg.plan_tensor_types(uniform_plan(model, option.key), units)
        path = dg.quantize(
            f32, work / f"{option.key}.gguf", "Q8_0", overrides=overrides, imatrix=imatrix
        )
        ggml[option.key] = dg.unit_weights(path, names, model.config)
        path.unlink()
    step("per-option llama.cpp quantizations read back")
    ctx = GGMLContext(
        model=model,
        input_ids=calib[: args.fisher_windows],
        units=units,
        options=options,
        progress=False,
        ggml=ggml,
    )
    if args.estimator == "fisher":
        losses = fisher_losses(ctx)
    else:
        ctx.input_ids = calib
        losses = hessian_losses(ctx)
    del ggml, ctx
    cost = {
        u.name: {o.key: u.numel * GGML_TYPES[ggml_type_for(o, u.in_features)][0] for o in options}
        for u in units
    }
    table = SensitivityTable.from_losses(
        losses, {u.name: u for u in units}, resources={"ggml_bits": cost}
    )
    target = constraints_for_target("llamacpp", options, units)
    log["estimator"] = args.estimator
    step(f"{args.estimator} table on llama.cpp's weights")

    rows = []
    evaluated = {"F32": dg.perplexity(f32, held)}
    with torch.no_grad():
        allocator_ppl = evaluate(model, held, progress=False).perplexity
    log["f32"] = {"llama_cpp_ppl": evaluated["F32"], "allocator_eval_ppl": allocator_ppl,
                  "file_mib": f32.stat().st_size / 2**20}  # fmt: skip
    step(f"F32 ppl {evaluated['F32']:.3f} (allocator eval {allocator_ppl:.3f})")
    block_numel = sum(u.numel for u in units)
    for preset in args.presets.split(","):
        ref = dg.quantize(f32, work / f"{preset}.gguf", preset, imatrix=imatrix)
        written = dg.tensor_types(ref)
        unit_bytes = sum(written[hf_to_gguf(n)][1] for n in names)
        constraints = Constraints.model_validate(
            {
                "budget": {"avg_bits": 16},
                "resources": [{"name": "ggml_bits", "max": unit_bytes * 8}],
                **target,
            }
        )
        plan = solve(table, constraints)
        overrides, _ = dg.plan_tensor_types(plan, units)
        ours = dg.quantize(
            f32, work / f"plan-{preset}.gguf", preset, overrides=overrides, imatrix=imatrix
        )
        plan_bytes, predicted, counts = dg.check_written(ours, plan, overrides, "llama")
        for name, path in ((preset, ref), (f"allocator @ {preset}", ours)):
            evaluated[name] = dg.perplexity(path, held)
        rows.append(
            {
                "preset": preset,
                "preset_file_mib": ref.stat().st_size / 2**20,
                "plan_file_mib": ours.stat().st_size / 2**20,
                "preset_block_bpw": unit_bytes * 8 / block_numel,
                "plan_block_bpw": plan_bytes * 8 / block_numel,
                "plan_predicted_block_bytes": predicted,
                "plan_block_bytes": plan_bytes,
                "plan_types": counts,
                "preset_ppl": evaluated[preset],
                "plan_ppl": evaluated[f"allocator @ {preset}"],
            }
        )
        step(f"{preset}: preset {evaluated[preset]:.3f}, plan {rows[-1]['plan_ppl']:.3f}")
    log["rows"] = rows
    log["seconds"] = time.perf_counter() - began
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(log, indent=1) + "\n")
    print("| size of | file MiB | block bpw | llama.cpp perplexity |")
    print("|---|---|---|---|")
    print(f"| F32 | {log['f32']['file_mib']:.1f} | 32 | {evaluated['F32']:.3f} |")
    for r in rows:
        print(f"| {r['preset']} preset | {r['preset_file_mib']:.2f} | {r['preset_block_bpw']:.3f} | {r['preset_ppl']:.3f} |")  # fmt: skip
        print(f"| allocator @ {r['preset']} | {r['plan_file_mib']:.2f} | {r['plan_block_bpw']:.3f} | {r['plan_ppl']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
