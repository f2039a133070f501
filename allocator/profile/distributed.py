"""``profile --ray``: an estimator's table computed by Ray tasks (see ``allocator.distributed``).

Statistics that are sums over calibration windows (the capture's X^T X for hessian,
hessian_diag and GPTQ options, fisher's squared gradients, kfac's X^T X and ``G_r``) are
computed by one task per contiguous shard of whole batches of windows (at most one per Ray
slot); each loads the model itself (offloaded when the driver's is) and returns its partial
sums, which the driver adds in shard order (``window_sums_task``). The driver keeps what stays
sequential (the clean hidden states of kl/block_error; the sums of an in-memory model the
workers cannot load, or of an embedding model, whose random projections come from one
generator in window order). Then each task gets one block's units. Results are merged in unit
order; measured rows are journaled by the driver as tasks finish.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, cast

import torch

from allocator.errors import UnsupportedError
from allocator.models.blocks import BlockInputs
from allocator.profile.capture import ActStats, Capture
from allocator.profile.context import ProfileContext
from allocator.schema.unit import Unit

MEASURED = ("kl", "block_error")
PROXIES = ("hessian", "hessian_diag", "fisher", "kfac")
DISTRIBUTED = PROXIES + MEASURED
_LOCAL_ONLY_SETTINGS = ("journal", "resume")
logger = logging.getLogger(__name__)


def _groups(units: list[Unit]) -> list[list[Unit]]:
    """Units grouped by block, in order (units outside blocks each alone)."""
    groups: dict[Any, list[Unit]] = {}
    for unit in units:
        key = unit.layer if unit.layer is not None else ("unit", unit.name)
        groups.setdefault(key, []).append(unit)
    return list(groups.values())


def _fields(ctx: ProfileContext, units: list[Unit]) -> dict[str, Any]:
    """What a task's ProfileContext takes from the driver's for ``units`` (every task builds
    its context as ``ProfileContext(model=..., input_ids=..., progress=False, **fields)``):
    the settings less the driver's journal, and only these units' imatrix entries."""
    settings = {k: v for k, v in ctx.settings.items() if k not in _LOCAL_ONLY_SETTINGS}
    imatrix = settings.get("imatrix")
    if isinstance(imatrix, dict):
        settings["imatrix"] = {u.name: imatrix[u.name] for u in units if u.name in imatrix}
    return {"units": units, "options": ctx.options, "settings": settings, "seed": ctx.seed,
            "batch_size": ctx.batch_size}  # fmt: skip


@dataclasses.dataclass
class _Weight:
    weight: torch.Tensor


@dataclasses.dataclass
class RowContext(ProfileContext):
    """A ProfileContext holding only some units' weights and statistics (a task's share)."""

    weights: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def module(self, unit: Unit) -> Any:  # type: ignore[override]
        return _Weight(self.weights[unit.name])


def rows_task(
    estimator: str,
    fields: dict[str, Any],
    weights: dict[str, torch.Tensor],
    stats: dict[str, Any] | None,
    extra: dict[str, torch.Tensor] | None,
) -> dict[str, dict[str, float]]:
    """The option rows of some units from their weights and shared statistics (a Ray task)."""
    from allocator.profile.estimators import ESTIMATORS, load_all
    from allocator.profile.estimators.fisher import _weighted_rows
    from allocator.profile.estimators.kfac import kfac_rows

    load_all()
    empty = torch.empty(0, 0, dtype=torch.long)
    ctx = RowContext(
        model=cast(Any, None), input_ids=empty, progress=False, weights=weights, **fields
    )
    if stats is not None:
        ctx._capture = Capture(stats=stats, lim={}, n_tokens=0)
    if estimator == "fisher":
        return _weighted_rows(ctx, extra or {})
    if estimator == "kfac":
        return kfac_rows(ctx, extra or {})
    return ESTIMATORS.get(estimator).run(ctx)


_WORKER_MODELS: dict[tuple[str, str, bool], Any] = {}


def _worker_model(source: str, device: str, offload: bool = True) -> Any:
    """The model as this worker process loaded it (``offload``: weights read as blocks run)."""
    key = (source, device, offload)
    if key not in _WORKER_MODELS:
        from allocator.models.loader import load_model

        _WORKER_MODELS[key] = load_model(source, device=device, offload=offload)
    return _WORKER_MODELS[key]


def window_sums_task(
    estimator: str,
    source: str,
    device: str,
    offload: bool,
    input_ids: torch.Tensor,
    fields: dict[str, Any],
    capture: bool,
) -> dict[str, Any]:
    """One contiguous shard of the calibration windows (a Ray task): its capture (``stats``:
    the ActStats, X^T X summed in fp64; ``lim``) when ``capture``, and for fisher/kfac the
    undivided gradient sums (``sums``: fisher's fp32 squared gradients, kfac's fp64 ``G_r``)."""
    from allocator.models.offload import release_kept
    from allocator.profile.estimators import load_all
    from allocator.profile.estimators.fisher import fisher_sums
    from allocator.profile.estimators.kfac import energy_sums

    load_all()
    model = _worker_model(source, device, offload).model
    ctx = ProfileContext(model=model, input_ids=input_ids, progress=False, **fields)
    out: dict[str, Any] = {}
    with torch.inference_mode(False):
        try:
            if capture:
                shard = ctx.capture()
                out.update(stats=shard.stats, lim=shard.lim)
            if estimator == "fisher":
                out["sums"] = fisher_sums(ctx)[0]
            elif estimator == "kfac":
                out["sums"] = energy_sums(ctx)[0]
        finally:
            release_kept(model)
    return out


def window_shards(n_windows: int, batch_size: int, slots: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` shards of whole batches, at most ``slots``, as even as can be
    (whole batches: each window is batched as in one process, so only sums' order differs)."""
    batches = -(-n_windows // max(batch_size, 1))
    count = max(1, min(slots, batches))
    base, more = divmod(batches, count)
    shards, start = [], 0
    for i in range(count):
        end = min(start + (base + (i < more)) * batch_size, n_windows)
        shards.append((start, end))
        start = end
    return shards


def _merge_stats(parts: list[dict[str, ActStats]]) -> dict[str, ActStats]:
    """The shards' ActStats added in shard order (layers that share one input share one)."""
    merged: dict[str, ActStats] = {}
    by_identity: dict[tuple[int, ...], ActStats] = {}
    for name in parts[0]:
        pieces = [part[name] for part in parts]
        identity = tuple(id(piece) for piece in pieces)
        if identity not in by_identity:
            total = ActStats(pieces[0].in_features)
            for piece in pieces:
                total.xtx += piece.xtx
                total.norm_sum += piece.norm_sum
                total.n_tokens += piece.n_tokens
            if any(piece.per_tokens for piece in pieces):  # an MoE expert: all block tokens
                total.per_tokens = sum(piece.per_tokens or piece.n_tokens for piece in pieces)
            by_identity[identity] = total
        merged[name] = by_identity[identity]
    return merged


def _split_reason(ctx: ProfileContext, estimator: str, source: str) -> str | None:
    """Why ``estimator``'s window sums stay in the driver (None: they are split)."""
    from allocator.errors import InputError
    from allocator.models.loader import resolve_model_source
    from allocator.profile.estimators.fisher import is_embedding_model

    try:
        resolve_model_source(source)
    except InputError:
        return f"the workers cannot load an in-memory model ({source})"
    if estimator in ("fisher", "kfac") and is_embedding_model(ctx.model):
        return "an embedding model's random projections come from one generator, window by window"
    return None


def _window_sums(
    ctx: ProfileContext, estimator: str, source: str, device: str, pool: Any, capture: bool
) -> dict[str, torch.Tensor] | None:
    """The capture (set on ``ctx``) and fisher's F or kfac's ``G_r``, their sums over the
    windows computed as one Ray task per shard of windows and added in shard order."""
    from allocator.models.offload import is_offloaded

    n = int(ctx.input_ids.shape[0])
    shards = window_shards(n, ctx.batch_size, pool.slots())
    fields = _fields(ctx, ctx.units)
    offload = is_offloaded(ctx.model)
    tasks = [
        (estimator, source, device, offload, ctx.input_ids[a:b].clone(), fields, capture)
        for a, b in shards
    ]
    parts = pool.map(window_sums_task, tasks)
    if capture:
        lim = {
            i: sum(p["lim"][i] * (b - a) for p, (a, b) in zip(parts, shards, strict=True)) / n
            for i in parts[0]["lim"]
        }
        stats = _merge_stats([p["stats"] for p in parts])
        ctx._capture = Capture(stats=stats, lim=lim, n_tokens=int(ctx.input_ids.numel()))
    if estimator not in ("fisher", "kfac"):
        return None
    total = {name: sum(p["sums"][name].double() for p in parts) for name in parts[0]["sums"]}
    if estimator == "fisher":  # the one process sums (and divides) in fp32
        return {name: (t / n).float() for name, t in total.items()}
    return {name: t / n for name, t in total.items()}


def measure_task(
    estimator: str,
    source: str,
    device: str,
    fields: dict[str, Any],
    input_ids: torch.Tensor,
    states: dict[int, BlockInputs],
    top: BlockInputs,
    stats: dict[str, Any] | None,
) -> dict[str, dict[str, float]]:
    """Measured rows (kl, block_error) of one block's units on a worker (a Ray task).

    ``states`` holds the clean hidden states entering the blocks the units need, ``top``
    those leaving the last block."""
    from allocator.models.blocks import find_backbone
    from allocator.models.offload import release_kept
    from allocator.profile.estimators import ESTIMATORS, load_all

    load_all()
    model = _worker_model(source, device).model
    n_blocks = len(find_backbone(model).layers)
    ctx = ProfileContext(model=model, input_ids=input_ids, progress=False, **fields)
    # the blocks these units do not reach stay None (never read)
    ctx._states = cast(list[BlockInputs], [states.get(i) for i in range(n_blocks)] + [top])
    if stats is not None:
        ctx._capture = Capture(stats=stats, lim={}, n_tokens=0)
    with torch.inference_mode(False):
        try:
            return ESTIMATORS.get(estimator).run(ctx)
        finally:
            release_kept(model)


def _in_memory(state: BlockInputs | None) -> BlockInputs | None:
    if state is None:
        return None
    return BlockInputs(hidden=list(state.hidden), calls=state.calls, layer=state.layer)


def run_on_ray(ctx: ProfileContext, estimator: str, source: str, device: str, pool: Any) -> Any:
    """``estimator``'s losses for every unit of ``ctx``, its per-block work as Ray tasks."""
    if estimator not in DISTRIBUTED:
        raise UnsupportedError(
            f"--ray: estimator {estimator!r} runs in one process; distributed estimators: "
            f"{', '.join(DISTRIBUTED)}"
        )
    groups = _groups(ctx.units)
    if estimator in MEASURED:
        from allocator.errors import InputError
        from allocator.models.loader import resolve_model_source

        try:
            resolve_model_source(source)
        except InputError:
            raise UnsupportedError(
                f"--ray {estimator}: the workers load the model themselves; give a model "
                f"folder or name, not an in-memory model ({source})"
            ) from None
        return _measured(ctx, estimator, source, device, pool, groups)
    if estimator == "hessian_diag":  # diag(H) from the capture unless an imatrix is given
        stats_needed = ctx.settings.get("imatrix") is None
    else:
        stats_needed = estimator in ("hessian", "kfac") or ctx.needs_stats()
    extra: dict[str, torch.Tensor] | None = None
    reason = None
    if stats_needed or estimator in ("fisher", "kfac"):
        reason = _split_reason(ctx, estimator, source)
        if reason is None:
            extra = _window_sums(ctx, estimator, source, device, pool, stats_needed)
        else:
            logger.info("--ray %s: the window statistics run in the driver: %s", estimator, reason)
    if reason is not None and estimator == "fisher":
        from allocator.profile.estimators.fisher import fisher_importance

        extra = fisher_importance(ctx)
    elif reason is not None and estimator == "kfac":
        from allocator.profile.estimators.kfac import kfac_energy

        extra = kfac_energy(ctx)
    if stats_needed:
        ctx.capture()
    tasks = []
    for units in groups:
        weights = {u.name: ctx.module(u).weight.detach().cpu().clone() for u in units}
        stats = {u.name: ctx.stats(u) for u in units} if stats_needed else None
        share = {u.name: extra[u.name] for u in units} if extra is not None else None
        tasks.append((estimator, _fields(ctx, units), pool.put(weights), stats, share))
    from allocator.models.offload import release_kept

    release_kept(ctx.model)
    rows: dict[str, dict[str, float]] = {}
    for result in pool.map(rows_task, tasks):
        rows.update(result)
    return rows


def _measured(
    ctx: ProfileContext, estimator: str, source: str, device: str, pool: Any, groups: list
) -> dict[str, dict[str, float]]:
    from allocator.profile.journal import open_journal

    journal = open_journal(ctx, estimator)
    done = dict(journal.done) if journal is not None else {}
    todo = [[u for u in units if u.name not in done] for units in groups]
    todo = [units for units in todo if units]
    rows = dict(done)
    if not todo:
        return rows
    stats = None
    if ctx.needs_stats():
        capture = ctx.capture()
    with torch.no_grad():
        states = ctx.clean_states()
    last = len(states) - 1
    top = pool.put(_in_memory(states[last]))
    ids = pool.put(ctx.input_ids)
    tasks = []
    for units in todo:
        layer = units[0].layer if units[0].layer is not None else last
        needed = {i: _in_memory(states[i]) for i in {layer, layer + 1} if i < last}
        if ctx.needs_stats():
            stats = {u.name: capture.stats[u.name] for u in units}
        tasks.append(
            (estimator, source, device, _fields(ctx, units), ids, pool.put(needed), top, stats)
        )

    def record(i: int, result: dict[str, dict[str, float]]) -> None:
        for unit in todo[i]:
            rows[unit.name] = result[unit.name]
            if journal is not None:
                journal.append(unit.name, result[unit.name])

    pool.map(measure_task, tasks, on_result=record, gpu=True)
    return rows
