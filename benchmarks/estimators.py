"""Time each sensitivity estimator on SmolLM2-135M and rank-correlate it with measured KL.

For every estimator, a table for bits {2..6} x g128 (RTN) is loaded from
``benchmarks/results/tables/smollm2_<name>_g128.json`` when present (its provenance holds the
seconds it took and its token budget) or profiled now and saved there. The reference is measured
single-unit KL: a ``kl`` table (all its unit x option pairs), and/or the per-unit KL measured at
the reference option by ``hessian_kl`` (read from its journal). Spearman's rho is reported over
all shared (unit, option) pairs and across units within each measured option column (the
cross-layer ranking an allocator depends on). Writes ``benchmarks/results/estimators.md``.

    python benchmarks/estimators.py --estimators hessian,fisher,lim,zd --reference-journal \
        benchmarks/results/tables/smollm2_hessian_kl_g128.json.journal.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from scipy.stats import spearmanr

from allocator.profile.api import profile
from allocator.schema.io import atomic_write_text, load_table, save_table
from allocator.schema.table import SensitivityTable

TABLES = Path(__file__).parent / "results" / "tables"
GRID = "bits=2,3,4,5,6 group=128"
REPRODUCE = [
    "Notes: hessian_kl and fisher_kl are fit to b3 KL measured on another 128-token window than",
    "the kl table's, so their b3 rho shows how well two small KL samples agree; their other",
    "columns are extrapolated from that one point. Tables were made with (OMP_NUM_THREADS=1):",
    "",
    "```",
    "T=benchmarks/results/tables; G='bits=2,3,4,5,6 group=128'",
    "allocator profile --estimator hessian --options 'bits=2,3,4,5,6,8 group=128' --windows 64 \\",
    "  --seq-len 512 --out $T/smollm2_hessian_g128.json",
    'allocator profile --estimator hessian_kl --options "$G" --windows 8 --seq-len 256 \\',
    "  --set reference=b3-g128 --set kl_windows=1 --set kl_seq_len=128 \\",
    "  --out $T/smollm2_hessian_kl_g128.json --resume",
    "for e in 'zd 1 16' 'lim 8 256' 'fisher 8 256' 'hessian_diag 8 256'; do set -- $e",
    '  allocator profile --estimator $1 --options "$G" --windows $2 --seq-len $3 \\',
    "    --out $T/smollm2_$1_g128.json; done",
    'allocator profile --estimator kl --options "$G" --windows 1 --seq-len 128 \\',
    "  --out $T/smollm2_kl_g128.json --resume",
    'allocator profile --calibrate kl --estimator fisher --options "$G" --windows 8 \\',
    "  --seq-len 256 --set reference=b3-g128 --set kl_windows=1 --set kl_seq_len=128 --resume \\",
    "  --journal $T/smollm2_hessian_kl_g128.json.journal.jsonl --out $T/smollm2_fisher_kl_g128.json",
    'allocator profile --estimator hutchinson --options "$G" --windows 1 --seq-len 128 \\',
    "  --set probes=2 --out $T/smollm2_hutchinson_g128.json",
    'allocator profile --estimator zo --options "$G" --windows 2 --seq-len 128 --set probes=8 \\',
    "  --out $T/smollm2_zo_g128.json",
    'allocator profile --estimator block_error --options "$G" --windows 2 --seq-len 128 \\',
    "  --out $T/smollm2_block_error_g128.json",
    "python benchmarks/estimators.py",
    "```",
]


def table_for(name: str, rerun: bool) -> SensitivityTable:
    path = TABLES / f"smollm2_{name}_g128.json"
    if path.is_file() and not rerun:
        return load_table(path)
    table = profile("smollm2", None, name, GRID)
    save_table(table, path)
    return table


def reference_points(args: argparse.Namespace) -> dict[tuple[str, str], float]:
    points: dict[tuple[str, str], float] = {}
    if args.reference and Path(args.reference).is_file():
        table = load_table(args.reference)
        for unit, row in table.losses.items():
            points.update({(unit, k): v for k, v in row.items()})
    if args.reference_journal and Path(args.reference_journal).is_file():
        for line in Path(args.reference_journal).read_text().splitlines()[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            points.update({(record["unit"], k): v for k, v in record["losses"].items()})
    return points


def correlations(table: SensitivityTable, points: dict[tuple[str, str], float]) -> dict[str, float]:
    shared = [(key, v) for key, v in points.items() if key[1] in table.losses.get(key[0], {})]
    out: dict[str, float] = {}
    if len(shared) > 2:
        ours = [table.losses[u][o] for (u, o), _ in shared]
        out["all"] = float(spearmanr(ours, [v for _, v in shared]).statistic)
    for option in sorted({o for (_, o), _ in shared}):
        column = [(u, v) for (u, o), v in shared if o == option]
        if len(column) > 2:
            ours = [table.losses[u][option] for u, _ in column]
            out[option] = float(spearmanr(ours, [v for _, v in column]).statistic)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--estimators",
        default="hessian,hessian_diag,fisher,hutchinson,block_error,lim,zd,zo,hessian_kl,fisher_kl",
    )
    parser.add_argument("--reference", default=str(TABLES / "smollm2_kl_g128.json"))
    parser.add_argument(
        "--reference-journal",
        default="",
        help="also use the points a calibrated run measured (overrides the kl table's)",
    )
    parser.add_argument("--rerun", action="store_true", help="profile again even if saved")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "estimators.md"))
    args = parser.parse_args()
    points = reference_points(args)
    n_units = len({u for u, _ in points})
    rows = []
    for name in args.estimators.split(","):
        table = table_for(name, args.rerun)
        s = table.provenance.settings
        rho = correlations(table, points)
        rows.append((name, f"{s['windows']}x{s['seq_len']}", s.get("seconds"), rho))
    base = next((r[2] for r in rows if r[0] == "hessian"), None)
    columns = sorted({k for r in rows for k in r[3] if k != "all"})
    lines = [
        "# Sensitivity estimators on SmolLM2-135M (bits 2-6, g128, RTN)",
        "",
        f"Reference: measured single-unit KL, {len(points)} (unit, option) points over {n_units} "
        "units. rho = Spearman rank correlation with it (all shared points, and across units "
        "within each option).",
        f"Machine: {os.cpu_count()} CPU cores shared with other jobs; seconds as recorded in each "
        "table's provenance.",
        "",
        "| estimator | windows x seq | seconds | vs hessian | rho all | "
        + " | ".join(f"rho {c}" for c in columns)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(columns),
    ]
    for name, budget, seconds, rho in rows:
        ratio = f"{seconds / base:.2f}x" if base and seconds else "-"
        cells = [f"{rho[c]:.3f}" if c in rho else "-" for c in ["all", *columns]]
        lines.append(f"| {name} | {budget} | {seconds} | {ratio} | " + " | ".join(cells) + " |")
    lines += ["", *REPRODUCE]
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
