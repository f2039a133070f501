"""``allocator apply | eval``: compress a model by a plan into a packed checkpoint; measure it.

``apply`` loads the model, checks the plan against it, compresses every unit (GPTQ/SparseGPT
units with block-by-block calibration on ``--calib-text``, default Pride and Prejudice + Sense
and Sensibility) and saves a packed checkpoint folder. ``eval`` prints perplexity on
``--text`` (default Persuasion) and, with ``--reference``, the mean KL against that model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from allocator.cli import scale_opts
from allocator.pipeline.tasks import load_any, read_text
from allocator.quant import DEFAULT_CALIBRATION, check_calibration

if TYPE_CHECKING:
    import torch

    from allocator.quant.apply_journal import ApplyJournal

MODEL_HELP = "model: 'smollm2', a Hugging Face folder, a .gguf file, or a packed checkpoint folder"


def _text(paths: list[Path] | None, default: str) -> str:
    files = [str(p) for p in paths] if paths else None
    return read_text(files, "calib" if default == "default_calibration_text" else "eval")


def _journal(folder: Path, resume: bool, windows: torch.Tensor, *job: object) -> ApplyJournal:
    """The apply journal in ``folder`` of a job (plan, model, method, act-order) on these
    calibration windows: continued with ``--resume``, else refused when it exists."""
    import hashlib

    from allocator.quant.apply_journal import apply_identity, open_apply_journal

    digest = hashlib.sha256(windows.numpy().tobytes()).hexdigest()
    return open_apply_journal(folder, apply_identity(*job, digest), resume=resume)


def register(app: typer.Typer) -> None:
    @app.command("apply")
    def apply_cmd(
        plan: Annotated[Path, typer.Option("--plan", help="plan file (.json, .yaml, .toml)")],
        out: Annotated[
            Path, typer.Option("--out", help="checkpoint folder (a .gguf file for --format gguf)")
        ],
        model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = "smollm2",
        method: Annotated[
            str | None,
            typer.Option("--method", help="override every unit's method: rtn, gptq, sparsegpt"),
        ] = None,
        calib_text: Annotated[
            list[Path] | None, typer.Option("--calib-text", help="calibration text file(s)")
        ] = None,
        calib_windows: Annotated[int, typer.Option("--calib-windows", min=1)] = 32,
        seq_len: Annotated[int, typer.Option("--seq-len", min=2)] = 512,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        act_order: Annotated[
            bool, typer.Option("--act-order/--no-act-order", help="GPTQ act-order")
        ] = True,
        calibration: Annotated[
            str,
            typer.Option(
                "--calibration",
                help="what GPTQ/SparseGPT calibrate each layer on: plain, sequential or "
                "asymmetric (allocator.quant.apply.CALIBRATIONS)",
            ),
        ] = DEFAULT_CALIBRATION,
        bos: Annotated[
            bool | None,
            typer.Option(
                "--bos/--no-bos", help="start windows with BOS (default: as the tokenizer does)"
            ),
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", help="no progress, no summary")] = False,
        fmt: Annotated[
            str,
            typer.Option(
                "--format",
                help="allocator (packed checkpoint folder), compressed-tensors (Hugging Face "
                "folder for transformers/vLLM) or gguf (a .gguf file quantized by llama.cpp)",
            ),
        ] = "allocator",
        target: Annotated[
            str | None,
            typer.Option(
                "--target", help="compressed-tensors: refuse what vllm or transformers cannot load"
            ),
        ] = None,
        dtype: Annotated[
            str | None,
            typer.Option(
                "--dtype",
                help="compressed-tensors: dtype of unquantized tensors (default: model's)",
            ),
        ] = None,
        resume: Annotated[
            bool, typer.Option("--resume", help="continue a killed apply from its journal")
        ] = False,
        journal: Annotated[
            Path | None,
            typer.Option(help="journal of finished blocks (default OUT.journal; GPTQ/SparseGPT)"),
        ] = None,
        offload: scale_opts.Offload = False,
        offload_activations: scale_opts.OffloadActivations = None,
        ray: scale_opts.Ray = None,
    ) -> None:
        """Compress a model by a plan and save it as a packed checkpoint, a compressed-tensors
        folder or a llama.cpp GGUF (see --format)."""
        from allocator.deploy import check_format
        from allocator.models.windows import token_windows
        from allocator.quant.apply import apply_plan, needs_calibration
        from allocator.quant.checkpoint import is_checkpoint, save_checkpoint
        from allocator.schema.io import load_plan

        began = time.perf_counter()
        fmt = check_format(fmt, target, dtype)
        check_calibration(calibration)
        loaded_plan = load_plan(plan)
        if fmt == "gguf":
            from allocator.deploy.gguf import apply_gguf

            text = _text(calib_text, "default_calibration_text")
            result = apply_gguf(
                model, loaded_plan, out, text, windows=calib_windows, seq_len=seq_len, seed=seed,
                bos=bos, progress=not quiet,
            )  # fmt: skip
            if not quiet:
                typer.echo(
                    "\n".join([*result.lines(), f"time        {time.perf_counter() - began:.1f} s"])
                )
            return
        if offload and fmt != "allocator":
            from allocator.errors import InputError

            raise InputError(f"--offload writes allocator checkpoints; not --format {fmt}")
        loaded = load_any(model, offload=offload, activations=offload_activations)
        applied = fmt == "compressed-tensors" and is_checkpoint(model)
        if fmt == "compressed-tensors":
            from allocator.deploy.compressed_tensors import precheck

            precheck(
                loaded.model, loaded_plan, target=target, checkpoint=model if applied else None
            )
        blocks = None  # the journal of finished blocks (block-by-block GPTQ/SparseGPT only)
        if not applied:
            windows = None
            if needs_calibration(loaded_plan, method):
                text = _text(calib_text, "default_calibration_text")
                windows = token_windows(
                    loaded.tokenizer, text, seq_len=seq_len, n_windows=calib_windows, seed=seed,
                    bos=bos,
                )  # fmt: skip
                blocks = _journal(journal or out.with_name(out.name + ".journal"), resume,
                                  windows, loaded_plan.content_hash(), loaded.model_hash,
                                  method, act_order, calibration)  # fmt: skip
            apply_plan(
                loaded.model,
                loaded_plan,
                windows,
                method=method,
                act_order=act_order,
                calibration=calibration,
                progress=not quiet,
                journal=blocks,
                ray=ray,
            )
        if fmt == "compressed-tensors":
            from allocator.deploy.compressed_tensors import write_and_verify

            lines = write_and_verify(
                loaded.model, loaded_plan, out, tokenizer=loaded.tokenizer, target=target,
                dtype=dtype,
            )  # fmt: skip
            if blocks is not None:
                blocks.discard()
            if not quiet:
                typer.echo("\n".join([*lines, f"time        {time.perf_counter() - began:.1f} s"]))
            return
        sizes = save_checkpoint(loaded.model, loaded_plan, out, tokenizer=loaded.tokenizer)
        if blocks is not None:
            blocks.discard()  # the checkpoint is saved: the finished blocks are not needed
        if not quiet:
            typer.echo(
                f"checkpoint  {out}\n"
                f"packed      {sizes.packed_bytes / 1e6:.3f} MB of tensors, {sizes.packed_file_bytes / 1e6:.3f} MB file (plan predicts "
                f"{sizes.predicted_bytes / 1e6:.3f} MB, {sizes.relative_error:+.3%})\n"
                f"other       {sizes.rest_bytes / 1e6:.3f} MB (embeddings, norms, biases)\n"
                f"avg bits    {loaded_plan.avg_bits:.4f}\n"
                f"time        {time.perf_counter() - began:.1f} s"
            )

    @app.command("eval")
    def eval_cmd(
        model: Annotated[str, typer.Option("--model", help=MODEL_HELP)] = "smollm2",
        text: Annotated[
            list[Path] | None, typer.Option("--text", help="evaluation text file(s)")
        ] = None,
        windows: Annotated[
            int, typer.Option("--windows", min=1, help="windows (embedding: passages)")
        ] = 32,
        seq_len: Annotated[
            int | None,
            typer.Option(
                "--seq-len", min=2, help="tokens per window (default 512; embedding: 128)"
            ),
        ] = None,
        reference: Annotated[
            str | None,
            typer.Option(
                "--reference", help="original model to measure KL (or embeddings) against"
            ),
        ] = None,
        task: Annotated[
            str,
            typer.Option(
                "--task",
                help="causal_lm (perplexity, KL), embedding (cosine of mean-pooled embeddings "
                "and hidden-state MSE vs --reference) or auto (from the model's config)",
            ),
        ] = "auto",
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", min=1, help="default: fits 512 MB of logits")
        ] = None,
        bos: Annotated[
            bool | None,
            typer.Option(
                "--bos/--no-bos", help="start windows with BOS (default: as the tokenizer does)"
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
        offload: scale_opts.Offload = False,
        offload_activations: scale_opts.OffloadActivations = None,
        ray: scale_opts.Ray = None,
    ) -> None:
        """Perplexity on held-out text (first N windows), and mean KL vs a reference model;
        for encoders, embedding cosine and hidden-state MSE vs the reference."""
        from allocator.pipeline.tasks import evaluate_spec

        record = evaluate_spec(
            model, reference=reference, text=[str(p) for p in text] if text else None,
            windows=windows, seq_len=seq_len, task=task, batch_size=batch_size, bos=bos,
            progress=not quiet, offload=offload, offload_activations=offload_activations,
            ray=ray,
        )  # fmt: skip
        if as_json:
            typer.echo(json.dumps(record, indent=1))
        elif record.get("task") == "embedding":
            typer.echo(
                f"cosine      {record['cosine']:.5f} (mean-pooled embeddings; worst text "
                f"{record['cosine_min']:.5f})\n"
                f"hidden mse  {record['hidden_mse']:.3e} ({record['relative_mse']:.3e} of the "
                "original's mean square)\n"
                f"texts       {record['texts']} (up to {record['max_len']} tokens, "
                f"{record['tokens']} tokens)\n"
                f"time        {record['seconds']:.1f} s"
            )
        else:
            kl = "-" if record["kl"] is None else f"{record['kl']:.5f}"
            typer.echo(
                f"perplexity  {record['perplexity']:.3f}\nkl          {kl}\n"
                f"tokens      {record['tokens']} ({record['windows']} x {record['seq_len']})\n"
                f"time        {record['seconds']:.1f} s"
            )
