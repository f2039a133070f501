"""Seeded fuzz over every input format and field (issue 11).

Valid tables, constraints and plans (from ``tests/solve/_random_cases``) are mutated (a field set
to a hostile value, a key dropped or added, nesting, truncation, stray bytes, CSV cells and rows
broken) and written as JSON, YAML, TOML or CSV; then loaded and solved (with hostile solver
arguments too) or checked. Every case must end in a plan or in one of allocator's own errors,
within a second; every plan solve returns, and every plan ``check`` accepts, must pass an
independent re-check (sizes from shapes by our own formula, every constraint tested directly,
brute force for the optimum). ``ALLOCATOR_FUZZ_CASES`` changes the number of cases.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import yaml

from allocator.errors import AllocatorError
from allocator.patterns import compile_pattern
from allocator.schema import io
from allocator.schema.constraints import Constraints
from allocator.schema.plan import Plan
from allocator.solve import backends
from allocator.solve.api import solve
from allocator.solve.checker import check_plan
from tests.solve import _random_cases
from tests.solve._random_cases import random_constraints, random_table

N_CASES = int(os.environ.get("ALLOCATOR_FUZZ_CASES", "2500"))
SEED = 11
CASE_SECONDS = 1.0  # CPU seconds of this thread per case (other jobs on the machine do not count)
BLOCKED_SECONDS = 10.0  # wall seconds per case: a case waiting, not computing
SOLVERS = ["auto"] * 6 + ["ilp"] * 3 + ["mckp", "dp", "lagrange", "equal_loss", "cvxpy_relax"]
SOLVERS += ["pulp_highs", "cvxpy_highs"]

LAST: list[str] = []  # what the running case does, for the report of a slow case
HOSTILE: list[Any] = [
    None,
    "",
    "x",
    -1,
    0,
    1,
    2**63,
    10**30,
    -(10**30),
    1e308,
    -1e-300,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    [],
    {},
    [1, 2, 3],
    {"a": 1},
    "b4-g128-0:0",
    "b4-g128-2:4:8",
    "b99999999999-g128",
    "2:0",
    "(a+)+$",
    "((((.*)*)*)*)*X",
    "a{99999999999}",
    "(?=x)",
    "proj(",
    "\x00",
    "é" * 3,
    "x" * 20_000,
    [-1000, -1],
    [0, 5],
    [2**40, 2**40],
    ".inf",
    "nan",
]


def _hostile(rng: random.Random) -> Any:
    value = copy.deepcopy(rng.choice(HOSTILE))  # later mutations must not alter HOSTILE
    if rng.random() < 0.1:
        value = [value] * rng.randint(1, 3)
    return value


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _paths(v, (*prefix, i))
    return found


def _set(doc: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def mutate_doc(doc: dict, rng: random.Random) -> Any:
    """1-3 structural mutations of a JSON-like document."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)
        path = rng.choice(paths[1:] or paths)
        kind = rng.random()
        if kind < 0.6:
            doc = _set(doc, path, _hostile(rng))
        elif kind < 0.75 and path:
            doc = _set(doc, path, None, delete=True)
        elif kind < 0.85:
            parent = path[:-1]
            target = doc
            for key in parent:
                target = target[key]
            if isinstance(target, dict):
                target[rng.choice(["extra", "format_version", "patern", "nm"])] = _hostile(rng)
        else:
            depth = rng.choice([10, 70])  # deeper nesting is made at the text level (render)
            value: Any = 1
            for _ in range(depth):
                value = [value]
            doc = _set(doc, path, value)
        if not isinstance(doc, dict):
            break
    return doc


