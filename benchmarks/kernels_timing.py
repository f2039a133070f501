"""Timing part of ``benchmarks/kernels_bench.py``: the grid, the copy bandwidth, and the GPU time per
call of ours, fp16 ``F.linear`` and the baselines, each row against the roofline.

Times are CUDA-graph replays over weight copies that defeat the L2 (``allocator.kernels.autotune``
``gpu_time_ms`` and ``rotating_copies``); ours is a weight prepared once and autotuned, and
``short`` names the kernel the autotuner chose for the cell.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from kernels_roofline import roofline

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


def time_cases(cases, bandwidth, tflops, out_dir: Path, deadline: float, round1: set[int]):
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
