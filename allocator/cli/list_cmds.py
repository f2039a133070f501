"""``allocator estimators | methods``: what the registries hold, read from their own metadata
(``allocator solvers`` lists the solver registry the same way)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("estimators")
    def estimators_cmd(
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """List the sensitivity estimators for 'allocator profile --estimator'."""
        from allocator.profile.estimators import estimator_table

        rows = estimator_table()
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        for r in rows:
            flags = [r["kind"], f"{r['windows']}x{r['seq_len']}"]
            flags += ["gradients"] if r["needs_gradients"] else []
            flags += ["causal LM only"] if r["tasks"] == ["causal_lm"] else []
            flags += ["resumable"] if r["resumable"] else []
            flags += ["default"] if r["default"] else []
            typer.echo(f"{r['name']:<13} {r['description']} [{', '.join(flags)}]")

    @app.command("methods")
    def methods_cmd(
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """List the quantizer methods an option's '@method' (or '--method') may name."""
        from allocator.quant.compress import QUANT_METHODS

        rows = []
        for name in QUANT_METHODS.names():
            method = QUANT_METHODS.get(name)
            rows.append({"name": name, "description": method.description,
                         "needs_hessian": method.needs_hessian, "act_sq": method.act_sq})  # fmt: skip
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        for r in rows:
            needs = "input Hessian (calibration)" if r["needs_hessian"] else "no calibration"
            typer.echo(f"{r['name']:<10} {r['description']} [{needs}]")
