"""Block plumbing: find a model's block stack, record what each block receives, replay blocks.

Block-wise work (calibration capture, GPTQ, measured tables) runs one block at a time over
cached hidden states. Each block must then get exactly the arguments the model's own forward
gives it: Gemma 2/3, Qwen and Mistral configs with sliding layers pass every layer the mask and
rotary embeddings of its own attention type, GPT-2 passes them positionally. ``record_block_calls``
therefore runs the model's forward with every block replaced by a recorder that keeps the
block's extra positional and keyword arguments (tensors shared between layers are kept once,
by reference) and passes the hidden state through, so it costs an embedding pass, not a forward.
``check_replay`` compares the block-by-block replay with the model's own forward before long
work starts, so a model whose blocks cannot be replayed fails in seconds with a clear message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from allocator.errors import UnsupportedError
from allocator.models.activations import DiskTensors, hidden_list, like

_BLOCK_LISTS = (
    "model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers",
    "model.decoder.layers", "transformer.blocks", "layers", "h", "encoder.layer",
    "bert.encoder.layer", "roberta.encoder.layer", "model.encoder.layer", "encoder.layers",
)  # fmt: skip
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


@dataclass
class Backbone:
    """The parts of a model the block-wise code drives.

    ``norm`` and ``head`` are None for encoders (their output is the last block's hidden state).
    ``prefix`` is the module path of the block list, e.g. ``model.layers``.
    """

    model: nn.Module
    layers: nn.ModuleList
    prefix: str
    norm: nn.Module | None
    head: nn.Module | None

    @property
    def is_causal_lm(self) -> bool:
        return self.head is not None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the last block's output: final norm, head and the config's soft-capping."""
        if self.head is None:
            raise UnsupportedError(f"{type(self.model).__name__} has no language-model head")
        out = self.head(self.norm(hidden) if self.norm is not None else hidden)
        config = getattr(self.model, "config", None)
        cap = getattr(
            getattr(config, "get_text_config", lambda: config)(), "final_logit_softcapping", None
        )
        if cap:
            out = torch.tanh(out / cap) * cap
        return out


def _get(model: nn.Module, path: str) -> Any:
    with contextlib.suppress(AttributeError):
        return model.get_submodule(path)
    return None


def find_backbone(model: nn.Module) -> Backbone:
    """Locate the block list (and, for LMs, the final norm and head) of a transformers model."""
    for path in _BLOCK_LISTS:
        layers = _get(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            break
    else:
        lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)][:5]
        raise UnsupportedError(
            f"{type(model).__name__}: found no block list (looked for {', '.join(_BLOCK_LISTS[:6])}"
            f", ...; module lists present: {', '.join(lists) or 'none'}); block-wise profiling "
            "needs a stack of transformer blocks"
        )
    parent = _get(model, path.rsplit(".", 1)[0]) if "." in path else model
    norm = next((getattr(parent, n) for n in _FINAL_NORMS if hasattr(parent, n)), None)
    get_head = getattr(model, "get_output_embeddings", None)  # transformers' PreTrainedModel
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        head = None
    return Backbone(model=model, layers=layers, prefix=path, norm=norm, head=head)


@dataclass
class BlockCall:
    """What one block received in one batch besides its hidden state."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_key: str | None = None  # the hidden state came as this keyword, not positionally

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_key is not None:
            out = block(*self.args, **{self.hidden_key: hidden}, **self.kwargs)
        else:
            out = block(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple | list) else out


@dataclass
class BlockInputs:
    """Hidden states entering block ``layer``, one tensor per batch, and every block's calls.

    ``calls[l][b]`` is what block l received in batch b; iterating yields ``(hidden, call)`` for
    this block.
    """

    hidden: list[torch.Tensor] | DiskTensors  # files with --offload-activations
    calls: list[list[BlockCall]]
    layer: int = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, BlockCall]]:
        return iter(zip(self.hidden, self.calls[self.layer], strict=True))

    @property
    def n_tokens(self) -> int:
        from allocator.models.activations import n_tokens

        return n_tokens(self.hidden)


class _Stop(Exception):
    pass


def _token_forward(model: nn.Module, **kwargs: Any) -> Any:
    """``model(**kwargs)``; a forward that takes no token ids is refused with a clear message."""
    main_input = getattr(model, "main_input_name", "input_ids")
    if main_input != "input_ids":
        raise UnsupportedError(
            f"{type(model).__name__}: its input is {main_input!r}, not token ids; allocator "
            "handles text models (causal LMs and text encoders)"
        )
    try:
        return model(**kwargs)
    except TypeError as exc:  # e.g. a vision or audio model: no input_ids
        if "input_ids" not in str(exc) and "use_cache" not in str(exc):
            raise
        raise UnsupportedError(
            f"{type(model).__name__}: its forward does not take token ids ({exc}); allocator "
            "handles text models (causal LMs and text encoders)"
        ) from None


_HIDDEN_KEYS = ("hidden_states", "hidden_state", "x")


def _strip_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop per-call caches (None-valued cache arguments are kept as they were)."""
    return {
        k: v
        for k, v in kwargs.items()
        if not (k in ("past_key_value", "past_key_values", "cache", "layer_past") and v is not None)
    }


