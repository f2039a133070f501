"""``allocator run``: profile -> solve -> apply -> evaluate in one command (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from allocator.cli.settings_cli import with_settings
from allocator.pipeline import RunSettings


def register(app: typer.Typer) -> None:
    @app.command("run")
    @with_settings(RunSettings, extra_flags={"validate_plan": ["--validate/--no-validate"]})
    def run_command(
        settings: RunSettings,
        out: Annotated[Path, typer.Option(help="output folder (reruns resume here)")] = Path(
            "runs/default"
        ),
        quiet: Annotated[
            bool, typer.Option("--quiet", "-q", help="no progress bars or logs")
        ] = False,
        server: Annotated[
            str | None,
            typer.Option(
                "--server", help="run as a job on this allocation service (paths: its data root)"
            ),
        ] = None,
        api_key: Annotated[
            str | None,
            typer.Option("--api-key", help="API key for --server (default: $ALLOCATOR_API_KEY)"),
        ] = None,
    ) -> None:
        """Compress a model end to end under a size budget and report its quality (the options
        before --out are the fields of allocator.pipeline.RunSettings)."""
        from allocator.pipeline import run

        if server:
            _run_remote(server, api_key, settings, out, quiet)
            return
        if quiet:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        log = (lambda _msg: None) if quiet else typer.echo
        results = run(settings, out, progress=not quiet, log=log)
        from allocator.report import report_run_folder

        report_run_folder(out, log=log)
        if quiet:
            rows = results["rows"]
            for r in rows:
                typer.echo(
                    f"{r['method']}: {r['avg_bits']:.3f} bits, "
                    + (
                        f"perplexity {r['perplexity']:.2f}"
                        if "perplexity" in r
                        else f"cosine {r['cosine']:.4f}"
                    )
                )


def _run_remote(
    server: str, api_key: str | None, settings: RunSettings, out: Path, quiet: bool
) -> None:
    """Submit the run as a job, follow it, and download its results and plan into ``out``."""
    from allocator.cli.remote import client_for
    from allocator.client import ServiceError

    with client_for(server, api_key) as client:
        job = client.submit("run", settings)
        typer.echo(f"job {job['id']} submitted to {server}")
        job = client.wait(job["id"], progress=not quiet)
        if job["state"] != "succeeded":
            raise ServiceError(500, f"job {job['id']} {job['state']}: {job['error']}")
        out.mkdir(parents=True, exist_ok=True)
        names = {a["path"] for a in client.artifacts(job["id"])}
        for name in ("results.json", "results.md", "plan.json", "table.json"):
            if name in names:
                client.download(job["id"], name, out / name)
        if (out / "results.md").is_file():
            typer.echo((out / "results.md").read_text())
        typer.echo(f"downloaded results into {out} (checkpoint: job artifact 'checkpoint')")