def render(doc: Any, fmt: str, rng: random.Random) -> bytes:
    """The document as JSON/YAML/TOML bytes, sometimes damaged at the byte level."""
    try:
        if fmt == "json":
            text = json.dumps(doc)  # NaN and Infinity tokens included, as a careless writer would
        elif fmt == "yaml":
            text = yaml.safe_dump(doc, sort_keys=False)
        else:
            text = tomli_w.dumps(doc)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(doc, default=str) if fmt == "json" else "a = [[[[1]]]]\n"
    data = text.encode()
    roll = rng.random()
    if roll < 0.08:
        data = data[: rng.randint(0, len(data))]
    elif roll < 0.14:
        k = rng.randint(0, len(data))
        data = data[:k] + bytes([rng.randint(128, 255)]) + data[k:]
    elif roll < 0.17:
        deep = {"json": (b"[" * 3000, b"]" * 3000), "yaml": (b"[" * 3000, b"]" * 3000)}
        opening, closing = deep.get(fmt, (b"a = " + b"[" * 3000, b"]" * 3000 + b"\n"))
        data = opening + closing + b"\n" + data if fmt == "toml" else opening + data + closing
    elif roll < 0.19 and fmt == "json":
        data = data.replace(b"1", b"9" * 5000, 1)
    return data


