"""Report part of ``benchmarks/kernels_bench.py``: the markdown tables of a run (every row against the
roofline, % of roofline by M, the 2:4 rows) and ``rereport``, an earlier run's rows against the
roofline without a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

from kernels_roofline import roofline
from kernels_timing import BITS, short


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
        f"Re-reported from `{path.name}` by `python benchmarks/kernels_bench.py --rereport` (no GPU): "
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
