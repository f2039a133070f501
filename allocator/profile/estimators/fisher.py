"""Gradient-based estimators: ``fisher`` (empirical Fisher) and ``hutchinson`` (HAWQ-V3 trace).

``fisher``: F = mean over windows of g_w^2, with g_w the gradient of window w's mean next-token
cross-entropy w.r.t. each unit weight (batch of one window, as ModelOpt's auto_quantize scores
per batch); loss = 1/2 sum F * dW^2, a diagonal second-order Taylor estimate of the calibration
loss increase. Encoders and embedding models (no LM head) use the gradient of a random
projection of the pooled, normalized embedding instead: the Gauss-Newton diagonal of
1 - cos(embedding, original embedding) (``projection_objective``). Use it (not ``hessian`` or
``kfac``) for encoders: a mean-pooled embedding averages out errors that are independent across
tokens, which the per-token proxies count in full. On all-MiniLM-L6-v2 (RTN, 32 held-out
passages, cosine vs the original) fisher plans scored 0.954 at 4.25 bits and 0.847 at 3.5,
hessian plans 0.895 and 0.683, kfac 0.915 and 0.672, uniform b4-g128 (4.25 bits) 0.946.

``hutchinson``: tr(H_l) of the loss Hessian block of each unit by Hutchinson's estimator,
mean over Rademacher probes v of v^T (H v), with H v from a double backward pass; loss =
1/2 |tr(H_l)| / n_l * ||dW||^2 (HAWQ-V3's average-curvature times perturbation norm; the
magnitude is taken because away from a minimum a noisy trace can come out negative, which
would otherwise make a unit look free to compress).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from allocator.profile.blockwise import blockwise_fisher, use_blockwise
from allocator.profile.estimators import Estimator, register
from allocator.profile.journal import open_checkpoint


@contextmanager
def _grads_on(ctx: Any) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Enable gradients for the unit weights only; restore flags afterwards."""
    flags = {name: p.requires_grad for name, p in ctx.model.named_parameters()}
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    weights = {u.name: ctx.module(u).weight for u in ctx.units}
    for w in weights.values():
        w.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield weights
    finally:
        for name, p in ctx.model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None


def is_embedding_model(model: Any) -> bool:
    """No LM head: an encoder or embedding model, profiled through its pooled embedding."""
    from allocator.models.loader import model_task

    return model_task(model) == "embedding"


