"""Gradients of the end-to-end loss computed one block at a time (Fisher and K-FAC).

The whole-graph estimators backpropagate each window's loss through the whole model at once,
which keeps every block's weights and activations alive. Here, as in activation
checkpointing taken to one block:

1. forward, no gradients: the hidden state entering every block is cached for every window
   (one window per batch, as the whole-graph estimators run);
2. at the top, each window's objective (causal LMs: the model's own next-token loss of the
   logits from the final norm and head; encoders: the random projection of the pooled
   embedding, see ``fisher.projection_objective``) gives the gradient w.r.t. the last block's
   output;
3. from the top block down, each block is loaded once, its forward is recomputed with
   gradients from its cached input, and backpropagating the output gradient gives the unit
   weights' gradients of that window (squared into the Fisher sum, or the output gradients
   into K-FAC's row energy) and the input gradient, which is passed to the block below.

Memory is one block plus the cached hidden states and one gradient per window, never the
graph of the whole model; on an offloaded model (``--offload``) each block is read twice
(forward, backward). The result is the whole-graph estimate: the gradient reaching a block's
weights flows only through the blocks above it (the per-window sums are added in the same
order; ``tests/offload`` compares both). Models whose blocks share weights or receive inputs
other than the hidden state that need gradients are outside this (none of the supported
families). Used on offloaded models, or in memory with ``--set blockwise=true``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from allocator.models.activations import like
from allocator.models.blocks import find_backbone, record_block_calls, run_block
from allocator.models.offload import holding, is_offloaded


def use_blockwise(ctx: Any) -> bool:
    """Offloaded models always; models in memory with ``settings["blockwise"]``."""
    return is_offloaded(ctx.model) or bool(ctx.settings.get("blockwise", False))


@contextmanager
def _only_units_need_grad(ctx: Any) -> Iterator[dict[str, nn.Parameter]]:
    flags = {name: p.requires_grad for name, p in ctx.model.named_parameters()}
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    weights = {u.name: ctx.model.get_submodule(u.name).weight for u in ctx.units}
    for w in weights.values():
        w.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield weights
    finally:
        for name, p in ctx.model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None


def _objective(ctx: Any, backbone: Any, hidden: torch.Tensor, ids: torch.Tensor, generator: Any):
    """The whole-graph estimators' objective, from the last block's output."""
    from allocator.profile.estimators.fisher import (
        is_embedding_model,
        pooled_embedding,
        projection_objective,
    )

    if is_embedding_model(ctx.model):
        last = backbone.norm(hidden) if backbone.norm is not None else hidden
        return projection_objective(pooled_embedding(last.float()), generator)
    logits = backbone.logits(hidden)
    labels = ids.to(logits.device)
    loss_function = getattr(ctx.model, "loss_function", None)
    if loss_function is not None:
        vocab = logits.shape[-1]
        return loss_function(logits=logits, labels=labels, vocab_size=vocab)
    return nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    )


def backward_by_block(
    ctx: Any,
    *,
    probes: int,
    generator: torch.Generator,
    watch: Callable[[int, nn.Module], Any] | None = None,
    after: Callable[[int, int, int], None] | None = None,
    finished: Callable[[int], None] | None = None,
    desc: str = "blockwise",
) -> None:
    """Run the block-by-block backward pass of every (window, probe) objective.

    ``watch(index, block)`` returns a context manager entered while block ``index`` runs its
    backward passes (K-FAC installs its output-gradient hooks there); ``after(index, window,
    probe)`` is called after each backward through block ``index`` (the unit weights' ``.grad``
    then hold that window's gradient; Fisher squares them); ``finished(index)`` once block
    ``index`` has seen every window, while it is still loaded.
    """
    import contextlib

    backbone = find_backbone(ctx.model)
    layers = backbone.layers
    windows = ctx.input_ids
    n = windows.shape[0]
    bar = tqdm(total=2 * len(layers) + 1, desc=desc, unit="block", disable=not ctx.progress)
    with torch.no_grad():
        states = [record_block_calls(backbone, windows, 1)]
        for block in layers:
            states.append(run_block(block, states[-1]))
            bar.update(1)
    grads = like(states[-1].hidden)  # one per (window, probe): memory or files
    top = states.pop()
    with contextlib.ExitStack() as stack:
        for module in (backbone.norm, backbone.head):
            if module is not None:
                stack.enter_context(holding(module))
        for w in range(n):
            for _probe in range(probes):
                hidden = top.hidden[w].detach().requires_grad_(True)
                loss = _objective(ctx, backbone, hidden, windows[w][None], generator)
                grads.append(torch.autograd.grad(loss, hidden)[0])  # index w * probes + p
    del top
    bar.update(1)
    for index in reversed(range(len(layers))):
        block, inputs = layers[index], states.pop()
        with holding(block), watch(index, block) if watch else contextlib.nullcontext():
            for w, (hidden, call) in enumerate(inputs):
                for p in range(probes):
                    x = hidden.detach().requires_grad_(True)
                    out = call(block, x)
                    torch.autograd.backward(out, grads[w * probes + p])
                    if after is not None:
                        after(index, w, p)
                    grads[w * probes + p] = x.grad if x.grad is not None else torch.zeros_like(x)
            if finished is not None:
                finished(index)
        del inputs
        bar.update(1)
    bar.close()


def _units_by_block(ctx: Any) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for unit in ctx.units:
        if unit.layer is not None:
            out.setdefault(unit.layer, []).append(unit)
    return out


def blockwise_fisher(
    ctx: Any,
    probes: int,
    generator: torch.Generator,
    on_block: Callable[[list[Any], dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The ``fisher`` estimator's sums of squared gradients (over windows and probes; F is
    their mean), computed block by block. With ``on_block``, each block's sums go to
    ``on_block(units, sums)`` as soon as the backward pass leaves the block and are dropped
    (memory: one block's sums, not one float per weight of the model; returns ``{}``)."""
    by_block = _units_by_block(ctx)
    fisher: dict[str, torch.Tensor] = {}
    with _only_units_need_grad(ctx) as weights:

        def after(index: int, _w: int, _p: int) -> None:
            for unit in by_block.get(index, []):
                weight = weights[unit.name]
                total = fisher.setdefault(unit.name, torch.zeros(weight.shape))
                if weight.grad is not None:  # None: an MoE expert no token of the window reached
                    total += weight.grad.detach().float().square().cpu()
                weight.grad = None

        def finished(index: int) -> None:
            if on_block is not None:
                units = by_block.get(index, [])
                on_block(units, {u.name: fisher.pop(u.name) for u in units if u.name in fisher})

        backward_by_block(
            ctx, probes=probes, generator=generator, after=after, finished=finished, desc="fisher"
        )
    return fisher


def blockwise_output_energy(
    ctx: Any, probes: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """K-FAC's ``G_r`` sums (over windows and probes of sum_t (dL/dy_tr)^2; G_r is their
    mean), computed block by block."""
    energy = {u.name: torch.zeros(u.shape[0], dtype=torch.float64) for u in ctx.units}
    by_block = _units_by_block(ctx)

    def on_output(name: str) -> Any:
        def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            def on_grad(grad: torch.Tensor) -> None:
                rows = grad.reshape(-1, grad.shape[-1]).float()
                energy[name] += rows.square().sum(dim=0).double().cpu()

            if output.requires_grad:
                output.register_hook(on_grad)

        return hook

    @contextmanager
    def watch(index: int, _block: nn.Module) -> Iterator[None]:
        handles = [
            ctx.model.get_submodule(u.name).register_forward_hook(on_output(u.name))
            for u in by_block.get(index, [])
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    flags = {name: p.requires_grad for name, p in ctx.model.named_parameters()}
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            backward_by_block(ctx, probes=probes, generator=generator, watch=watch, desc="kfac")
    finally:
        for name, p in ctx.model.named_parameters():
            p.requires_grad_(flags[name])
    return energy
