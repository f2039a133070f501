"""Benchmark of the low-bit kernels against fp16 cuBLAS, on one GPU, in one run, with a roofline.

Correctness first (every width, groups 64/128, every candidate config the autotuners may pick,
fp16 inputs plus bf16/fp32 spot checks, outputs poisoned with NaN, fp64 reference), then
timings: GPU time per call from CUDA-graph replays over weight copies that defeat the L2, for
ours (a weight prepared once, ``allocator::quant_matmul_prepared``, autotuned: K-major Triton
kernels, torch's int4/int8 kernels, dequantize + cuBLAS; the column ``kernel`` says which one
each cell used), fp16 ``F.linear``, torch's int4 kernel (bf16 activations) where it applies,
optionally the round-1 bit-plane op, and a device-to-device copy (achievable bandwidth), all
in the same process.

Every timing is reported against the roofline (``kernels_roofline.py``): the bytes the call
must move over the measured copy bandwidth (and for large M the fp16 tensor-core peak, given
with ``--tflops``); ``% roof`` = floor / time.

    python benchmarks/kernels.py --round2 --budget 330 --out DIR   # benchmarks/kernels_gpu.sh
    python benchmarks/kernels.py --quick                        # subset, a few minutes
    python benchmarks/kernels.py --out results/                 # full grid
    TRITON_INTERPRET=1 python benchmarks/kernels.py --dry-run   # CPU: small correctness only
    python benchmarks/kernels.py --rereport results/kernels_h100.json   # no GPU: roofline
                                                                # view of an earlier run

Shapes are ``in_features x out_features`` (K x N). Writes ``kernels.md`` and ``kernels.json``
to ``--out`` (default ``$OUT``, else ``benchmarks/results``), rows as they come to
``kernels_rows.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from kernels_checks import (
    ROOT,
    check_capture,
    check_job,
    check_prepared_job,
    import_kernels,
    run_checks,
    summarize_checks,
)
from kernels_roofline import H100_FP16_TFLOPS, roofline

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]
MS = [1, 2, 4, 8, 16, 32, 64, 128, 512]
BITS = [2, 3, 4, 5, 6, 8]
GROUPS = [64, 128]


def environment() -> dict[str, str]:
    import torch
    import triton

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": str(torch.version.cuda),
    }
    try:
        import gemlite

        version = getattr(gemlite, "__version__", "?")
        info["gemlite"] = f"{version} installed, not benchmarked by this script"
    except ImportError:
        info["gemlite"] = "not installed"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sms=str(props.multi_processor_count))
    return info


def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=5, rep=20, return_mode="median"))


def copy_bandwidth() -> float:
    """Achievable bandwidth in GB/s: a 2 GiB device-to-device copy (bytes read + written)."""
    import torch

    src = torch.empty(2**30, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 2 / (ms * 1e-3) / 1e9


def round2_cases() -> list[tuple[tuple[int, int], int, int, int]]:
    """(shape, M, bits, group) in the order the issue's targets need them, most important first:
    decode on every width and shape, M = 16, large M, then the rest of the grid."""
    shapes = [(8192, 28672), (4096, 14336), (14336, 4096), (4096, 4096)]
    order: list[tuple[tuple[int, int], int, int, int]] = []
    for ms, bits in [([1], BITS), ([16], [4]), ([128, 512], [4]), ([4, 8], [4]), ([16], BITS),
                     ([2, 4, 8], BITS), ([64, 128, 512], BITS)]:  # fmt: skip
        for shape in shapes:
            for m in ms:
                for b in bits:
                    case = (shape, m, b, 128)
                    if case not in order:
                        order.append(case)
    return order


def time_cases(cases, bandwidth, tflops, out_dir: Path, deadline: float, round1: bool):
    """Graph-replay GPU time of ours, fp16 F.linear and the baselines, case by case."""
    import torch
    import torch.nn.functional as F
    from allocator.kernels.autotune import gpu_time_ms, rotating_copies

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows: list[dict] = []
    fp16_cache: dict[tuple[int, int, int], float] = {}
    log = open(out_dir / "kernels_rows.jsonl", "a")  # noqa: SIM115  (survives a timeout)
    for (k, n), m, bits, group in cases:
        if time.time() > deadline:
            print(f"budget spent: {len(cases) - len(rows)} cases not timed", flush=True)
            break
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        if (k, n, m) not in fp16_cache:
            w16 = rotating_copies([torch.randn(n, k, device="cuda", dtype=torch.float16)], l2)
            fp16_cache[(k, n, m)] = gpu_time_ms([lambda w=w, x=x: F.linear(x, w[0]) for w in w16])
            del w16
        try:
            row = time_one(k, n, m, bits, group, x, l2, m in round1)
        except Exception as exc:  # keep the other cases; report this one
            row = {"k": k, "n": n, "m": m, "bits": bits, "group": group,
                   "error": f"{type(exc).__name__}: {exc}"[:300]}  # fmt: skip
            print(row, flush=True)
            rows.append(row)
            continue
        roof = roofline(k, n, m, bits, group, bandwidth, tflops)
        fp16_us = fp16_cache[(k, n, m)] * 1e3
        row.update(
            fp16_us=fp16_us,
            speedup=fp16_us / row["ours_us"],
            floor_us=roof["floor_us"],
            pct_roof=100 * roof["floor_us"] / row["ours_us"],
            fp16_floor_us=roof["fp16_floor_us"],
            fp16_pct_roof=100 * roof["fp16_floor_us"] / fp16_us,
            pct_bw=100 * roof["bytes"] / (row["ours_us"] * 1e-6) / 1e9 / bandwidth,
        )
        rows.append(row)
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(
            f"{k}x{n} M={m:<4} b{bits} g{group}: {row['ours_us']:8.1f} us "
            f"({row['pct_roof']:.0f}% of roofline, {row['kernel']})  fp16 {fp16_us:8.1f} us  "
            f"x{row['speedup']:.2f}  tune {row['tune_s']:.1f}s",
            flush=True,
        )
    log.close()
    return rows


def time_one(k, n, m, bits, group, x, l2, round1: bool) -> dict:
    """One case: random packed planes (every bit pattern is a valid code), prepared, tuned, timed
    (ours; torch int4 with bf16 activations where it applies; round 1 when asked)."""
    import torch
    from allocator.kernels.autotune import gpu_time_ms, rotating_copies
    from allocator.kernels.prepare import _with_tensors, choose, prepare, run_config

    from allocator.quant.packing import plane_widths

    planes = [
        torch.randint(-(2**31), 2**31 - 1, (k // (32 // w), n), dtype=torch.int32, device=x.device)
        for w in plane_widths(bits)
    ]
    scales = (torch.rand(-(-k // group), n, device=x.device) * 0.02 + 1e-3).half()
    zeros = torch.randint(0, 2**bits, (-(-k // group), n), device=x.device).half()
    weight = prepare(planes, scales, zeros, bits, group, k)
    start = time.time()
    config = choose(x, weight)  # compile + autotune
    tune_s = time.time() - start
    copies = [_with_tensors(weight, c) for c in rotating_copies(weight.tensors(), l2)]
    ours_ms = gpu_time_ms([lambda w=w: run_config(x, w, config) for w in copies])
    eager_ms = bench_ms(lambda: run_config(x, weight, config))
    row = {
        "k": k, "n": n, "m": m, "bits": bits, "group": group, "ours_us": ours_ms * 1e3,
        "eager_us": eager_ms * 1e3, "kernel": short(config), "config": str(config),
        "tune_s": tune_s,
    }  # fmt: skip
    if weight.int4 is not None:
        xb = x.to(torch.bfloat16)
        int4 = [lambda w=w: torch.ops.aten._weight_int4pack_mm(xb, w.int4, group, w.int4_sz)
                for w in copies]  # fmt: skip
        row["torch_int4_bf16_us"] = gpu_time_ms(int4) * 1e3
    if round1:
        from allocator.kernels.matmul import triton_quant_matmul

        args = (bits, group, k)
        triton_quant_matmul(x, planes, scales, zeros, *args)  # compile + autotune
        old = [lambda w=w: triton_quant_matmul(x, w.planes, w.scales, w.zeros, *args)
               for w in copies]  # fmt: skip
        row["round1_us"] = gpu_time_ms(old) * 1e3
    del copies
    return row


def short(config) -> str:
    """The kernel a config runs: 'kdot bm16 bn128 bk128 w4 sk3', 'int4pack', 'dequant+cuBLAS'."""
    if isinstance(config, str):  # a repr from an earlier run's json
        from allocator.kernels.autotune import KernelConfig

        fields = dict(item.split("=") for item in config[config.index("(") + 1 : -1].split(", "))
        values = {f: int(v) if v.isdigit() else v == "True" if v in ("True", "False") else
                  v.strip("'") for f, v in fields.items()}  # fmt: skip
        config = KernelConfig(**values)
    if config.backend != "triton":
        return config.backend
    if config.dequant:
        return f"dequant+cuBLAS bn{config.block_n} bk{config.block_k}"
    kind = ("kdot" if config.use_dot else "kgemv") if config.kmajor else (
        "dot" if config.use_dot else "gemv")  # fmt: skip
    extra = " reshape" if config.reshape and not config.kmajor else ""
    extra += " acc3" if config.acc3 else ""
    return (f"{kind} bm{config.block_m} bn{config.block_n} bk{config.block_k} "
            f"w{config.num_warps} st{config.num_stages} sk{config.split_k}{extra}")  # fmt: skip


def markdown(env, bandwidth, tflops, checks, capture, rows, title, note="") -> str:
    peak = f", fp16 tensor-core peak {tflops:.0f} TFLOPS (spec)" if tflops else ""
    lines = [
        f"# {title}",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        f"Measured device-to-device copy bandwidth: {bandwidth:.0f} GB/s (read + write){peak}.",
    ]
    if checks:
        lines.append(
            f"Correctness: {checks['n']} checks, max rel err fp16 {checks['max_fp16']:.2e}, "
            f"failures {checks['failures']}, configs that did not build "
            f"{checks.get('build_errors', 0)}. Capture: {capture}"
        )
    lines += [
        "",
        note
        or "Times: GPU time per call from CUDA-graph replays of calls on rotating copies of the "
        "weights (3x L2, so every call reads DRAM), median of 5 replays; the same for fp16 "
        "F.linear. floor = bytes the call must move (packed codes, fp16 scales and zeros, x, "
        "out) / copy bandwidth, or the tensor-core time of 2MNK flops if longer; % roof = "
        "floor / time (100 = at the limit). fp16 % roof likewise for cuBLAS. kernel = what "
        "the autotuner chose for the cell. Shape = in x out (K x N).",
        "",
        "| K x N | M | bits | group | ours (us) | floor (us) | % roof | fp16 (us) | fp16 % roof "
        "| speedup | torch int4 bf16 (us) | round 1 (us) | eager (us) | kernel |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['k']}x{r['n']} | {r['m']} | {r['bits']} | {r['group']} | "
                         f"error: {r['error']} |" + " |" * 9)  # fmt: skip
            continue
        opt = {key: f"{r[key]:.1f}" if key in r else "" for key in
               ("torch_int4_bf16_us", "round1_us", "eager_us")}  # fmt: skip
        lines.append(
            f"| {r['k']}x{r['n']} | {r['m']} | {r['bits']} | {r['group']} | {r['ours_us']:.1f} "
            f"| {r['floor_us']:.1f} | {r['pct_roof']:.0f} | {r['fp16_us']:.1f} | "
            f"{r['fp16_pct_roof']:.0f} | {r['speedup']:.2f} | {opt['torch_int4_bf16_us']} | "
            f"{opt['round1_us']} | {opt['eager_us']} | {r['kernel']} |"
        )
    return "\n".join(lines) + "\n"


def rereport(path: Path, bandwidth: float | None, tflops: float | None, out: Path) -> str:
    """An earlier run's rows against the roofline at its measured copy bandwidth (no GPU)."""
    report = json.loads(path.read_text())
    bandwidth = bandwidth or report["bandwidth_gbps"]
    rows = []
    for row in report["rows"]:
        if "error" in row:
            rows.append(row)
            continue
        roof = roofline(row["k"], row["n"], row["m"], row["bits"], row["group"], bandwidth, tflops)
        rows.append({**row, "floor_us": roof["floor_us"],
                     "pct_roof": 100 * roof["floor_us"] / row["ours_us"],
                     "fp16_floor_us": roof["fp16_floor_us"],
                     "fp16_pct_roof": 100 * roof["fp16_floor_us"] / row["fp16_us"],
                     "kernel": short(row["config"])})  # fmt: skip
    note = (
        f"Re-reported from `{path.name}` by `python benchmarks/kernels.py --rereport` (no GPU): "
        "the round-1 bit-plane kernels' times as measured then, against the roofline at the "
        "copy bandwidth measured in that run. floor = bytes the call must move / bandwidth, or "
        "the tensor-core time of 2MNK flops at the fp16 peak if longer; % roof = floor / time."
    )
    text = markdown(report["env"], bandwidth, tflops, report.get("checks"),
                    report.get("capture"), rows, "Round-1 kernels (H100) against the roofline",
                    note)  # fmt: skip
    text += summary_by_m(rows)
    out.write_text(text)
    return text