@torch.no_grad()
def record_block_calls(
    backbone: Backbone, input_ids: torch.Tensor, batch_size: int, **model_kwargs: Any
) -> BlockInputs:
    """Hidden states entering block 0 and every block's own arguments, batch by batch.

    Each block is swapped for a recorder that returns its hidden input unchanged, so the model's
    forward computes only embeddings, masks and rotary tables; the last recorder stops it.
    """
    device = next(backbone.model.parameters()).device
    n_blocks = len(backbone.layers)
    calls: list[list[BlockCall]] = [[] for _ in range(n_blocks)]
    hidden0 = hidden_list(backbone.model)  # a list, or files (--offload-activations)
    originals = list(backbone.layers)

    class Recorder(nn.Module):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

        def __getattr__(self, name: str) -> Any:  # models may read a block's attributes
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(originals[self.index], name)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            key = next((k for k in _HIDDEN_KEYS if k in kwargs), None) if not args else None
            if args:
                hidden, rest = args[0], tuple(args[1:])
            elif key is not None:
                hidden, rest = kwargs.pop(key), ()
            else:
                raise UnsupportedError(
                    f"block {self.index} of {type(backbone.model).__name__} received no hidden "
                    f"state (keyword arguments: {', '.join(kwargs)})"
                )
            calls[self.index].append(BlockCall(rest, _strip_cache(kwargs), key))
            if self.index == 0:
                hidden0.append(hidden)
            if self.index == n_blocks - 1:
                raise _Stop
            return hidden

    try:
        for index in range(n_blocks):
            backbone.layers[index] = Recorder(index)
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(device)
            with contextlib.suppress(_Stop):
                _token_forward(backbone.model, input_ids=batch, use_cache=False, **model_kwargs)
            if len(hidden0) != len(calls[-1]):
                raise UnsupportedError(
                    f"{type(backbone.model).__name__}: its forward did not call every block in "
                    "order; block-wise replay is not possible for it"
                )
    finally:
        for index, block in enumerate(originals):
            backbone.layers[index] = block
    return BlockInputs(hidden=hidden0, calls=calls, layer=0)


def run_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
    """Outputs of block ``inputs.layer`` for every cached batch (they enter the next block).

    An offloaded block (``allocator.models.offload``) is read once for all the batches.
    """
    from allocator.models.offload import holding

    outs = like(inputs.hidden)  # in memory, or in files (--offload-activations)
    with holding(block):
        for hidden, call in inputs:
            outs.append(call(block, hidden))
    return BlockInputs(hidden=outs, calls=inputs.calls, layer=inputs.layer + 1)


@torch.no_grad()
def replay_gap(model: nn.Module, input_ids: torch.Tensor) -> tuple[float, int | None]:
    """Largest relative difference between block-wise replay and the model's own forward.

    Compares the hidden state after every block (and the logits, for LMs) on ``input_ids``;
    returns (gap, first block whose output differs by more than 1e-3, or None).
    """
    backbone = find_backbone(model)
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    out = _token_forward(model, input_ids=ids, use_cache=False, output_hidden_states=True)
    reference = list(out.hidden_states)
    inputs = record_block_calls(backbone, input_ids, input_ids.shape[0])
    worst, first_bad = 0.0, None
    n_blocks = len(backbone.layers)
    for index, block in enumerate(backbone.layers):
        inputs = run_block(block, inputs)
        if index + 1 < n_blocks:  # transformers applies the final norm to the last hidden state
            gap = _relative_gap(inputs.hidden[0], reference[index + 1])
            worst = max(worst, gap)
            if gap > 1e-3 and first_bad is None:
                first_bad = index
    if backbone.is_causal_lm and getattr(out, "logits", None) is not None:
        gap = _relative_gap(backbone.logits(inputs.hidden[0]), out.logits)
        worst = max(worst, gap)
        if gap > 1e-3 and first_bad is None:
            first_bad = n_blocks - 1
    return worst, first_bad


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check_replay(
    model: nn.Module, input_ids: torch.Tensor, *, tolerance: float | None = None
) -> None:
    """Raise UnsupportedError when block-wise replay does not reproduce the model's forward.

    ``tolerance`` (relative to the largest activation) defaults to 1e-3 in fp32 and 5e-2 in
    half precision, where the same sums in another order round differently.
    """
    if tolerance is None:
        dtype = next(model.parameters()).dtype
        tolerance = 1e-3 if dtype == torch.float32 else 5e-2
    gap, first_bad = replay_gap(model, input_ids[:1])
    if gap > tolerance:
        where = f"block {first_bad}" if first_bad is not None else "the output"
        raise UnsupportedError(
            f"{type(model).__name__}: replaying its blocks one at a time differs from its own "
            f"forward at {where} (relative gap {gap:.2e} > {tolerance:g}); block-wise profiling "
            "and GPTQ would use wrong inputs for this architecture"
        )


def linear_children(block: nn.Module, prefix: str) -> dict[str, nn.Linear]:
    """Full names of the block's units (``find_units`` inside one block: routers excluded).

    Raises UnsupportedError when the block still holds Conv1D or fused-expert layouts: run
    ``allocator.models.adapters.prepare_model`` on the model first.
    """
    from allocator.models.units import block_units

    out: dict[str, nn.Linear] = {}
    for rel, _shape, module in block_units(block):
        if module is None:
            raise UnsupportedError(
                f"{prefix}.{rel}: a Conv1D or fused-expert layer not converted to nn.Linear; "
                "call allocator.models.adapters.prepare_model(model) first"
            )
        out[f"{prefix}.{rel}"] = module  # type: ignore[assignment]
    return out
