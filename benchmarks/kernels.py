"""Benchmark of the low-bit Triton kernels against fp16 cuBLAS, on one GPU, in one run.

Correctness first (every width, groups 64/128, every candidate config the autotuner may pick,
fp16 inputs plus bf16/fp32 spot checks, outputs poisoned with NaN, fp64 reference), then
timings: median with L2 flushed (``triton.testing.do_bench``), the fp16 ``F.linear`` baseline
and a device-to-device copy (achievable bandwidth) measured in the same run.

    python benchmarks/kernels.py --quick            # subset, a few minutes on an H100
    python benchmarks/kernels.py --out results/     # full grid
    TRITON_INTERPRET=1 python benchmarks/kernels.py --dry-run   # CPU: small correctness only

Shapes are ``in_features x out_features`` (K x N). Writes ``kernels.md`` and ``kernels.json``
to ``--out`` (default ``$OUT``, else ``benchmarks/results``).
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
    import_kernels,
    run_checks,
    summarize_checks,
)

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


def time_cases(shapes, ms, bits_list, groups, bandwidth, out_dir: Path) -> list[dict]:
    """Graph-replay GPU time of ours and fp16 F.linear (data rotated past L2), plus eager time."""
    import torch
    import torch.nn.functional as F
    from allocator.kernels.autotune import choose_config, gpu_time_ms, rotating_copies
    from allocator.kernels.dequant import dequant_matmul
    from allocator.kernels.matmul import launch_fused, triton_quant_matmul

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows: list[dict] = []
    log = open(out_dir / "kernels_rows.jsonl", "a")  # noqa: SIM115  (survives a timeout)
    for k, n in shapes:
        w16_copies = rotating_copies([torch.randn(n, k, device="cuda", dtype=torch.float16)], l2)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            fp16_ms = gpu_time_ms([lambda x=x, w=w: F.linear(x, w[0]) for w in w16_copies])
            fp16_bytes = (n * k + m * k + m * n) * 2
            for bits in bits_list:
                for group in groups:
                    try:
                        row = time_one(
                            k,
                            n,
                            m,
                            bits,
                            group,
                            x,
                            l2,
                            choose_config,
                            launch_fused,
                            dequant_matmul,
                            triton_quant_matmul,
                        )
                    except Exception as exc:  # keep the other cases; report this one
                        row = {
                            "k": k,
                            "n": n,
                            "m": m,
                            "bits": bits,
                            "group": group,
                            "error": f"{type(exc).__name__}: {exc}"[:300],
                        }
                        print(row, flush=True)
                        rows.append(row)
                        continue
                    row.update(
                        fp16_us=fp16_ms * 1e3,
                        speedup=fp16_ms * 1e3 / row["ours_us"],
                        pct_bw=100 * row["gbps"] / bandwidth,
                        fp16_gbps=fp16_bytes / (fp16_ms * 1e-3) / 1e9,
                    )
                    rows.append(row)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    print(
                        f"{k}x{n} M={m:<4} b{bits} g{group}: {row['ours_us']:8.1f} us  "
                        f"fp16 {row['fp16_us']:8.1f} us  x{row['speedup']:.2f}  "
                        f"{row['pct_bw']:.0f}% bw  eager {row['eager_us']:.1f} us  "
                        f"(tune {row['tune_s']:.1f}s)",
                        flush=True,
                    )
            del x
        del w16_copies
    log.close()
    return rows


def time_one(k, n, m, bits, group, x, l2, choose_config, launch_fused, dequant_matmul, qmm):
    """One case: random packed planes (every bit pattern is a valid code), tune, time."""
    import torch
    from allocator.kernels.autotune import gpu_time_ms, rotating_copies

    planes = [
        torch.randint(-(2**31), 2**31 - 1, (k // (32 // w), n), dtype=torch.int32, device="cuda")
        for w in _widths(bits)
    ]
    scales = (torch.rand(k // group, n, device="cuda") * 0.02 + 1e-3).half()
    zeros = torch.randint(0, 2**bits, (k // group, n), device="cuda").half()
    args = (planes, scales, zeros, bits, group, k)
    start = time.time()
    qmm(x, *args)  # compile + autotune
    tune_s = time.time() - start
    copies = rotating_copies([*planes, scales, zeros], l2)
    ours_ms = gpu_time_ms(
        [lambda c=c: qmm(x, c[:-2], c[-2], c[-1], bits, group, k) for c in copies]
    )
    eager_ms = bench_ms(lambda: qmm(x, *args))
    nbytes = sum(p.numel() * 4 for p in planes) + 2 * scales.numel() * 2 + (m * k + m * n) * 2
    config = choose_config(x, *args, run=launch_fused, run_dequant=dequant_matmul)
    return {
        "k": k,
        "n": n,
        "m": m,
        "bits": bits,
        "group": group,
        "ours_us": ours_ms * 1e3,
        "eager_us": eager_ms * 1e3,
        "gbps": nbytes / (ours_ms * 1e-3) / 1e9,
        "config": str(config),
        "tune_s": tune_s,
    }


def _widths(bits: int) -> list[int]:
    from allocator.quant.packing import plane_widths

    return plane_widths(bits)


def markdown(env: dict, bandwidth: float, checks: dict, capture: dict, rows: list[dict]) -> str:
    lines = [
        "# Low-bit Triton kernels vs fp16 cuBLAS",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        f"Measured device-to-device copy bandwidth: {bandwidth:.0f} GB/s (read + write).",
        f"Correctness: {checks['n']} checks, max rel err fp16 {checks['max_fp16']:.2e}, "
        f"failures {checks['failures']}, configs that did not build "
        f"{checks.get('build_errors', 0)}. Capture: {capture}",
        "",
        "Times: GPU time per call from CUDA-graph replays of calls on rotating copies of the "
        "weights (3x L2, so every call reads DRAM), median of 5 replays; the same for fp16 "
        "F.linear. eager = do_bench median with L2 flushed, Python launch overhead included. "
        "speedup = fp16 / ours; % bw = our bytes moved / time / copy bandwidth. "
        "Shape = in x out (K x N).",
        "",
        "| K x N | M | bits | group | ours (us) | fp16 (us) | speedup | GB/s | % bw | eager (us) "
        "| config |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['k']}x{r['n']} | {r['m']} | {r['bits']} | {r['group']} | "
                f"error: {r['error']} |||||||"
            )
            continue
        lines.append(
            f"| {r['k']}x{r['n']} | {r['m']} | {r['bits']} | {r['group']} | {r['ours_us']:.1f} "
            f"| {r['fp16_us']:.1f} | {r['speedup']:.2f} | {r['gbps']:.0f} | {r['pct_bw']:.0f} "
            f"| {r['eager_us']:.1f} | {_short(r['config'])} |"
        )
    return "\n".join(lines) + "\n"


def _short(config: str) -> str:
    """KernelConfig(block_m=1, ...) -> bm1 bn64 bk128 w4 s2 sk5 ..."""
    names = {
        "block_m": "bm",
        "block_n": "bn",
        "block_k": "bk",
        "num_warps": "w",
        "num_stages": "st",
        "split_k": "sk",
    }
    parts = []
    for item in config[config.index("(") + 1 : -1].split(", "):
        key, value = item.split("=")
        if key in names:
            parts.append(f"{names[key]}{value}")
        elif value == "True":
            parts.append(key)
    return " ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset of the grid")
    parser.add_argument("--dry-run", action="store_true", help="CPU: small correctness only")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=12, help="processes for the checks")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--max-m-large", type=int, default=512, help="largest M on 8192x28672")
    args = parser.parse_args()
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
        summary = summarize_checks(rows)
        print(json.dumps({k: v for k, v in summary.items() if k != "failed"}), flush=True)
        return 1 if summary["failures"] else 0
    start = time.time()
    checks = summarize_checks(
        [] if args.skip_checks else run_checks(args.quick, args.workers, (1088, 1040))
    )
    print(f"checks: {json.dumps(checks)[:2000]} ({time.time() - start:.0f}s)", flush=True)
    capture = check_capture("cuda")
    print(f"capture: {capture}", flush=True)
    from kernels_sparse import check_sparse, time_sparse

    sparse_checks = summarize_checks(_guard(check_sparse))
    print(f"2:4 checks: {json.dumps(sparse_checks)[:1000]}", flush=True)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    if args.quick:
        shapes, ms, bits, groups = [(4096, 14336)], [1, 8, 16, 128], BITS, [128]
    else:
        shapes, ms, bits, groups = SHAPES, MS, BITS, GROUPS
    rows = []
    for shape in shapes:
        shape_ms = [m for m in ms if shape != (8192, 28672) or m <= args.max_m_large]
        rows += time_cases([shape], shape_ms, bits, groups, bandwidth, out_dir)
    sparse_rows = _guard(lambda: time_sparse(shapes, bandwidth))
    report = {
        "env": env,
        "bandwidth_gbps": bandwidth,
        "checks": checks,
        "capture": capture,
        "rows": rows,
        "sparse24_checks": sparse_checks,
        "sparse24_rows": sparse_rows,
        "seconds": time.time() - start,
    }
    (out_dir / "kernels.json").write_text(json.dumps(report, indent=1))
    text = markdown(env, bandwidth, checks, capture, rows) + sparse_markdown(
        sparse_checks, sparse_rows
    )
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
