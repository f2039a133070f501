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
import dataclasses
import importlib.util
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]
MS = [1, 2, 4, 8, 16, 32, 64, 128, 512]
BITS = [2, 3, 4, 5, 6, 8]
GROUPS = [64, 128]
CHECK_MS = [1, 2, 3, 7, 13, 17, 64, 100]  # one M per BLOCK_M class (warms the compile cache)


def import_kernels() -> None:
    """Make ``allocator.kernels`` importable from a plain checkout (no install needed)."""
    sys.path.insert(0, str(ROOT))
    try:
        import allocator.kernels  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "allocator.kernels",
            ROOT / "kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "kernels")],
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["allocator.kernels"] = module
        spec.loader.exec_module(module)


def environment() -> dict[str, str]:
    import torch
    import triton

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": str(torch.version.cuda),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sms=str(props.multi_processor_count))
    return info


def random_packed(k: int, n: int, bits: int, group: int, device: str, seed: int):
    """Random weights, min-max quantized per group, packed by allocator.quant.packing, moved.

    Quantized here (not with allocator.quant.rtn) so the script needs only torch and triton.
    """
    import torch

    from allocator.quant.packing import pack_weight

    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=gen)
    n_groups = -(-k // group)
    padded = torch.cat([weight, weight[:, -1:].expand(n, n_groups * group - k)], dim=1)
    grouped = padded.view(n, n_groups, group)
    wmin, wmax = grouped.amin(2).clamp(max=0), grouped.amax(2).clamp(min=0)
    scale = ((wmax - wmin) / (2**bits - 1)).clamp(min=1e-8)
    zero = torch.round(-wmin / scale)
    codes = torch.clamp(torch.round(grouped / scale[..., None]) + zero[..., None], 0, 2**bits - 1)
    codes = codes.view(n, -1)[:, :k].to(torch.uint8)
    packed = pack_weight(codes, scale, zero, bits, group)
    planes = [p.to(device) for p in packed.planes]
    return planes, packed.scales.to(device), packed.zeros.to(device)


def check_job(job: tuple[int, int, str, list[int], tuple[int, int]]) -> list[dict]:
    """Run every candidate config (split and unsplit) for one (bits, group, dtype) vs fp64."""
    import_kernels()
    import torch
    from allocator.kernels.autotune import candidates
    from allocator.kernels.dequant import dequant_matmul
    from allocator.kernels.matmul import launch_fused
    from allocator.kernels.reference import dequantize_planes

    bits, group, dtype_name, ms, (k, n) = job
    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for seed, m in enumerate(ms):
        planes, scales, zeros = random_packed(k, n, bits, group, device, seed + 100 * bits)
        weight = dequantize_planes(planes, scales, zeros, bits, group, k, torch.float64)
        sms = 4 if device == "cpu" else torch.cuda.get_device_properties(0).multi_processor_count
        for config in candidates(m, n, k, group, sms):
            for split in {1, 2, config.split_k}:
                if config.dequant and split > 1:
                    continue
                x = torch.randn(m, k, device=device).to(dtype)
                ref = x.double() @ weight
                out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
                cfg = dataclasses.replace(config, split_k=split)
                try:
                    if cfg.dequant:
                        out = dequant_matmul(x, planes, scales, zeros, bits, group, k, cfg)
                    else:
                        launch_fused(x, planes, scales, zeros, bits, group, k, cfg, out=out)
                except Exception as exc:  # a config that does not build: reported, not fatal
                    rows.append(
                        {
                            "bits": bits,
                            "group": group,
                            "dtype": dtype_name,
                            "m": m,
                            "config": str(cfg),
                            "error": f"{type(exc).__name__}: {exc}"[:200],
                        }
                    )
                    continue
                err = ((out.double() - ref).norm() / ref.norm()).item()
                rows.append(
                    {
                        "bits": bits,
                        "group": group,
                        "dtype": dtype_name,
                        "m": m,
                        "config": str(cfg),
                        "rel_err": err,
                        "nan": bool(out.isnan().any()),
                    }
                )
    return rows


def tolerance(dtype_name: str) -> float:
    return {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[dtype_name]


def run_checks(quick: bool, workers: int, shape: tuple[int, int]) -> list[dict]:
    ms = [1, 2, 13, 17, 100] if quick else CHECK_MS
    jobs = [(b, g, "float16", ms, shape) for b in BITS for g in GROUPS]
    jobs += [(4, 128, "bfloat16", [1, 17], shape), (3, 64, "float32", [1, 17], shape)]
    if workers <= 1:
        results = [check_job(job) for job in jobs]
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            results = list(pool.map(check_job, jobs))
    return [row for rows in results for row in rows]


def check_capture(device: str) -> dict:
    """The custom op under a CUDA graph and under torch.compile, against eager."""
    import allocator.kernels.ops  # noqa: F401
    import torch

    planes, scales, zeros = random_packed(512, 256, 4, 128, device, 7)
    x = torch.randn(1, 512, device=device, dtype=torch.float16)

    def f(inp):
        return torch.ops.allocator.quant_matmul(inp, planes, scales, zeros, 4, 128, 512)

    eager = f(x)
    result = {}
    graph = torch.cuda.CUDAGraph()
    static_out = None
    with torch.cuda.graph(graph):
        static_out = f(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    result["cuda_graph_max_abs_diff"] = (static_out - f(x)).abs().max().item()
    try:
        compiled = torch.compile(f, fullgraph=True)
        result["compile_max_abs_diff"] = (compiled(x) - f(x)).abs().max().item()
    except Exception as exc:  # report, do not hide
        result["compile_error"] = f"{type(exc).__name__}: {exc}"[:300]
    result["eager_finite"] = bool(torch.isfinite(eager).all())
    return result


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


def summarize_checks(rows: list[dict]) -> dict:
    """Failures are wrong or unwritten outputs; configs that did not build are counted apart."""
    errors = [r for r in rows if "error" in r]
    ran = [r for r in rows if "error" not in r]
    failures = [r for r in ran if r["nan"] or not r["rel_err"] < tolerance(r["dtype"])]
    fp16 = [r["rel_err"] for r in ran if r["dtype"] == "float16"]
    return {
        "n": len(ran),
        "failures": len(failures),
        "failed": failures[:20],
        "build_errors": len(errors),
        "build_errored": errors[:10],
        "max_fp16": max(fp16) if fp16 else float("nan"),
        "max_by_dtype": {
            d: max(r["rel_err"] for r in ran if r["dtype"] == d) for d in {r["dtype"] for r in ran}
        },
    }


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
