"""``allocator profile``: measure a model's sensitivity table with one estimator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from allocator.cli import scale_opts
from allocator.errors import InputError
from allocator.profile.estimators import DEFAULT_ESTIMATOR


def _parse_set(items: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values are read as JSON when they parse, else kept as strings."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: write key=value, e.g. --set reference=b3-g128")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_cmd(
        out: Annotated[Path, typer.Option("--out", help="table to write (.json/.yaml/.toml/.csv)")],
        model: Annotated[
            str, typer.Option(help="model folder, .gguf file, or 'smollm2'")
        ] = "smollm2",
        text: Annotated[
            list[Path] | None,
            typer.Option("--text", help="calibration text file(s); default: Jane Austen novels"),
        ] = None,
        estimator: Annotated[
            str,
            typer.Option(help="a registered estimator: 'allocator estimators' lists them"),
        ] = DEFAULT_ESTIMATOR,
        options: Annotated[
            str, typer.Option(help="grid, e.g. 'bits=2,3,4 group=64,128 sparsity=0,2:4'")
        ] = "bits=2,3,4,5,6,8 group=128",
        windows: Annotated[
            int | None, typer.Option(help="calibration windows (default: per estimator)")
        ] = None,
        seq_len: Annotated[int | None, typer.Option("--seq-len", help="tokens per window")] = None,
        seed: Annotated[int, typer.Option(help="seed of the window sample")] = 0,
        device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
        quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
        resume: Annotated[bool, typer.Option("--resume", help="continue a killed run")] = False,
        journal: Annotated[
            Path | None, typer.Option(help="journal of measured units (default OUT.journal.jsonl)")
        ] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", help="windows per pass")] = 4,
        calibrate: Annotated[
            str | None,
            typer.Option(help="'kl': calibrate the estimator per unit to measured KL points"),
        ] = None,
        rescale_to: Annotated[
            str | None,
            typer.Option(
                "--rescale-to",
                help="scale the round-to-nearest losses to the error this method leaves "
                "(gptq, sparsegpt), measured on sample units of each kind",
            ),
        ] = None,
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", help="estimator setting key=value, e.g. reference=b3-g128"),
        ] = None,
        offload: scale_opts.Offload = False,
        offload_activations: scale_opts.OffloadActivations = None,
        ray: scale_opts.Ray = None,
    ) -> None:
        """Measure how much each unit suffers under each option; write a SensitivityTable."""
        from allocator.profile.api import profile
        from allocator.profile.estimators import ESTIMATORS, load_all
        from allocator.profile.journal import discard_checkpoints
        from allocator.schema.io import save_table

        load_all()
        settings = _parse_set(set_ or [])
        if calibrate is not None:
            if calibrate != "kl":
                raise InputError(f"--calibrate {calibrate!r}: only 'kl' is supported")
            if estimator != "hessian_kl":
                settings["proxy"] = estimator
            estimator = "hessian_kl"
        spec = ESTIMATORS.get(estimator)
        journal_path = journal
        if (spec.journaled or spec.checkpointed) and journal_path is None:
            journal_path = out.with_name(out.name + ".journal.jsonl")
        table = profile(
            model,
            [str(p) for p in text] if text else None,
            estimator,
            options,
            windows=windows,
            seq_len=seq_len,
            seed=seed,
            device=device,
            progress=not quiet,
            batch_size=batch_size,
            journal=journal_path,
            resume=resume,
            settings=settings,
            rescale_to=rescale_to,
            offload=offload,
            offload_activations=offload_activations,
            ray=ray,
        )
        save_table(table, out)
        discard_checkpoints(journal_path)
        seconds = table.provenance.settings.get("seconds")
        typer.echo(
            f"wrote {out}: {len(table.units)} units x {len(table.options)} options "
            f"({estimator}, {seconds} s)"
        )
