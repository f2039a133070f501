"""Static analysis of what the GPU would run: the Triton kernels compiled for sm_90, no GPU needed.

Each kernel launch of ``allocator.kernels`` is run on meta tensors under a fake Triton driver
whose target is sm_90: the launch compiles the kernel as a real launch would and runs nothing
(``kernels_static_compile.py``). The cubin is then read with ``ptxas -v`` and ``nvdisasm`` from
the Triton wheel (``kernels_static_sass.py``). This script picks the cases (kernel configs per
width and M), runs them and writes the report.

Per kernel it records registers, spills, shared memory (what Triton launches with), the weight
load widths, SASS instructions per weight byte (main-loop warp instructions over the weight bytes
the loop moves per pass) and shared-memory instructions in the loop, and an issue floor: the
warp instructions of the whole call over the issue rate of an H100 SXM, next to the memory floor
of the same call at the H100 copy bandwidth measured in ``results/kernels_h100.md`` (both in
``H100``, ``kernels_static_sass.py``). A kernel whose issue floor is above its memory floor
cannot reach the bandwidth limit whatever the occupancy.

    python benchmarks/kernels_static.py              # writes benchmarks/results/kernels_static.md
    python benchmarks/kernels_static.py --quick      # M=1 only, default configs
    python benchmarks/kernels_static.py --json OUT   # the rows as JSON too

Must run without ``TRITON_INTERPRET`` (the interpreter replaces the compiler).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

from kernels_static_compile import compile_for_target, compiler_available
from kernels_static_sass import H100, Tiles, analyze, budget_per_byte

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (8192, 28672)  # K x N, the headline shape
BITS = [2, 3, 4, 5, 6, 8]
MS = [1, 4, 16]


# ---------------------------------------------------------------------------------------------
# cases: a kernel launch on meta tensors, and what it does per tile


@dataclasses.dataclass
class Case:
    path: str  # "round 2" (K-major), "round 1" (bit planes)
    bits: int
    m: int
    config: object  # KernelConfig
    note: str = ""


def _meta(shape, dtype):
    import torch

    return torch.empty(shape, dtype=dtype, device="meta")


def run_case(case: Case, k: int, n: int, group: int) -> dict:
    """Compile the case's launch for sm_90 and analyze the main kernel."""
    import torch
    from kernels_roofline import quant_bytes

    from allocator.quant.packing import plane_widths

    cfg = case.config
    widths = plane_widths(case.bits)
    x = _meta((case.m, k), torch.float16)
    scales = _meta((-(-k // group), n), torch.float16)
    with compile_for_target() as captured:
        if case.path == "round 2":
            from allocator.kernels.layout import kmajor_k
            from allocator.kernels.prepare import PreparedWeight, run_config

            words = [_meta((n, kmajor_k(k) * w // 32), torch.int32) for w in widths]
            planes = [_meta((-(-k // 32) * w, n), torch.int32) for w in widths]
            weight = PreparedWeight(planes, words, scales, scales, case.bits, group, k)
            run_config(x, weight, cfg)
        else:
            from allocator.kernels.dequant import dequant_matmul
            from allocator.kernels.matmul import launch_fused

            planes = [_meta((-(-k // 32) * w, n), torch.int32) for w in widths]
            run = dequant_matmul if cfg.dequant else launch_fused
            run(x, planes, scales, scales, case.bits, group, k, cfg)
    main = captured[0]  # the kernel (dequant path: the dequantization kernel)
    bm = cfg.block_m if not cfg.dequant else 1
    n_tiles = -(-n // cfg.block_n) * -(-k // cfg.block_k) * (-(-case.m // bm) if bm else 1)
    unique = cfg.block_n * cfg.block_k * case.bits // 8
    if case.path == "round 1" and not cfg.reshape:
        loaded = cfg.block_n * cfg.block_k * 4 * len(widths)  # every code loads its word
    else:
        loaded = unique
    row = analyze(main, Tiles(unique, loaded, n_tiles), quant_bytes(k, n, case.m, case.bits, group))
    return {"path": case.path, "bits": case.bits, "m": case.m, "config": short(cfg),
            "note": case.note, **row}  # fmt: skip


def short(config) -> str:
    """KernelConfig -> 'dot bm16 bn128 bk128 w4 st1 sk3' (or the backend's name)."""
    if config.backend != "triton":
        return config.backend
    kind = "dequant" if config.dequant else "dot" if config.use_dot else "gemv"
    flags = " reshape" if config.reshape and not config.kmajor else ""
    return (f"{kind} bm{config.block_m} bn{config.block_n} bk{config.block_k} "
            f"w{config.num_warps} st{config.num_stages} sk{config.split_k}{flags}")  # fmt: skip


def round2_cases(bits_list, ms, k, n, group, sms=132, every=False) -> list[Case]:
    """The default K-major config of each (width, M), the GEMV for M <= 4; ``every``: all."""
    from allocator.kernels.autotune import kmajor_candidates

    out = []
    for bits in bits_list:
        for m in ms:
            pool = [c for c in kmajor_candidates(m, n, k, group, sms) if c.kmajor]
            if not every:
                gemv = [c for c in pool if not c.use_dot][:1]
                pool = pool[:1] + gemv
            for i, config in enumerate(pool):
                out.append(Case("round 2", bits, m, config, "default" if i == 0 else ""))
    return out


def round1_cases(results: Path, bits_list, ms, k, n, group) -> list[Case]:
    """The configs the round-1 autotuner chose on the H100 (results/kernels_h100.json)."""
    from allocator.kernels.autotune import KernelConfig

    if not results.exists():
        return []
    out = []
    for row in json.loads(results.read_text())["rows"]:
        if (row.get("k"), row.get("n"), row.get("group")) != (k, n, group) or "config" not in row:
            continue
        if row["bits"] in bits_list and row["m"] in ms:
            fields = re.findall(r"(\w+)=(\w+)", row["config"])
            values = {f: int(v) if v.isdigit() else v == "True" for f, v in fields}
            note = f"H100: {row['ours_us']:.0f} us, {row['pct_bw']:.0f}% of copy bw"
            out.append(Case("round 1", row["bits"], row["m"], KernelConfig(**values), note))
    return out


COLUMNS = [
    ("path", "{}"), ("bits", "{}"), ("m", "{}"), ("config", "{}"), ("registers", "{}"),
    ("spills", "{}"), ("shared", "{}"), ("weight_loads", "{}"), ("weight_128", "{}"),
    ("loop_sass", "{}"), ("loop_shared", "{}"), ("load_ratio", "{:.2f}"),
    ("sass_per_byte", "{:.3f}"), ("issue_floor_us", "{:.1f}"), ("memory_floor_us", "{:.1f}"),
    ("note", "{}"),
]  # fmt: skip


def markdown(rows: list[dict], k: int, n: int, group: int, env: dict) -> str:
    budget = budget_per_byte()
    lines = [
        "# Static analysis of the low-bit kernels for sm_90 (no GPU)",
        "",
        f"`python benchmarks/kernels_static.py`: {env}. Shape K x N = {k} x {n}, group {group}, "
        "fp16 activations. Each kernel compiled by Triton for `GPUTarget('cuda', 90, 32)` with a "
        "real launch's specialization (meta tensors, a fake driver), then `ptxas -v` and "
        "`nvdisasm` from the Triton wheel.",
        "",
        "- registers / spills (bytes stored + loaded) from ptxas; shared = bytes Triton launches "
        "with; weight loads = the SASS opcodes of the packed-weight loads (every kernel loads "
        "weights `evict_first`, `.EF`; pipelined ones are `LDGSTS`), 128-bit = all of them "
        "16 bytes a thread.",
        "- loop = the main K loop (the backward branch around the weight loads): its SASS "
        "instructions and shared-memory instructions; load ratio = weight bytes its loads fetch "
        "per unique byte (round 1 without `reshape` reloads a word for every code).",
        f"- SASS/B = warp instructions of the loop per weight byte. An H100 SXM issues "
        f"{H100['sms']} x {H100['schedulers']} x {H100['clock_ghz']} GHz warp instructions/s; "
        f"at the measured copy bandwidth ({H100['copy_gbps']:.0f} GB/s) that is **{budget:.3f} "
        "warp instructions per byte**: a kernel above that cannot reach the bandwidth limit "
        "even issuing every clock.",
        "- issue floor = the whole call's warp instructions at that rate (code outside the loop "
        "once per program, the loop once per tile); memory floor = the bytes the call must "
        "move (`kernels_roofline.py`) at the copy bandwidth. Both are lower bounds, not "
        "predictions; the GPU numbers of this round are not measured yet.",
        "- round 1 = the bit-plane kernels with the configs its autotuner chose on the H100 "
        "(`kernels_h100.json`, measured time in the note); round 2 = the prepared-weight "
        "kernels' default config (and the M = 1 GEMV candidate). The GPU image may carry "
        "another Triton than the one above (the H200 image had 3.6): its SASS can differ.",
        "",
        "| " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['path']} | {row['bits']} | {row['m']} | {row['config']} | "
                         f"error: {row['error']} |" + " |" * (len(COLUMNS) - 5))  # fmt: skip
            continue
        cells = {**row, "spills": f"{row['spill_stores']}/{row['spill_loads']}",
                 "weight_loads": " ".join(row["weight_loads"])}  # fmt: skip
        lines.append("| " + " | ".join(fmt.format(cells[c]) for c, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def import_kernels() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kernels_checks import import_kernels as load

    load()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="M=1 only, round 2 defaults")
    parser.add_argument("--all", action="store_true", help="every K-major candidate config")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    reason = compiler_available()
    if reason:
        print(f"cannot compile for sm_90 here: {reason}")
        return 2
    import_kernels()
    import triton

    k, n, group = SHAPE[0], SHAPE[1], 128
    ms = [1] if args.quick else MS
    cases = round2_cases(BITS, ms, k, n, group, every=args.all)
    if not args.quick:
        h100 = ROOT / "benchmarks" / "results" / "kernels_h100.json"
        cases += round1_cases(h100, BITS, ms, k, n, group)
    rows = []
    start = time.time()
    for case in cases:
        try:
            row = run_case(case, k, n, group)
        except Exception as exc:  # report the case, keep the others
            row = {"path": case.path, "bits": case.bits, "m": case.m, "config": short(case.config),
                   "error": f"{type(exc).__name__}: {exc}"[:200]}  # fmt: skip
        print({key: row[key] for key in row if key != "grid"}, flush=True)
        rows.append(row)
    env = {"triton": triton.__version__, "target": "sm_90a", "seconds": round(time.time() - start)}
    rows.sort(key=lambda r: (r["path"] != "round 2", r["m"], r["bits"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels_static.md").write_text(markdown(rows, k, n, group, env))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
