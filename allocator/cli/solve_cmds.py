"""``allocator solve | check | pareto | schema``: the solver's command-line shell.

Without ``--table``/``--constraints`` the commands use the bundled example (a synthetic table
shaped like SmolLM2-135M). Exit codes: 0 ok, 2 bad input, 3 infeasible, 4 unsupported, 5 plan
check failed, 70 internal error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from allocator.cli.remote import KEY_HELP, SERVER_HELP, client_for
from allocator.errors import InputError, PlanCheckError
from allocator.schema.io import json_schema

TABLE_HELP = "sensitivity table (.json or long-format .csv); default: the bundled example"
CONSTRAINTS_HELP = "constraint file (.yaml, .toml, .json); default: the bundled example"
SOLVER_HELP = "backend name (see 'allocator solvers'), or auto"


def _inputs(table: Path | None, constraints: Path | None) -> tuple[Any, Any]:
    from allocator.data.example import CONSTRAINTS_PATH, TABLE_PATH
    from allocator.schema.io import load_constraints, load_table

    return load_table(table or TABLE_PATH), load_constraints(constraints or CONSTRAINTS_PATH)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(summary: dict[str, Any], out: Path | None) -> None:
    """Human-readable plan summary with a bits histogram (share of weights)."""
    lines = [
        f"plan        {out}" if out else None,
        f"units       {summary['units']}",
        f"avg bits    {summary['avg_bits']:.4f} (budget {summary['budget_bits'] / 8e6:.3f} MB)",
        f"size        {summary['size_bytes'] / 1e6:.3f} MB",
        f"loss        {summary['predicted_loss']:.6g} (lower bound {_fmt(summary['lower_bound'], '.6g')})",
        f"gap         {_fmt(summary['gap'], '.3%')} [{summary['status']}]",
        f"solver      {summary['solver']} in {summary['solve_seconds']:.3f} s",
    ]
    for name, used in summary["resources"].items():
        lines.append(f"resource    {name} = {used:.6g}")
    lines.append("bits histogram (share of weights):")
    for bits, share in summary["weight_share_by_bits"].items():
        label = "fp16" if bits == "16" else f"{bits}-bit"
        lines.append(f"  {label:>6} {'#' * round(40 * share):<40} {share:6.1%}")
    lines.append("options: " + ", ".join(f"{k} x{n}" for k, n in summary["options"].items()))
    lines += [f"note: {n}" for n in summary["notes"]]
    typer.echo("\n".join(line for line in lines if line))


def _budgets(text: str) -> list[float]:
    from allocator.patterns import shown

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(
            f"--budgets {shown(text)}: give average bits separated by commas, e.g. 2.5,3,4"
        ) from None
    if not values or any(not math.isfinite(v) or not 0 < v <= 1e6 for v in values):
        raise InputError(
            f"--budgets {shown(text)}: give positive finite average bits, e.g. 2.5,3,3.5,4"
        )
    return values


def register(app: typer.Typer) -> None:
    @app.command("schema")
    def schema(name: Annotated[str, typer.Argument(help="constraints, table or plan")]) -> None:
        """Print the JSON Schema of a file format."""
        typer.echo(json.dumps(json_schema(name), indent=1))

    @app.command("solvers")
    def solvers_cmd(
        show_all: Annotated[
            bool, typer.Option("--all", help="also list backends whose library is missing")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """List the solver backends installed here (from the solver registry)."""
        from allocator.solve.registry import solver_table

        rows = [r for r in solver_table() if show_all or r["installed"]]
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        for r in rows:
            names = ", ".join([r["name"], *r["aliases"]])
            kind = "exact" if r["exact"] else "heuristic"
            missing = "" if r["installed"] else " [not installed]"
            typer.echo(
                f"{names:<22} {kind:<9} {'+'.join(r['supports']):<31} {r['description']}{missing}"
            )

    @app.command("solve")
    def solve_cmd(
        out: Annotated[Path, typer.Option("--out", help="plan to write (.json, .yaml, .toml)")],
        table: Annotated[Path | None, typer.Option("--table", help=TABLE_HELP)] = None,
        constraints: Annotated[
            Path | None, typer.Option("--constraints", help=CONSTRAINTS_HELP)
        ] = None,
        solver: Annotated[str, typer.Option("--solver", help=SOLVER_HELP)] = "auto",
        time_limit: Annotated[
            float | None, typer.Option("--time-limit", help="seconds for the solver")
        ] = None,
        mip_gap: Annotated[
            float, typer.Option("--mip-gap", help="relative optimality gap to accept")
        ] = 0.0,
        as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", help="print nothing on success")] = False,
        server: Annotated[str | None, typer.Option("--server", help=SERVER_HELP)] = None,
        api_key: Annotated[str | None, typer.Option("--api-key", help=KEY_HELP)] = None,
    ) -> None:
        """Choose one option per unit minimising predicted loss; write a checked plan."""
        from allocator.schema.io import save_plan
        from allocator.solve.api import solve

        loaded_table, loaded_constraints = _inputs(table, constraints)
        if server:
            with client_for(server, api_key) as client:
                plan = client.solve(
                    loaded_table, loaded_constraints, solver=solver, time_limit=time_limit,
                    mip_gap=mip_gap,
                )  # fmt: skip
        else:
            plan = solve(loaded_table, loaded_constraints, solver, time_limit, mip_gap)
        save_plan(plan, out)
        summary = plan.summary()
        if as_json:
            typer.echo(json.dumps({"plan": str(out), **summary}, indent=1))
        elif not quiet:
            print_summary(summary, out)

    @app.command("check")
    def check_cmd(
        plan: Annotated[Path, typer.Option("--plan", help="plan file to verify")],
        table: Annotated[Path | None, typer.Option("--table", help=TABLE_HELP)] = None,
        constraints: Annotated[
            Path | None, typer.Option("--constraints", help=CONSTRAINTS_HELP)
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print a JSON verdict")] = False,
    ) -> None:
        """Verify a plan against its table and constraints (exit 5 when it breaks them)."""
        from allocator.schema.io import load_plan
        from allocator.solve.checker import check_plan

        loaded_table, loaded_constraints = _inputs(table, constraints)
        problems = check_plan(load_plan(plan), loaded_table, loaded_constraints)
        if as_json:
            typer.echo(json.dumps({"plan": str(plan), "ok": not problems, "problems": problems}))
        else:
            for problem in problems:
                typer.echo(f"violation: {problem}")
        if problems:
            raise PlanCheckError(f"{plan}: {len(problems)} violations; first: {problems[0]}")
        if not as_json:
            typer.echo(f"{plan}: ok")

    @app.command("pareto")
    def pareto_cmd(
        out: Annotated[
            Path, typer.Option("--out", help="frontier to write (.json, or .csv summary)")
        ],
        table: Annotated[Path | None, typer.Option("--table", help=TABLE_HELP)] = None,
        constraints: Annotated[
            Path | None, typer.Option("--constraints", help=CONSTRAINTS_HELP)
        ] = None,
        budgets: Annotated[
            str, typer.Option("--budgets", help="average bits")
        ] = "2.5,3,3.5,4,4.5,5,6",
        solver: Annotated[str, typer.Option("--solver", help=SOLVER_HELP)] = "auto",
        time_limit: Annotated[
            float | None, typer.Option("--time-limit", help="seconds per budget")
        ] = None,
        with_plans: Annotated[
            bool, typer.Option("--with-plans", help="include each plan in JSON")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print the points as JSON")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar or table")] = False,
        server: Annotated[str | None, typer.Option("--server", help=SERVER_HELP)] = None,
        api_key: Annotated[str | None, typer.Option("--api-key", help=KEY_HELP)] = None,
    ) -> None:
        """The loss-vs-size frontier over a list of average-bit budgets."""
        from allocator.schema.io import atomic_write_text
        from allocator.solve.pareto import front, points_csv, sweep

        loaded_table, loaded_constraints = _inputs(table, constraints)
        if server:
            with client_for(server, api_key) as client:
                points = client.pareto(
                    loaded_table, loaded_constraints, _budgets(budgets), solver=solver,
                    time_limit=time_limit,
                )  # fmt: skip
        else:
            points = sweep(
                loaded_table,
                loaded_constraints,
                _budgets(budgets),
                solver=solver,
                time_limit=time_limit,
                progress=not quiet and not as_json,
            )
        if out.suffix.lower() == ".csv":
            atomic_write_text(out, points_csv(points))
        else:
            exclude = None if with_plans else {"points": {"__all__": {"plan"}}}
            data = front(loaded_table, loaded_constraints, points).model_dump(
                mode="json", exclude=exclude
            )
            atomic_write_text(out, json.dumps(data, indent=1) + "\n")
        rows = [p.model_dump(exclude={"plan"}) for p in points]
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
        elif not quiet:
            typer.echo(f"{'budget':>7} {'avg bits':>9} {'loss':>12} {'gap':>8}  status")
            for p in points:
                if not p.feasible:
                    typer.echo(f"{p.budget_avg_bits:7.3f} {'-':>9} {'-':>12} {'-':>8}  infeasible")
                    continue
                typer.echo(
                    f"{p.budget_avg_bits:7.3f} {p.avg_bits:9.4f} {p.predicted_loss:12.6g} "
                    f"{_fmt(p.gap, '.2%'):>8}  {p.status}"
                )
            typer.echo(f"wrote {out}")
