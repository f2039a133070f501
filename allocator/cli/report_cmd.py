"""``allocator report``: one self-contained HTML page (figures embedded) plus SVG/PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        source: Annotated[Path, typer.Argument(help="a run folder or a plan file")],
        out: Annotated[Path, typer.Option("--out", help="HTML file to write")] = Path(
            "report.html"
        ),
        table: Annotated[
            Path | None, typer.Option("--table", help="table for the frontier and curves")
        ] = None,
    ) -> None:
        """Heatmap of bits, size by kind, Pareto frontier, sensitivity curves, results table."""
        from allocator.report import build_report, load_inputs, write_report

        inputs = load_inputs(source, table)
        report = build_report(
            inputs["plan"], inputs.get("table"), inputs.get("results"), inputs.get("validation"),
            title=f"allocator report: {source}", png=True,
        )  # fmt: skip
        for path in write_report(report, out):
            typer.echo(f"wrote {path}")