def pooled_embedding(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the tokens a mask keeps (all when None) of hidden (B, L, d), L2-normalized."""
    from allocator.evaluate.embedding import mean_pool

    return torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)


def projection_objective(embedding: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``sum_w r_w . e_w`` with r_w ~ N(0, I) drawn per window (the encoders' Fisher objective).

    For the unit-norm pooled embedding e(W), ``1 - cos(e(W + dW), e(W)) = 1/2 ||e(W+dW) -
    e(W)||^2 ~ 1/2 dW^T J^T J dW`` (Gauss-Newton, J = de/dW). The gradient of ``r . e`` is
    ``J^T r`` and ``E_r[(J^T r)^2] = diag(J^T J)``, so the squared gradients of this objective
    are an unbiased estimate of the Gauss-Newton diagonal: it is the Fisher of a Gaussian
    observation model of the embedding with sampled targets, exactly as the causal-LM Fisher
    samples labels. With it, ``1/2 sum F dW^2`` predicts the mean ``1 - cos`` of a window's
    embedding. (The gradient of 1 - cos itself is zero at dW = 0 and carries no information.)
    """
    r = torch.randn(embedding.shape, generator=generator).to(embedding)
    return (r * embedding).sum()


def _window_loss(
    ctx: Any,
    ids: torch.Tensor,
    *,
    inputs_embeds: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The objective whose gradients the Fisher estimators square.

    Causal LMs: mean next-token cross-entropy of the window. Embedding models (no LM head):
    ``projection_objective`` of the mean-pooled, normalized last hidden state.
    """
    device = next(ctx.model.parameters()).device
    ids = ids.to(device)
    inputs: dict[str, Any] = (
        {"input_ids": ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    )
    if not is_embedding_model(ctx.model):
        return ctx.model(**inputs, labels=ids, use_cache=False).loss
    if generator is None:
        generator = torch.Generator().manual_seed(ctx.seed)
    hidden = ctx.model(**inputs).last_hidden_state
    return projection_objective(pooled_embedding(hidden.float()), generator)


def _weighted_rows(
    ctx: Any, weights_per_unit: dict[str, torch.Tensor], units: list[Any] | None = None
) -> dict[str, dict[str, float]]:
    """1/2 sum w * dW^2 per unit (of ``units``, default all) and option, for per-weight (or
    broadcast) importance w."""
    losses = {}
    chosen = ctx.units if units is None else units
    quiet = not ctx.progress or units is not None
    with torch.no_grad():
        for unit in tqdm(chosen, desc="score options", unit="unit", disable=quiet):
            weight = ctx.module(unit).weight.detach().float()
            importance = weights_per_unit[unit.name]
            row = {}
            for option in ctx.options:
                dw = ctx.compress(unit, option).float() - weight
                row[option.key] = max(0.5 * float((importance * dw.square()).sum()), 0.0)
            losses[unit.name] = row
    return losses


def fisher_losses(ctx: Any) -> dict[str, dict[str, float]]:
    """Empirical Fisher diagonal; embedding models average ``probes`` random projections
    (setting, default 4) per window, so their losses predict the mean 1 - cos of a window's
    pooled embedding (see ``projection_objective``)."""
    if use_blockwise(ctx) and not ctx.needs_stats():
        return _blockwise_rows(ctx)
    return _weighted_rows(ctx, fisher_importance(ctx))


def _blockwise_rows(ctx: Any) -> dict[str, dict[str, float]]:
    """Block-by-block Fisher scored as the backward pass leaves each block, whose sums are
    then dropped: one block's F in memory instead of one float per weight of the model."""
    probes = int(ctx.settings.get("probes", 4)) if is_embedding_model(ctx.model) else 1
    generator = torch.Generator().manual_seed(ctx.seed)
    count = ctx.input_ids.shape[0] * probes
    losses: dict[str, dict[str, float]] = {}

    def score(units: list[Any], sums: dict[str, torch.Tensor]) -> None:
        for f in sums.values():
            f /= count
        zero = torch.zeros(())  # a unit no gradient reached
        losses.update(_weighted_rows(ctx, {u.name: sums.get(u.name, zero) for u in units}, units))

    blockwise_fisher(ctx, probes, generator, on_block=score)
    outside = [u for u in ctx.units if u.name not in losses]  # units outside the blocks
    if outside:
        score(outside, {})
    return {u.name: losses[u.name] for u in ctx.units}


def fisher_importance(ctx: Any) -> dict[str, torch.Tensor]:
    """F per unit weight, the mean squared gradient (the option rows are ``_weighted_rows``)."""
    fisher, count = fisher_sums(ctx)
    for f in fisher.values():
        f /= count
    return fisher


def fisher_sums(ctx: Any) -> tuple[dict[str, torch.Tensor], int]:
    """The fp32 sums over windows (and probes) of the squared gradients, and how many were
    added: F is their quotient. Sums over disjoint windows add (``profile --ray`` splits them)."""
    if ctx.needs_stats():
        ctx.capture()
    embedding = is_embedding_model(ctx.model)
    probes = int(ctx.settings.get("probes", 4)) if embedding else 1
    generator = torch.Generator().manual_seed(ctx.seed)
    count = ctx.input_ids.shape[0] * probes
    if use_blockwise(ctx):  # offloaded: backward one block at a time (no checkpoint of sums)
        return blockwise_fisher(ctx, probes, generator), count
    checkpoint = open_checkpoint(ctx, "fisher")
    with _grads_on(ctx) as weights:
        fisher = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
        windows = ctx.input_ids
        done = 0
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is not None:
            tensors, done = saved
            fisher.update({n: t for n, t in tensors.items() if n in fisher})
            if "_generator" in tensors:
                generator.set_state(tensors["_generator"])
        bar = tqdm(total=len(windows), initial=done, desc="fisher", unit="window",
                   disable=not ctx.progress)  # fmt: skip
        for index in range(done, len(windows)):
            for _ in range(probes):
                ctx.model.zero_grad(set_to_none=True)
                _window_loss(ctx, windows[index][None], generator=generator).backward()
                for name, w in weights.items():
                    if w.grad is not None:  # None: an MoE expert no token of the window reached
                        fisher[name] += w.grad.detach().float().square()
            bar.update(1)
            if checkpoint is not None:
                checkpoint.maybe_save({**fisher, "_generator": generator.get_state()}, index + 1)
        bar.close()
    return fisher, count


def hutchinson_traces(ctx: Any) -> dict[str, float]:
    """Mean diagonal of each unit's loss-Hessian block, tr(H_l) / n_l (causal LMs only)."""
    probes = int(ctx.settings.get("probes", 4))
    generator = torch.Generator().manual_seed(ctx.seed)
    # the fused CPU attention kernel has no double backward; the math kernel has
    with _grads_on(ctx) as weights, sdpa_kernel(SDPBackend.MATH):
        names, params = list(weights), list(weights.values())
        traces = dict.fromkeys(names, 0.0)
        batches = list(ctx.input_ids.split(ctx.batch_size))
        checkpoint = open_checkpoint(ctx, "hutchinson")
        saved = checkpoint.load() if checkpoint is not None else None
        done = 0
        if saved is not None:
            tensors, done = saved
            traces.update({n: float(t) for n, t in tensors.items() if n in traces})
            generator.set_state(tensors["_generator"])
        steps = tqdm(total=probes * len(batches), initial=done, desc="hutchinson",
                     disable=not ctx.progress)  # fmt: skip
        for step in range(done, probes * len(batches)):
            ids = batches[step % len(batches)]
            loss = _window_loss(ctx, ids)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            vs = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]
            hvs = torch.autograd.grad(grads, params, grad_outputs=vs)
            for name, v, hv in zip(names, vs, hvs, strict=True):
                traces[name] += float((v * hv).sum())
            steps.update()
            if checkpoint is not None:
                state = {n: torch.tensor(t, dtype=torch.float64) for n, t in traces.items()}
                checkpoint.maybe_save({**state, "_generator": generator.get_state()}, step + 1)
        steps.close()
        total = probes * len(batches)
        return {n: traces[n] / total / weights[n].numel() for n in names}


def hutchinson_losses(ctx: Any) -> dict[str, dict[str, float]]:
    if ctx.needs_stats():
        ctx.capture()
    traces = hutchinson_traces(ctx)
    return _weighted_rows(ctx, {n: torch.tensor(abs(t)) for n, t in traces.items()})


register(
    Estimator(
        "fisher", fisher_losses, windows=16, seq_len=256, checkpointed=True,
        needs_gradients=True, doc="1/2 sum F dW^2 (empirical Fisher diagonal)",
    )
)  # fmt: skip
register(
    Estimator(
        "hutchinson",
        hutchinson_losses,
        windows=2,
        seq_len=256,
        needs_gradients=True,
        tasks=("causal_lm",),
        checkpointed=True,
        doc="1/2 tr(H)/n ||dW||^2 (Hessian trace, HAWQ-V3)",
    )
)
