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

    python benchmarks/kernels_bench.py --round2 --budget 210 --round1 1,16 --out DIR  # kernels_gpu.sh
    python benchmarks/kernels_bench.py --quick                        # subset, a few minutes
    python benchmarks/kernels_bench.py --out results/                 # full grid
    TRITON_INTERPRET=1 python benchmarks/kernels_bench.py --dry-run   # CPU: small correctness only
    python benchmarks/kernels_bench.py --rereport benchmarks/results/kernels_h100.json
                                                   # no GPU: roofline view of an earlier run

Shapes are ``in_features x out_features`` (K x N). Writes ``kernels.md`` and ``kernels.json``
to ``--out`` (default ``$OUT``, else ``benchmarks/results``), rows as they come to
``kernels_rows.jsonl``.

Parts: ``kernels_checks.py`` (correctness), ``kernels_sparse.py`` (2:4), ``kernels_timing.py``
(grid and timings), ``kernels_roofline.py``, ``kernels_report.py`` (tables, ``--rereport``).
"""

from __future__ import annotations

import argparse
import json
import os
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
from kernels_report import markdown, rereport, sparse_markdown, summary_by_m
from kernels_roofline import H100_FP16_TFLOPS
from kernels_timing import (
    BITS,
    GROUPS,
    MS,
    SHAPES,
    copy_bandwidth,
    environment,
    round2_cases,
    time_cases,
)


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


if __name__ == "__main__":
    raise SystemExit(main())
