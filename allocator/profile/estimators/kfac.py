"""``kfac``: the Fisher estimate with the input correlations kept (Kronecker-factored).

For a linear unit ``y_t = W x_t`` on a window's tokens t, the empirical Fisher loss increase of
a weight error dW is ``1/2 E_w[(sum_t g_t . dW x_t)^2]`` with ``g_t = dL/dy_t``. Taking output
gradients and inputs as independent across tokens (K-FAC) gives

    loss = 1/2 sum_r G_r [dW H dW^T]_rr,   G_r = E_w[sum_t g_tr^2],   H = X^T X / n_tokens,

i.e. the ``hessian`` proxy weighted per output row by how strongly that row's error reaches the
loss. Its diagonal (``H`` replaced by ``diag(H)``) is the ``fisher`` estimator, so the two share
one scale. Keeping ``H`` whole matters for GPTQ options (``method=gptq``): GPTQ pushes the error
into directions of small ``H``, which a diagonal weighting cannot see. Embedding models use the
``fisher`` estimator's random-projection objective of the pooled embedding for ``g``.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from allocator.profile.blockwise import blockwise_output_energy, use_blockwise
from allocator.profile.estimators import Estimator, register
from allocator.profile.estimators.fisher import _window_loss, is_embedding_model
from allocator.profile.journal import open_checkpoint


def output_gradient_energy(ctx: Any) -> dict[str, torch.Tensor]:
    """``G_r`` sums: per output row of each unit, the sum over windows (and probes) of
    sum_t (dL/dy_tr)^2, in fp64 (``G_r`` is their mean, see ``energy_sums``)."""
    energy = {u.name: torch.zeros(u.shape[0], dtype=torch.float64) for u in ctx.units}
    handles = []

    def watch(name: str):
        def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            def on_grad(grad: torch.Tensor) -> None:
                rows = grad.reshape(-1, grad.shape[-1]).float()
                energy[name] += rows.square().sum(dim=0).double().cpu()

            output.register_hook(on_grad)

        return hook

    flags = {name: p.requires_grad for name, p in ctx.model.named_parameters()}
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    for unit in ctx.units:
        handles.append(ctx.module(unit).register_forward_hook(watch(unit.name)))
    device = next(ctx.model.parameters()).device
    windows = ctx.input_ids
    embedding = is_embedding_model(ctx.model)
    probes = int(ctx.settings.get("probes", 4)) if embedding else 1
    generator = torch.Generator().manual_seed(ctx.seed)
    checkpoint = open_checkpoint(ctx, "kfac")
    saved = checkpoint.load() if checkpoint is not None else None
    done = 0
    if saved is not None:
        tensors, done = saved
        energy.update({n: t.double() for n, t in tensors.items() if n in energy})
        if "_generator" in tensors:
            generator.set_state(tensors["_generator"])
    bar = tqdm(total=len(windows), initial=done, desc="kfac", unit="window",
               disable=not ctx.progress)  # fmt: skip
    try:
        with torch.enable_grad():
            for index in range(done, len(windows)):
                ids = windows[index][None].to(device)
                for _ in range(probes):
                    embeds = ctx.model.get_input_embeddings()(ids).detach().requires_grad_(True)
                    _window_loss(ctx, ids, inputs_embeds=embeds, generator=generator).backward()
                bar.update(1)
                if checkpoint is not None:
                    checkpoint.maybe_save({**energy, "_generator": generator.get_state()},
                                          index + 1)  # fmt: skip
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
        for name, p in ctx.model.named_parameters():
            p.requires_grad_(flags[name])
    return energy


def kfac_losses(ctx: Any) -> dict[str, dict[str, float]]:
    return kfac_rows(ctx, kfac_energy(ctx))


def kfac_energy(ctx: Any) -> dict[str, torch.Tensor]:
    """The capture (H) and ``G_r`` of every unit (the option rows are ``kfac_rows``)."""
    energy, count = energy_sums(ctx)
    return {name: e / count for name, e in energy.items()}


def energy_sums(ctx: Any) -> tuple[dict[str, torch.Tensor], int]:
    """The capture (H), the fp64 ``G_r`` sums of every unit and how many windows (times
    probes) they add: ``G_r`` is their quotient. Sums over disjoint windows add
    (``profile --ray`` splits them)."""
    ctx.capture()
    probes = int(ctx.settings.get("probes", 4)) if is_embedding_model(ctx.model) else 1
    count = ctx.input_ids.shape[0] * probes
    if use_blockwise(ctx):  # offloaded: backward one block at a time
        generator = torch.Generator().manual_seed(ctx.seed)
        return blockwise_output_energy(ctx, probes, generator), count
    return output_gradient_energy(ctx), count


@torch.no_grad()
def kfac_rows(ctx: Any, energy: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """1/2 sum_r G_r [dW H dW^T]_rr for every unit and option."""
    losses: dict[str, dict[str, float]] = {}
    for unit in tqdm(ctx.units, desc="kfac rows", unit="unit", disable=not ctx.progress):
        hessian = ctx.stats(unit).hessian_fp32
        weight = ctx.module(unit).weight.detach().float()
        g = energy[unit.name].float()
        row = {}
        for option in ctx.options:
            dw = ctx.compress(unit, option).float() - weight
            per_row = ((dw @ hessian) * dw).sum(dim=1)
            row[option.key] = max(0.5 * float((g * per_row).sum()), 0.0)
        losses[unit.name] = row
    return losses


register(
    Estimator(
        "kfac",
        kfac_losses,
        windows=16,
        seq_len=256,
        needs_gradients=True,
        checkpointed=True,
        doc="1/2 sum_r G_r [dW H dW^T]_rr (Fisher with input correlations)",
    )
)
