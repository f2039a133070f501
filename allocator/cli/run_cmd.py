"""``allocator run``: profile -> solve -> apply -> evaluate in one command (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from allocator.pipeline import DEFAULT_ESTIMATOR, DEFAULT_OPTIONS, RunSettings


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_command(
        model: str = typer.Option("smollm2", help="model: 'smollm2', a .gguf file or a HF folder"),
        budget: float = typer.Option(3.5, help="average bits per weight, overhead included"),
        out: Annotated[Path, typer.Option(help="output folder (reruns resume here)")] = Path(
            "runs/default"
        ),
        estimator: str = typer.Option(DEFAULT_ESTIMATOR, help="sensitivity estimator"),
        options: str = typer.Option(
            DEFAULT_OPTIONS, help="option grid, e.g. 'bits=2,3,4 group=128'"
        ),
        method: str = typer.Option("gptq", help="quantizer: gptq, rtn, sparsegpt, wanda"),
        solver: str = typer.Option("auto", help="solver backend"),
        profile_windows: int | None = typer.Option(
            None, help="profiling windows (estimator default)"
        ),
        profile_seq_len: int | None = typer.Option(None, help="profiling window length"),
        quant_windows: int = typer.Option(16, help="GPTQ calibration windows"),
        eval_windows: int = typer.Option(32, help="evaluation windows"),
        seq_len: int = typer.Option(512, help="tokens per calibration/evaluation window"),
        refine_rounds: int = typer.Option(0, help="closed-loop refinement rounds (0 = off)"),
        calib_text: Annotated[
            list[Path] | None, typer.Option(help="calibration text files")
        ] = None,
        eval_text: Annotated[
            list[Path] | None, typer.Option(help="held-out evaluation text files")
        ] = None,
        compare_uniform: bool = typer.Option(True, help="also evaluate uniform at the same size"),
        calibrate_options: bool = typer.Option(
            False, help="correct each option's losses by measured KL on a few sample units"
        ),
        validate: bool = typer.Option(
            True, help="measure plan vs uniform on held-out calibration windows; keep the better"
        ),
        validate_windows: int = typer.Option(8, help="held-out calibration windows to validate on"),
        task: str = typer.Option(
            "auto", help="auto (from the model), causal_lm or embedding (encoders)"
        ),
        compare_llama: bool = typer.Option(
            False, help="also evaluate the llama.cpp Q4_K_M-style rule at the same budget"
        ),
        bos: bool | None = typer.Option(
            None, "--bos/--no-bos", help="start windows with BOS (default: as the tokenizer does)"
        ),
        seed: int = typer.Option(0, help="random seed"),
        device: str = typer.Option("cpu", help="cpu or cuda"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or logs"),
        server: str | None = typer.Option(
            None, "--server", help="run as a job on this allocation service (paths: its data root)"
        ),
        api_key: str | None = typer.Option(
            None, "--api-key", help="API key for --server (default: $ALLOCATOR_API_KEY)"
        ),
    ) -> None:
        """Compress a model end to end under a size budget and report its quality."""
        from allocator.pipeline import run

        settings = RunSettings(
            model=model,
            budget=budget,
            estimator=estimator,
            options=options,
            profile_windows=profile_windows,
            profile_seq_len=profile_seq_len,
            quant_windows=quant_windows,
            eval_windows=eval_windows,
            seq_len=seq_len,
            solver=solver,
            method=method,
            refine_rounds=refine_rounds,
            calib_text=[str(p) for p in calib_text] if calib_text else None,
            eval_text=[str(p) for p in eval_text] if eval_text else None,
            compare_uniform=compare_uniform,
            calibrate_options=calibrate_options,
            validate_plan=validate,
            validate_windows=validate_windows,
            bos=bos,
            task=task,
            compare_llama=compare_llama,
            seed=seed,
            device=device,
        )
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


def _run_remote(server: str, api_key: str | None, settings: RunSettings, out: Path, quiet: bool):
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