def mutate_csv(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        k = rng.randrange(len(lines))
        cells = lines[k].split(",")
        roll = rng.random()
        if roll < 0.6:
            j = rng.randrange(len(cells))
            cells[j] = str(
                rng.choice(
                    [
                        "abc",
                        "inf",
                        "-inf",
                        "nan",
                        "1e400",
                        "-1",
                        "0",
                        "2:0",
                        "2:4:8",
                        "9" * 5000,
                        "1.5",
                        "",
                        '"',
                        "x" * 200_000,
                        "-1000",
                        "c",
                        "1e30",
                    ]
                )
            )
        elif roll < 0.8:
            cells = cells[: rng.randint(0, len(cells))]
        else:
            cells += ["extra"]
        lines[k] = ",".join(cells)
    data = ("\n".join(lines) + "\n").encode()
    if rng.random() < 0.05:
        data += b"\xff\xfe"
    return data


# ------------------------------------------------------------------ independent re-check


_GGML_BPW = {  # llama.cpp's ggml types: (K-quant bpw, 32-block fallback bpw) per bit width
    1: (2.625, 4.5), 2: (2.625, 4.5), 3: (3.4375, 4.5), 4: (4.5, 4.5), 5: (5.5, 5.5),
    6: (6.5625, 8.5), 7: (8.5, 8.5), 8: (8.5, 8.5),
}  # fmt: skip


def _size_bits(option: Any, unit: Any, overhead: Any) -> float:
    """The size model's formula written again from its docstring (allocator/schema/size.py)."""
    if option.bits == 16:
        return unit.numel * overhead.fp16_bits
    if overhead.layout == "ggml":
        k_quant, block32 = _GGML_BPW[option.bits]
        cols = None if unit.shape is None else unit.shape[1]
        if cols is None or cols % 256 == 0:
            return unit.numel * k_quant
        return unit.numel * (block32 if cols % 32 == 0 else 16.0)
    stored = option.bits if overhead.storage_bits is None else overhead.storage_bits
    values = unit.numel * (1 - option.sparsity) * stored
    if unit.shape is None:
        groups = 0.0 if option.group_size is None else unit.numel / option.group_size
    else:
        rows, cols = unit.shape
        group = cols if option.group_size is None else option.group_size
        groups = rows * math.ceil(cols / group)
    zero = 0
    if not option.symmetric or overhead.zeros_always:
        zero = option.bits if overhead.zero_packed else overhead.zero_bits
    meta = groups * (overhead.scale_bits + zero) + overhead.tensor_bits
    if unit.shape is not None:
        meta += unit.shape[1] * overhead.column_bits
    if option.sparsity_pattern == "unstructured":
        meta += unit.numel * overhead.mask_bits_per_weight
    elif option.sparsity_pattern == "nm":
        n, m = option.nm
        meta += unit.numel * n / m * math.ceil(math.log2(m))
    return values + meta


def _re2_matches(pattern: str, name: str) -> bool:
    return compile_pattern(pattern).search(name) is not None


def recheck(plan: Plan, table: Any, constraints: Any, *, solved: bool) -> list[str]:
    """Problems found without the solver's or the checker's code."""
    wrong = []
    json.loads(json.dumps(plan.model_dump(mode="json"), allow_nan=False))
    units = {u.name: u for u in table.units}
    total = size = loss = 0.0
    for a in plan.assignments:
        unit = units.get(a.unit)
        if unit is None or a.option.key not in table.losses[a.unit]:
            return [f"{a.unit}: not a table unit/option"]
        bits = _size_bits(a.option, unit, constraints.overhead)
        if bits < 0 or not math.isclose(bits, a.cost_bits, rel_tol=1e-9, abs_tol=1e-6):
            wrong.append(f"{a.unit}: size {a.cost_bits} vs {bits}")
        total += unit.numel
        size += bits
        loss += table.losses[a.unit][a.option.key]
    budget = constraints.budget.total_bits(int(total))
    if size > budget * (1 + 1e-9) + 1e-6:
        wrong.append(f"size {size} over budget {budget}")
    if not math.isclose(loss, plan.predicted_loss, rel_tol=1e-9, abs_tol=1e-12):
        wrong.append(f"loss {plan.predicted_loss} vs {loss}")
    if not all(math.isfinite(x) for x in (plan.size_bits, plan.predicted_loss, plan.budget_bits)):
        wrong.append("non-finite totals")
    if plan.gap is not None and not (math.isfinite(plan.gap) and plan.gap >= 0):
        wrong.append(f"gap {plan.gap}")
    combos = math.prod(len(row) for row in table.losses.values())
    if combos <= 20_000:
        best = _random_cases.brute_force(table, constraints)
        if best is None:
            wrong.append("brute force finds no feasible plan")
        elif loss < best[0] - 1e-9 * max(1.0, abs(best[0])):
            wrong.append(f"loss {loss} below the optimum {best[0]}: a constraint is broken")
        elif solved and plan.status == "optimal" and loss > best[0] + 1e-6 * max(1e-9, best[0]):
            wrong.append(f"'optimal' loss {loss} above the optimum {best[0]}")
        elif plan.lower_bound is not None and plan.lower_bound > best[0] + 1e-9 * max(1, best[0]):
            wrong.append(f"lower bound {plan.lower_bound} above the optimum {best[0]}")
    return wrong


# ------------------------------------------------------------------ the driver


def _bases(rng: np.random.Generator, n: int) -> list[tuple[Any, Any, Plan]]:
    bases = []
    while len(bases) < n:
        table = random_table(
            rng, n_units=int(rng.integers(2, 5)), with_resource=len(bases) % 3 == 0
        )
        constraints = random_constraints(rng, table)
        try:
            plan = solve(table, constraints)
        except AllocatorError:
            continue
        bases.append((table, constraints, plan))
    return bases


def _one_case(k: int, rng: random.Random, bases: list, tmp: Path) -> tuple[str, Any]:
    """('plan' | 'error' | 'checked', detail) for case ``k``."""
    table, constraints, plan = rng.choice(bases)
    target = rng.choice(["table", "constraints", "plan", "args"])
    fmt = rng.choice(["json", "yaml", "toml"])
    t_path, c_path = tmp / f"t{k}.json", tmp / f"c{k}.{fmt}"
    io.save_table(table, t_path)
    c_doc = constraints.model_dump(mode="json", exclude_none=True)
    c_path.write_bytes(render(c_doc, fmt, rng) if target != "constraints" else b"")
    solver, kwargs = "auto", {}
    if target == "table":
        if rng.random() < 0.4:
            t_path = tmp / f"t{k}.csv"
            t_path.write_bytes(mutate_csv(io.table_to_csv(table), rng))
        else:
            t_path = tmp / f"t{k}.{fmt}"
            t_path.write_bytes(render(mutate_doc(table.model_dump(mode="json"), rng), fmt, rng))
    elif target == "constraints":
        c_path.write_bytes(render(mutate_doc(c_doc, rng), fmt, rng))
    elif target == "args":
        solver = rng.choice([*SOLVERS, "nope", ""])
        for name in ("time_limit", "mip_gap"):
            if rng.random() < 0.5:
                kwargs[name] = rng.choice([_hostile(rng), 0.5, 10, 1e-3, 0.0])
    LAST[:] = [target, fmt, t_path.suffix]
    loaded_table = io.load_table(t_path)
    loaded_constraints = io.load_constraints(c_path)
    if target == "plan":
        p_path = tmp / f"p{k}.{fmt}"
        p_path.write_bytes(render(mutate_doc(plan.model_dump(mode="json"), rng), fmt, rng))
        mutated = io.load_plan(p_path)
        problems = check_plan(mutated, loaded_table, loaded_constraints)
        if problems:
            return "error", problems[0]
        return "checked", recheck(mutated, loaded_table, loaded_constraints, solved=False)
    if target != "args":
        solver = rng.choice(SOLVERS)
    LAST[:] = [target, fmt, solver, t_path.suffix]
    solved = solve(loaded_table, loaded_constraints, solver, **kwargs)
    return "plan", recheck(solved, loaded_table, loaded_constraints, solved=True)


def run_fuzz(n_cases: int, tmp: Path, seed: int = SEED) -> dict[str, Any]:
    backends.load_all()
    bases = _bases(np.random.default_rng(seed), 12)
    for solver in set(SOLVERS):  # imports and first calls are not the cases' time
        with contextlib.suppress(AllocatorError):
            solve(bases[0][0], Constraints.simple(16.0), solver)
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    failures: list[str] = []
    started = time.perf_counter()
    for k in range(n_cases):
        begin, begin_cpu = time.perf_counter(), time.thread_time()
        try:
            outcome, detail = _one_case(k, rng, bases, tmp)
        except AllocatorError:
            outcome, detail = "error", None
        except Exception as exc:  # counting them is the point
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            outcome, detail = (
                "traceback",
                f"case {k}: {type(exc).__name__} at {where}: {exc!s:.200}",
            )
        seconds = time.perf_counter() - begin
        cpu_seconds = time.thread_time() - begin_cpu
        counts["cases"] += 1
        if outcome == "error":
            counts["clean errors"] += 1
        elif outcome in ("plan", "checked"):
            counts["plans" if outcome == "plan" else "plans accepted by check"] += 1
            if detail:
                counts["wrong answers"] += 1
                failures.append(f"case {k}: {detail[:3]} ({' '.join(LAST)})")
        else:
            counts["tracebacks"] += 1
            failures.append(detail)
        if cpu_seconds > CASE_SECONDS or seconds > BLOCKED_SECONDS:
            counts["hangs"] += 1
            failures.append(f"case {k}: {cpu_seconds:.2f} s CPU, {seconds:.2f} s wall "
                            f"({' '.join(LAST)})")  # fmt: skip
        for leftover in tmp.iterdir():
            leftover.unlink()
    counts["seconds"] = round(time.perf_counter() - started, 1)
    for key in ("tracebacks", "hangs", "wrong answers"):
        counts.setdefault(key, 0)
    return {"counts": dict(counts), "failures": failures}


def test_fuzz_hostile_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # brute force matches patterns with RE2 too: a hostile pattern must not hang the reference
    monkeypatch.setattr(_random_cases, "_matches", _re2_matches)
    result = run_fuzz(N_CASES, tmp_path)
    counts = result["counts"]
    print("\nfuzz:", json.dumps(counts))
    report = os.environ.get("ALLOCATOR_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(result, indent=1) + "\n")
    assert counts["cases"] == N_CASES
    assert counts["tracebacks"] == 0, result["failures"][:10]
    assert counts["hangs"] == 0, result["failures"][:10]
    assert counts["wrong answers"] == 0, result["failures"][:10]
    assert counts.get("plans", 0) > N_CASES // 20  # the mutations leave enough inputs valid
    assert counts.get("clean errors", 0) > N_CASES // 3


def test_fuzz_is_seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_random_cases, "_matches", _re2_matches)
    first = run_fuzz(40, tmp_path)["counts"]
    second = run_fuzz(40, tmp_path)["counts"]
    first.pop("seconds"), second.pop("seconds")
    assert first == second
