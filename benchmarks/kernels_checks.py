"""Correctness part of benchmarks/kernels_bench.py: every candidate config against fp64, on the GPU.

Two families: the bit-plane kernels behind ``allocator::quant_matmul`` (``check_job``) and the
prepared weights behind ``allocator::quant_matmul_prepared`` (``check_prepared_job``: the
K-major kernels, torch's int4/int8 kernels where they apply, dequantize + cuBLAS). Runs in
worker processes (spawned), which also fills Triton's compile cache for the timings.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BITS = [2, 3, 4, 5, 6, 8]
GROUPS = [64, 128]
CHECK_MS = [1, 2, 3, 7, 13, 17, 64, 100]  # one M per BLOCK_M class (warms the compile cache)


def import_kernels() -> None:
    """Make ``allocator.kernels`` importable from a plain checkout (no install needed).

    Where the project's other dependencies are missing (a GPU machine with only PyTorch and
    Triton), ``allocator`` and ``allocator.quant`` are entered as bare packages, without running
    their ``__init__``: the kernels need only ``allocator.quant.packing`` and ``allocator.errors``
    (torch alone).
    """
    sys.path.insert(0, str(ROOT))
    try:
        import allocator.kernels  # noqa: F401
    except ImportError:
        for name in ("allocator", "allocator.quant"):
            if name not in sys.modules:
                bare = types.ModuleType(name)
                bare.__path__ = [str(ROOT / name.replace(".", "/"))]
                sys.modules[name] = bare
        spec = importlib.util.spec_from_file_location(
            "allocator.kernels",
            ROOT / "kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "kernels")],
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["allocator.kernels"] = module
        sys.modules["allocator"].kernels = module
        spec.loader.exec_module(module)


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


def check_prepared_job(job: tuple[int, int, str, list[int], tuple[int, int]]) -> list[dict]:
    """Every candidate of a prepared weight (split-K as chosen, and 1 and 2) for one (bits,
    group, dtype) against fp64, outputs poisoned with NaN first."""
    import_kernels()
    import torch
    from allocator.kernels.prepare import pool_for, prepare, run_config
    from allocator.kernels.reference import dequantize_planes

    bits, group, dtype_name, ms, (k, n) = job
    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sms = 4 if device == "cpu" else torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for seed, m in enumerate(ms):
        planes, scales, zeros = random_packed(k, n, bits, group, device, seed + 100 * bits)
        weight = prepare(planes, scales, zeros, bits, group, k)
        reference = dequantize_planes(planes, scales, zeros, bits, group, k, torch.float64)
        x = torch.randn(m, k, device=device).to(dtype)
        for config in pool_for(x, weight, sms):
            splits = {1, 2, config.split_k} if config.kmajor else {config.split_k}
            for split in sorted(splits):
                cfg = dataclasses.replace(config, split_k=split)
                row = {"bits": bits, "group": group, "dtype": dtype_name, "m": m,
                       "config": str(cfg), "path": "prepared"}  # fmt: skip
                try:
                    out = run_config(x, weight, cfg)
                except Exception as exc:  # a config that does not build: reported, not fatal
                    rows.append({**row, "error": f"{type(exc).__name__}: {exc}"[:200]})
                    continue
                ref = x.double() @ reference
                err = ((out.double() - ref).norm() / ref.norm()).item()
                rows.append({**row, "rel_err": err, "nan": bool(out.isnan().any())})
    return rows


def prepared_jobs(quick: bool, shape: tuple[int, int]) -> list[tuple]:
    """Every width and group in fp16, bf16 and fp32 spot checks, and torch's int4 (bf16, K a
    multiple of the group) and int8 (one group) layouts on a shape that allows them."""
    ms = [1, 3, 16, 40, 100] if quick else [1, 2, 3, 7, 13, 16, 17, 40, 64, 100]
    jobs = [(b, g, "float16", ms, shape) for b in BITS for g in GROUPS]
    jobs += [(b, 128, "bfloat16", [1, 17], shape) for b in (3, 4)]
    jobs += [(5, 64, "float32", [1, 17], shape)]
    even = (shape[0] // 128 * 128, shape[1] // 8 * 8)
    jobs += [(4, g, "bfloat16", [1, 8, 16, 100], even) for g in (64, 128)]
    jobs += [(8, even[0], d, [1, 8, 100], even) for d in ("float16", "bfloat16")]
    return jobs


def tolerance(dtype_name: str) -> float:
    return {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[dtype_name]


def run_checks(
    quick: bool, workers: int, shape: tuple[int, int], round1: bool = True, prepared: bool = True
) -> list[dict]:
    """The checks of the bit-plane kernels (``round1``) and of prepared weights, in workers."""
    ms = [1, 2, 13, 17, 100] if quick else CHECK_MS
    tasks = []
    if round1:
        jobs = [(b, g, "float16", ms, shape) for b in BITS for g in GROUPS]
        jobs += [(4, 128, "bfloat16", [1, 17], shape), (3, 64, "float32", [1, 17], shape)]
        tasks += [(check_job, job) for job in jobs]
    if prepared:
        tasks += [(check_prepared_job, job) for job in prepared_jobs(quick, shape)]
    if workers <= 1:
        results = [fn(job) for fn, job in tasks]
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(fn, job) for fn, job in tasks]
            results = [f.result() for f in futures]
    return [row for rows in results for row in rows]


def check_capture(device: str) -> dict:
    """Both custom ops (bit planes, prepared weight) under a CUDA graph and under
    torch.compile, against eager."""
    import allocator.kernels.ops  # noqa: F401
    import torch
    from allocator.kernels.prepare import prepare

    planes, scales, zeros = random_packed(512, 256, 4, 128, device, 7)
    weight = prepare(planes, scales, zeros, 4, 128, 512)
    x = torch.randn(1, 512, device=device, dtype=torch.float16)
    ops = {
        "": lambda inp: torch.ops.allocator.quant_matmul(inp, planes, scales, zeros, 4, 128, 512),
        "prepared_": lambda inp: torch.ops.allocator.quant_matmul_prepared(inp, *weight.op_args()),
    }
    result = {}
    for prefix, f in ops.items():
        eager = f(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = f(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        result[f"{prefix}cuda_graph_max_abs_diff"] = (static_out - f(x)).abs().max().item()
        try:
            compiled = torch.compile(f, fullgraph=True)
            result[f"{prefix}compile_max_abs_diff"] = (compiled(x) - f(x)).abs().max().item()
        except Exception as exc:  # report, do not hide
            result[f"{prefix}compile_error"] = f"{type(exc).__name__}: {exc}"[:300]
        result[f"{prefix}eager_finite"] = bool(torch.isfinite(eager).all())
    return result


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
