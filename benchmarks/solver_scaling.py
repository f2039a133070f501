"""Solver scaling benchmark: every backend against a PuLP + CBC baseline measured in the same run.

The baseline is the plain binary multiple-choice knapsack the way NVIDIA ModelOpt's
auto_quantize states it: one binary per (unit, option), ``sum_j x_ij == 1`` per unit, one budget
row, minimise the summed loss, solved by PuLP's bundled CBC (model build included in its time).
Instances come from ``benchmarks/instances.py`` (realistic, heavy-tailed, a few non-convexities);
past 10^4 units each unit is one group of 128 weights (per-group allocation), with either bits
1-8 at g128 ("bits": equal cost steps) or a "mixed" g64/g128 grid (uneven steps, dominated options).

    python benchmarks/solver_scaling.py            # full run (exact sizes + lagrange to 10^7)
    python benchmarks/solver_scaling.py --quick    # a fast check
    python benchmarks/solver_scaling.py --out benchmarks/results/solver_scaling
    python benchmarks/solver_scaling.py --max-distinct 3 --out benchmarks/results/max_distinct

Columns: seconds (wall, best of ``--repeat`` for runs under 10 s), cpu_s (CPU time of that run,
CBC's child process included), speedup (baseline seconds / seconds), objective, rel_diff
(objective vs the baseline's), status, gap (certified relative gap from the solver's own bound).
The machine's load average is recorded: on a shared machine, wall times include waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocator.errors import AllocatorError
from allocator.schema.io import atomic_write_text
from allocator.solve import backends
from allocator.solve.problem import Problem
from allocator.solve.registry import BACKENDS
from benchmarks.instances import make_instance

BASELINE = "baseline_pulp_cbc"
EXACT_SIZES = [(224, 8), (224, 32), (1000, 8), (1000, 32), (10_000, 8), (10_000, 32)]
LARGE_SIZES = [(100_000, 8), (1_000_000, 8), (10_000_000, 8)]
EXACT_SOLVERS = ["mckp", "dp", "ilp", "pulp", "cvxpy", "lagrange", "equal_loss"]
LARGE_SOLVERS = {100_000: ["lagrange", "mckp", "equal_loss"], 1_000_000: ["lagrange", "mckp"]}


@dataclass
class Row:
    n_units: int
    n_options: int
    grid: str
    solver: str
    seconds: float | None
    cpu_s: float | None
    speedup: float | None
    objective: float | None
    rel_diff: float | None
    status: str
    gap: float | None
    note: str = ""


def baseline_pulp_cbc(problem: Problem, time_limit: float) -> tuple[np.ndarray | None, str]:
    """ModelOpt-style binary MCKP through PuLP + CBC; returns (choice or None, status)."""
    import pulp

    n_units, n_options = problem.cost.shape
    prob = pulp.LpProblem("auto_quantize", pulp.LpMinimize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        x = {
            (i, j): pulp.LpVariable(f"x_{i}_{j}", cat=pulp.LpBinary)
            for i in range(n_units)
            for j in range(n_options)
            if problem.valid[i, j]
        }
    prob += pulp.lpSum(float(problem.loss[i, j]) * var for (i, j), var in x.items())
    for i in range(n_units):
        prob += pulp.lpSum(x[i, j] for j in range(n_options) if problem.valid[i, j]) == 1
    prob += pulp.lpSum(float(problem.cost[i, j]) * var for (i, j), var in x.items()) <= float(
        problem.budget
    )
    prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit))
    status = pulp.LpStatus[prob.status]
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return None, status
    choice = np.zeros(n_units, dtype=np.int64)
    for (i, j), var in x.items():
        if (var.value() or 0.0) > 0.5:
            choice[i] = j
    optimal = prob.sol_status == pulp.LpSolutionOptimal
    return choice, "optimal" if optimal else "time_limit"


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (CBC runs as a child)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(run, repeat: int):
    """(result, best wall seconds, cpu seconds of that run); repeats only runs under 10 s."""
    best = None
    for attempt in range(repeat):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        result = run()
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        if best is None or wall < best[1]:
            best = (result, wall, cpu)
        if wall > 10.0 or attempt + 1 >= repeat:
            break
    return best


def run_size(
    size: tuple[int, int, bool],
    solvers: list[str],
    time_limit: float,
    repeat: int,
    base: bool,
) -> list[Row]:
    """Benchmark one instance size: the baseline (when asked) then every solver."""
    n_units, n_options, mixed = size
    grid = "mixed" if mixed else "bits"
    problem = make_instance(n_units, n_options, seed=n_units + n_options, mixed=mixed)
    rows: list[Row] = []
    base_obj = base_s = None
    if base:
        (choice, status), wall, cpu = _timed(lambda: baseline_pulp_cbc(problem, time_limit), 1)
        if choice is not None and problem.is_feasible(choice):
            base_obj, base_s = problem.evaluate(choice)[0], wall
        rows.append(
            Row(n_units, n_options, grid, BASELINE, wall, cpu, 1.0, base_obj, 0.0, status, None)
        )
    for name in solvers:
        if name not in BACKENDS:
            continue
        backend = BACKENDS.get(name)
        try:
            solution, wall, cpu = _timed(
                lambda b=backend: b().solve(problem, time_limit=time_limit), repeat
            )
        except AllocatorError as error:
            rows.append(
                Row(
                    n_units,
                    n_options,
                    name,
                    None,
                    None,
                    None,
                    None,
                    None,
                    "refused",
                    None,
                    str(error).split(";")[0],
                )
            )
            continue
        feasible = problem.is_feasible(solution.choice)
        objective = solution.objective
        rows.append(
            Row(
                n_units,
                n_options,
                grid,
                name,
                wall,
                cpu,
                base_s / wall if base_s else None,
                objective,
                (objective - base_obj) / abs(base_obj) if base_obj else None,
                solution.status if feasible else "INFEASIBLE",
                solution.gap,
            )
        )
    return rows


def run_max_distinct(k: int, time_limit: float, repeat: int) -> list[Row]:
    """5,000 layer-sized units x 8 options (both grids) with at most ``k`` distinct options:
    the ILP against option-subset enumeration (``mckp`` exact, ``lagrange`` with its bound)."""
    rows: list[Row] = []
    for mixed in (False, True):
        base = make_instance(5000, 8, seed=5008, mixed=mixed)
        ids = np.tile(np.arange(base.n_options), (base.n_units, 1))
        problem = Problem(
            cost=base.cost,
            loss=base.loss,
            valid=base.valid,
            budget=base.budget,
            option_ids=ids,
            max_distinct=k,
        )
        grid = f"{'mixed' if mixed else 'bits'}, max_distinct={k}"
        ilp_s = ilp_obj = None
        for name in ("ilp", "mckp", "lagrange"):
            backend = BACKENDS.get(name)
            solution, wall, cpu = _timed(
                lambda b=backend, p=problem: b().solve(p, time_limit=time_limit),
                1 if name == "ilp" else repeat,
            )
            feasible = problem.is_feasible(solution.choice)
            if name == "ilp":
                ilp_s, ilp_obj = wall, solution.objective
            rows.append(
                Row(
                    base.n_units,
                    base.n_options,
                    grid,
                    name,
                    wall,
                    cpu,
                    ilp_s / wall if ilp_s else None,
                    solution.objective,
                    (solution.objective - ilp_obj) / abs(ilp_obj) if ilp_obj else None,
                    solution.status if feasible else "INFEASIBLE",
                    solution.gap,
                )
            )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[Row], header: dict[str, object]) -> str:
    """The results table (and run conditions) as markdown."""
    lines = [
        "| N | K | options | solver | seconds | cpu_s | speedup vs baseline | objective |"
        " rel. diff vs baseline | status | certified gap |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        status = f"{r.status}" + (f" ({r.note})" if r.note else "")
        lines.append(
            f"| {r.n_units:,} | {r.n_options} | {r.grid} | {r.solver} | {_fmt(r.seconds, '.4f')} | "
            f"{_fmt(r.cpu_s, '.4f')} | {_fmt(r.speedup, '.1f')} | {_fmt(r.objective, '.9g')} | "
            f"{_fmt(r.rel_diff, '.2e')} | {status} | {_fmt(r.gap, '.2e')} |"
        )
    conditions = ", ".join(f"{k}: {v}" for k, v in header.items())
    return "\n".join(lines) + f"\n\n{conditions}\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only, short limits")
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    parser.add_argument("--time-limit", type=float, help="per-solver limit in seconds")
    parser.add_argument("--repeat", type=int, default=3, help="best of R for runs under 10 s")
    parser.add_argument("--max-units", type=int, default=10_000_000, help="largest lagrange N")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--max-distinct",
        type=int,
        help="only the max_distinct_options benchmark (5,000 units, at most K options; "
        "the baseline column is the ILP)",
    )
    args = parser.parse_args(argv)
    backends.load_all()
    time_limit = args.time_limit or (10.0 if args.quick else 60.0)
    if args.max_distinct is not None:
        load_before = os.getloadavg()
        rows = run_max_distinct(args.max_distinct, time_limit, args.repeat)
        header = {
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
            "baseline": "ilp (HiGHS)",
            "time limit per solver (s)": time_limit,
            "load average before/after": f"{load_before[0]:.1f}/{os.getloadavg()[0]:.1f}",
        }
        _write(markdown(rows, header), rows, header, args.out)
        return
    plan: list[tuple[tuple[int, int, bool], list[str], bool]] = []
    exact = EXACT_SIZES[:4] if args.quick else EXACT_SIZES
    plan += [((n, k, False), EXACT_SOLVERS, True) for n, k in exact]
    large = [(100_000, 8)] if args.quick else LARGE_SIZES
    for n, k in large:
        for mixed in (False, True):
            if n <= args.max_units:
                plan.append(((n, k, mixed), LARGE_SOLVERS.get(n, ["lagrange"]), False))
    load_before = os.getloadavg()
    rows: list[Row] = []
    for size, solvers, base in tqdm(plan, disable=args.quiet, desc="sizes"):
        rows += run_size(size, solvers, time_limit, args.repeat, base)
    header = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "time limit per solver (s)": time_limit,
        "load average before/after": f"{load_before[0]:.1f}/{os.getloadavg()[0]:.1f}",
        "mode": "quick" if args.quick else "full",
    }
    _write(markdown(rows, header), rows, header, args.out)


def _write(table: str, rows: list[Row], header: dict[str, object], out: Path | None) -> None:
    print(table)
    if out is not None:
        atomic_write_text(out.with_suffix(".md"), table)
        payload = {"conditions": header, "rows": [asdict(r) for r in rows]}
        atomic_write_text(out.with_suffix(".json"), json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
