"""``allocator export`` (a plan as another quantizer's config) and ``allocator import``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

import typer

from allocator.errors import InputError


def _units_from(units_path: Path | None, model: str | None):
    """Units with shapes: from a table file, or by loading the model (slower)."""
    if units_path is not None:
        from allocator.schema.io import load_table, table_from_csv

        if units_path.suffix.lower() == ".csv":
            return table_from_csv(units_path.read_text(), str(units_path)).units
        return load_table(units_path).units
    if model is not None:
        from allocator.models.loader import load_model
        from allocator.models.units import find_units

        return find_units(load_model(model).model)
    return None


def _target_lines() -> list[str]:
    """Every name ``export --to`` accepts, one line each with what its rules allow: each target
    (with its aliases), then its serving variants (``gptqmodel+vllm``; aliases take them too)."""
    from allocator.export import EXPORTERS
    from allocator.schema.targets import get_rules

    def line(name: str, aliases: tuple[str, ...]) -> str:
        also = f" (also: {', '.join(aliases)})" if aliases else ""
        return f"{name}{also}: {get_rules(name).why}"

    lines = []
    for name in EXPORTERS.names():
        rules = get_rules(name)
        lines.append(line(name, rules.aliases))
        for variant in rules.variants:
            lines.append(line(f"{name}+{variant}", tuple(f"{a}+{variant}" for a in rules.aliases)))
    return lines


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        plan: Annotated[
            Path | None, typer.Option("--plan", help="plan file (JSON/YAML/TOML)")
        ] = None,
        to: str = typer.Option(None, "--to", help="target (see --list)"),
        out: Annotated[
            Path | None, typer.Option("--out", help="file to write (companions go next to it)")
        ] = None,
        model_type: str = typer.Option("llama", "--model-type", help="model family (GGUF names)"),
        units: Annotated[
            Path | None,
            typer.Option(
                "--units", help="table whose units give shapes (checks llama.cpp block fit)"
            ),
        ] = None,
        list_targets: bool = typer.Option(False, "--list", help="list targets and exit"),
        quiet: bool = typer.Option(False, "--quiet", help="print only the paths written"),
    ) -> None:
        """Write a plan as GPTQModel/AutoRound/llm-compressor/llama.cpp/torchao/ModelOpt/HQQ config."""
        from allocator.export import export_plan
        from allocator.schema.io import load_plan

        if list_targets:
            for line in _target_lines():
                typer.echo(line)
            return
        if plan is None or to is None or out is None:
            raise InputError("export: give --plan PLAN --to TARGET --out FILE (or --list)")
        result = export_plan(
            load_plan(plan), to, model_type=model_type, units=_units_from(units, None)
        )
        written = result.write(out)
        if not quiet:
            for line in result.report:
                typer.echo(line)
        for path in written:
            typer.echo(f"wrote {path}")

    @app.command("import")
    def import_cmd(
        source: Annotated[str, typer.Option("--from", help="exl2 (measurement.json) or imatrix")],
        path: Annotated[Path, typer.Option("--in", help="the file to import")],
        out: Annotated[
            Path, typer.Option("--out", help="table (.json/.yaml/.csv) or imatrix .npz")
        ],
        units: Annotated[
            Path | None, typer.Option("--units", help="table giving the model's units")
        ] = None,
        model: str = typer.Option(None, "--model", help="or load the model to find its units"),
        model_type: str = typer.Option("llama", "--model-type", help="model family (GGUF names)"),
    ) -> None:
        """Import another tool's measurements: EXL2 -> SensitivityTable, imatrix -> .npz weights."""
        if source == "exl2":
            from allocator.profile.importers import read_exl2_measurement
            from allocator.schema.io import save_table

            found = _units_from(units, model)
            if found is None:
                raise InputError("import --from exl2: give --units TABLE or --model NAME for sizes")
            table = read_exl2_measurement(path, found)
            save_table(table, out)
            typer.echo(f"wrote {out}: {len(table.units)} sublayers, {len(table.options)} options")
        elif source == "imatrix":
            import numpy as np

            from allocator.profile.importers import read_imatrix
            from allocator.schema.io import atomic_write_bytes

            imatrix = read_imatrix(path, model_type)
            buffer = io.BytesIO()
            np.savez(buffer, **imatrix.weights)  # type: ignore[arg-type]  # numpy's stub
            atomic_write_bytes(out, buffer.getvalue())
            typer.echo(
                f"wrote {out}: {len(imatrix.weights)} modules ({imatrix.source_format} imatrix, "
                f"{len(imatrix.unmapped)} tensors without a Hugging Face name)"
            )
        else:
            raise InputError(f"import --from {source!r}: choose exl2 or imatrix")
