"""``allocator schema``: print the JSON Schema of constraint files, tables and plans."""

from __future__ import annotations

import json

import typer

from allocator.schema.io import json_schema


def register(app: typer.Typer) -> None:
    @app.command("schema")
    def schema(name: str = typer.Argument(..., help="constraints, table or plan")) -> None:
        """Print the JSON Schema of a file format."""
        typer.echo(json.dumps(json_schema(name), indent=1))
