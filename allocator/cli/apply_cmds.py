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
from typing import Annotated, Any

import typer

MODEL_HELP = "model: 'smollm2', a Hugging Face folder, a .gguf file, or a packed checkpoint folder"


def load_any(spec: str) -> Any:
    """A LoadedModel from a packed checkpoint folder or any loader spec."""
    from allocator.models.loader import load_model
    from allocator.quant.checkpoint import is_checkpoint, load_checkpoint

    return load_checkpoint(spec) if is_checkpoint(spec) else load_model(spec)


def _text(paths: list[Path] | None, default: str) -> str:
    from allocator.models import corpus

    if paths:
        return corpus.read_texts(list(paths))
    return getattr(corpus, default)()


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
        loaded = load_any(model)
        applied = fmt == "compressed-tensors" and is_checkpoint(model)
        if fmt == "compressed-tensors":
            from allocator.deploy.compressed_tensors import precheck

            precheck(
                loaded.model, loaded_plan, target=target, checkpoint=model if applied else None
            )
        if not applied:
            windows = None
            if needs_calibration(loaded_plan, method):
                text = _text(calib_text, "default_calibration_text")
                windows = token_windows(
                    loaded.tokenizer, text, seq_len=seq_len, n_windows=calib_windows, seed=seed,
                    bos=bos,
                )  # fmt: skip
            apply_plan(
                loaded.model,
                loaded_plan,
                windows,
                method=method,
                act_order=act_order,
                progress=not quiet,
            )
        if fmt == "compressed-tensors":
            from allocator.deploy.compressed_tensors import write_and_verify

            lines = write_and_verify(
                loaded.model, loaded_plan, out, tokenizer=loaded.tokenizer, target=target,
                dtype=dtype,
            )  # fmt: skip
            if not quiet:
                typer.echo("\n".join([*lines, f"time        {time.perf_counter() - began:.1f} s"]))
            return
        sizes = save_checkpoint(loaded.model, loaded_plan, out, tokenizer=loaded.tokenizer)
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
    ) -> None:
        """Perplexity on held-out text (first N windows), and mean KL vs a reference model;
        for encoders, embedding cosine and hidden-state MSE vs the reference."""
        from allocator.errors import InputError
        from allocator.evaluate import evaluate
        from allocator.models.windows import token_windows

        if task not in ("auto", "causal_lm", "embedding"):
            raise InputError(f"--task {task!r}: use causal_lm, embedding or auto")
        loaded = load_any(model)
        ref_loaded = load_any(reference) if reference else None
        ref = ref_loaded.model if ref_loaded is not None else None
        tokenizer = loaded.tokenizer
        if tokenizer is None and ref_loaded is not None:
            tokenizer = ref_loaded.tokenizer
        body = _text(text, "default_evaluation_text")
        if task == "auto":
            task = loaded.task
        if task == "embedding":
            _eval_embedding(
                model, loaded, ref_loaded, tokenizer, body, windows, seq_len, as_json, quiet
            )
            return
        if loaded.task != "causal_lm":
            raise InputError(
                f"--model {model}: {type(loaded.model).__name__} has no LM head, so no "
                "perplexity; evaluate it with --task embedding --reference <original model>"
            )
        seq_len = seq_len or 512
        ids = token_windows(
            tokenizer, body, seq_len=seq_len, n_windows=windows, contiguous=True, bos=bos
        )
        result = evaluate(loaded.model, ids, ref, batch_size=batch_size, progress=not quiet)
        record = {
            "model": model,
            "reference": reference,
            "perplexity": result.perplexity,
            "kl": result.kl,
            "windows": result.n_windows,
            "seq_len": seq_len,
            "tokens": result.n_tokens,
            "seconds": result.seconds,
        }
        if as_json:
            typer.echo(json.dumps(record, indent=1))
            return
        kl = "-" if result.kl is None else f"{result.kl:.5f}"
        typer.echo(
            f"perplexity  {result.perplexity:.3f}\nkl          {kl}\n"
            f"tokens      {result.n_tokens} ({result.n_windows} x {seq_len})\n"
            f"time        {result.seconds:.1f} s"
        )


def _eval_embedding(
    model: str,
    loaded: Any,
    ref_loaded: Any,
    tokenizer: Any,
    body: str,
    windows: int,
    seq_len: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """``eval --task embedding``: cosine of pooled embeddings and hidden MSE vs the reference."""
    from allocator.errors import InputError
    from allocator.evaluate import evaluate_embeddings, text_batches

    if ref_loaded is None:
        raise InputError(
            "--task embedding compares the model's embeddings with the original's: give "
            "--reference <original model>"
        )
    max_len = seq_len or 128
    ids, mask = text_batches(tokenizer, body, n_texts=windows, max_len=max_len)
    result = evaluate_embeddings(
        {"model": loaded.model}, ids, ref_loaded.model, attention_mask=mask, progress=not quiet
    )["model"]
    record = {
        "model": model,
        "reference": ref_loaded.source,
        "task": "embedding",
        "cosine": result.cosine,
        "cosine_min": result.cosine_min,
        "hidden_mse": result.hidden_mse,
        "relative_mse": result.relative_mse,
        "texts": result.n_texts,
        "max_len": max_len,
        "tokens": result.n_tokens,
        "seconds": result.seconds,
    }
    if as_json:
        typer.echo(json.dumps(record, indent=1))
        return
    typer.echo(
        f"cosine      {result.cosine:.5f} (mean-pooled embeddings; worst text "
        f"{result.cosine_min:.5f})\n"
        f"hidden mse  {result.hidden_mse:.3e} ({result.relative_mse:.3e} of the original's mean "
        "square)\n"
        f"texts       {result.n_texts} (up to {max_len} tokens, {result.n_tokens} tokens)\n"
        f"time        {result.seconds:.1f} s"
    )