def summary_by_m(rows: list[dict]) -> str:
    """Range of % roofline per M and width (the headline of a run)."""
    lines = ["", "## % of roofline by M (min-max over shapes and groups)", "",
             "| M | " + " | ".join(f"{b}-bit" for b in BITS) + " | fp16 |",
             "|---|" + "---|" * (len(BITS) + 1)]  # fmt: skip
    for m in sorted({r["m"] for r in rows if "error" not in r}):
        cells = []
        for b in BITS:
            vals = [r["pct_roof"] for r in rows if r.get("m") == m and r.get("bits") == b
                    and "pct_roof" in r]  # fmt: skip
            cells.append(f"{min(vals):.0f}-{max(vals):.0f}" if vals else "")
        fp16 = [r["fp16_pct_roof"] for r in rows if r.get("m") == m and "fp16_pct_roof" in r]
        cells.append(f"{min(fp16):.0f}-{max(fp16):.0f}" if fp16 else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round2", action="store_true",
                        help="the round-2 grid in priority order (the GPU script)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a subset of the grid")
    parser.add_argument("--dry-run", action="store_true", help="CPU: small correctness only")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=12, help="processes for the checks")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--round1", default="",
                        help="M values (comma-separated) whose cells also time the round-1 "
                             "bit-plane op, e.g. 1,16; 'all' for every cell")  # fmt: skip
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the timings; cases left are reported as not timed")  # fmt: skip
    parser.add_argument("--tflops", type=float, default=None,
                        help="fp16 tensor-core peak for the compute floor (H100 SXM: 989)")  # fmt: skip
    parser.add_argument("--max-m-large", type=int, default=512, help="largest M on 8192x28672")
    parser.add_argument("--rereport", type=Path, default=None,
                        help="an earlier kernels.json: write its roofline view, no GPU")  # fmt: skip
    parser.add_argument("--bandwidth", type=float, default=None,
                        help="GB/s for --rereport (default: the run's measured copy bandwidth)")  # fmt: skip
    args = parser.parse_args()
    if args.rereport:
        out = args.out or args.rereport.with_name(args.rereport.stem + "_roofline.md")
        text = rereport(args.rereport, args.bandwidth, args.tflops or H100_FP16_TFLOPS, out)
        print(text[-3000:])
        return 0
    out_dir = args.out or Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import_kernels()
    import torch

    env = environment()
    print(env, flush=True)
    if args.dry_run or not torch.cuda.is_available():
        rows = []
        for bits in (3, 4):
            rows += check_job((bits, 64, "float32", [1, 3, 17], (96, 80)))
            rows += check_prepared_job((bits, 64, "float32", [1, 3, 17], (96, 80)))
        summary = summarize_checks(rows)
        print(json.dumps({k: v for k, v in summary.items() if k != "failed"}), flush=True)
        return 1 if summary["failures"] else 0
    start = time.time()
    rows_checks = []
    if not args.skip_checks:
        quick = args.quick or args.round2
        rows_checks = run_checks(quick, args.workers, (1088, 1040), round1=not args.round2)
    checks = summarize_checks(rows_checks)
    print(f"checks: {json.dumps(checks)[:2000]} ({time.time() - start:.0f}s)", flush=True)
    capture = check_capture("cuda")
    print(f"capture: {capture}", flush=True)
    from kernels_sparse import check_sparse, time_sparse

    sparse_checks = summarize_checks(_guard(check_sparse))
    print(f"2:4 checks: {json.dumps(sparse_checks)[:1000]}", flush=True)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    if args.round2:
        cases = round2_cases()
    else:
        if args.quick:
            shapes, ms, bits, groups = [(4096, 14336)], [1, 8, 16, 128], BITS, [128]
        else:
            shapes, ms, bits, groups = SHAPES, MS, BITS, GROUPS
        cases = [((k, n), m, b, g) for k, n in shapes for m in ms for b in bits for g in groups
                 if (k, n) != (8192, 28672) or m <= args.max_m_large]  # fmt: skip
    deadline = time.time() + args.budget if args.budget else float("inf")
    round1 = (
        {m for _, m, _, _ in cases}
        if args.round1 == "all"
        else {int(m) for m in args.round1.split(",") if m}
    )
    rows = time_cases(cases, bandwidth, args.tflops, out_dir, deadline, round1)
    untimed = len(cases) - len(rows)
    sparse_rows = [] if args.round2 else _guard(lambda: time_sparse(SHAPES[:1], bandwidth))
    report = {
        "env": env,
        "bandwidth_gbps": bandwidth,
        "checks": checks,
        "capture": capture,
        "rows": rows,
        "untimed_cases": untimed,
        "sparse24_checks": sparse_checks,
        "sparse24_rows": sparse_rows,
        "seconds": time.time() - start,
    }
    (out_dir / "kernels.json").write_text(json.dumps(report, indent=1))
    title = "Low-bit kernels (round 2: prepared weights) vs fp16 cuBLAS, against the roofline"
    text = markdown(env, bandwidth, args.tflops, checks, capture, rows, title)
    if untimed:
        text += f"\n{untimed} cases of the grid were not timed (time budget).\n"
    text += summary_by_m(rows) + sparse_markdown(sparse_checks, sparse_rows)
    (out_dir / "kernels.md").write_text(text)
    print(text[-6000:], flush=True)
    failed = checks["failures"] + sparse_checks["failures"] + sparse_checks["build_errors"]
    return 1 if failed else 0


def _guard(fn) -> list[dict]:
    """Run a benchmark part; a crash becomes one error row instead of ending the run."""
    try:
        return fn()
    except Exception as exc:
        print(f"{fn}: {type(exc).__name__}: {exc}", flush=True)
        return [{"config": "sparse24", "error": f"{type(exc).__name__}: {exc}"[:300],
                 "bits": 0, "group": 0, "dtype": "float16", "m": 0}]  # fmt: skip


def sparse_markdown(checks: dict, rows: list[dict]) -> str:
    lines = [
        "",
        "## 2:4 sparse, 4-bit g128",
        "",
        f"Correctness: {checks['n']} checks, max rel err {checks['max_fp16']:.2e}, failures "
        f"{checks['failures']}, errors {checks['build_errors']}.",
        "",
        "| K x N | M | ours (us) | fp16 (us) | speedup | GB/s | % bw |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| error: {r['error']} |||||||")
            continue
        lines.append(
            f"| {r['k']}x{r['n']} | {r['m']} | {r['ours_us']:.1f} | {r['fp16_us']:.1f} | "
            f"{r['speedup']:.2f} | {r['gbps']:.0f} | {r['pct_bw']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
