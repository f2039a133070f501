"""The ``apply`` and ``eval`` jobs, shared by the CLI (``allocator apply|eval``) and the service's
workers, so both load models, read texts and measure the same way.

``evaluate_spec`` returns the record both print or save: perplexity and KL vs a reference for
causal LMs; for encoders (``task="embedding"``) the cosine of mean-pooled embeddings and the
hidden-state MSE against the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from allocator.errors import InputError, UnsupportedError

Task = Literal["auto", "causal_lm", "embedding"]
TASKS: tuple[str, ...] = ("auto", "causal_lm", "embedding")


def load_any(spec: str, *, offload: bool = False, activations: Any = None) -> Any:
    """A LoadedModel from a packed checkpoint folder or any model spec the loader takes;
    ``offload`` leaves a model folder's weights on disk (a packed checkpoint, already
    compressed, loads in memory)."""
    from allocator.models.loader import load_model
    from allocator.quant.checkpoint import is_checkpoint, load_checkpoint

    if is_checkpoint(spec):
        return load_checkpoint(spec)
    if offload or activations is not None:
        return load_model(spec, offload=offload, offload_activations=activations)
    return load_model(spec)


def worker_spec(spec: str) -> str:
    """``spec`` as another process loads it: an existing local path made absolute."""
    from pathlib import Path

    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def read_text(paths: Sequence[str] | None, which: Literal["calib", "eval"]) -> str:
    """The given text files, or the built-in calibration / held-out evaluation text."""
    from allocator.models import corpus

    if paths:
        return corpus.read_texts(list(paths))
    if which == "calib":
        return corpus.default_calibration_text()
    return corpus.default_evaluation_text()


def calibration_windows(
    loaded: Any,
    plan: Any,
    method: str | None,
    *,
    text: Sequence[str] | None,
    windows: int,
    seq_len: int,
    seed: int,
    bos: bool | None,
) -> Any:
    """Token windows for applying ``plan`` (None when no unit's method needs calibration)."""
    from allocator.models.windows import token_windows
    from allocator.quant.apply import needs_calibration

    if not needs_calibration(plan, method):
        return None
    return token_windows(
        loaded.tokenizer, read_text(text, "calib"), seq_len=seq_len, n_windows=windows,
        seed=seed, bos=bos,
    )  # fmt: skip


def evaluate_spec(
    model: str,
    *,
    reference: str | None = None,
    text: Sequence[str] | None = None,
    windows: int = 32,
    seq_len: int | None = None,
    task: str = "auto",
    batch_size: int | None = None,
    bos: bool | None = None,
    progress: bool = True,
    offload: bool = False,
    offload_activations: Any = None,
    ray: str | None = None,
) -> dict[str, Any]:
    """Measure ``model`` (a model spec or checkpoint folder) on held-out text; see module doc.

    ``seq_len`` defaults to 512 tokens per window (encoders: passages of up to 128 tokens).
    ``ray`` (``auto`` or a cluster address): the windows' batches run as Ray tasks that load the
    models themselves (``allocator.evaluate.distributed``; causal LMs only).
    """
    if task not in TASKS:
        raise InputError(f"--task {task!r}: use causal_lm, embedding or auto")
    loaded = load_any(model, offload=offload, activations=offload_activations)
    ref_loaded = None
    if reference:
        ref_loaded = load_any(reference, offload=offload, activations=offload_activations)
    tokenizer = loaded.tokenizer
    if tokenizer is None and ref_loaded is not None:
        tokenizer = ref_loaded.tokenizer
    body = read_text(text, "eval")
    if task == "auto":
        task = loaded.task
    if task == "embedding":
        if ray is not None:
            raise UnsupportedError(
                "--ray evaluates causal LMs (perplexity, KL); evaluate an embedding model "
                "without --ray"
            )
        return _evaluate_embedding(model, loaded, ref_loaded, tokenizer, body, windows, seq_len,
                                   progress)  # fmt: skip
    if loaded.task != "causal_lm":
        raise InputError(
            f"--model {model}: {type(loaded.model).__name__} has no LM head, so no "
            "perplexity; evaluate it with --task embedding --reference <original model>"
        )
    from allocator.evaluate import evaluate
    from allocator.models.windows import token_windows

    seq_len = seq_len or 512
    ids = token_windows(tokenizer, body, seq_len=seq_len, n_windows=windows, contiguous=True,
                        bos=bos)  # fmt: skip
    ref = ref_loaded.model if ref_loaded is not None else None
    if ray is not None:
        from allocator.distributed.pool import pool_for
        from allocator.evaluate import auto_batch_size
        from allocator.evaluate.distributed import evaluate_on_ray

        result = evaluate_on_ray(
            {"model": worker_spec(model)}, ids, worker_spec(reference) if reference else None,
            pool=pool_for(ray), batch_size=batch_size or auto_batch_size(loaded.model, seq_len),
            offload=offload,
        )["model"]  # fmt: skip
    else:
        result = evaluate(loaded.model, ids, ref, batch_size=batch_size, progress=progress)
    return {
        "model": model,
        "reference": reference,
        "perplexity": result.perplexity,
        "kl": result.kl,
        "windows": result.n_windows,
        "seq_len": seq_len,
        "tokens": result.n_tokens,
        "seconds": result.seconds,
    }


def _evaluate_embedding(
    model: str,
    loaded: Any,
    ref_loaded: Any,
    tokenizer: Any,
    body: str,
    windows: int,
    seq_len: int | None,
    progress: bool,
) -> dict[str, Any]:
    from allocator.evaluate import evaluate_embeddings, text_batches

    if ref_loaded is None:
        raise InputError(
            "--task embedding compares the model's embeddings with the original's: give "
            "--reference <original model>"
        )
    max_len = seq_len or 128
    ids, mask = text_batches(tokenizer, body, n_texts=windows, max_len=max_len)
    result = evaluate_embeddings(
        {"model": loaded.model}, ids, ref_loaded.model, attention_mask=mask, progress=progress
    )["model"]
    return {
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
