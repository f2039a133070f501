"""``profile --ray``: an estimator's table computed by Ray tasks (see ``allocator.distributed``).

The driver keeps what is sequential or shared (the capture pass, the Fisher/K-FAC gradient
sums, the clean hidden states); each task gets one block's units. Results are merged in unit
order; measured rows are journaled by the driver as tasks finish.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import torch

from allocator.errors import UnsupportedError
from allocator.models.blocks import BlockInputs
from allocator.profile.capture import Capture
from allocator.profile.context import ProfileContext
from allocator.schema.unit import Unit

MEASURED = ("kl", "block_error")
PROXIES = ("hessian", "hessian_diag", "fisher", "kfac")
DISTRIBUTED = PROXIES + MEASURED
_LOCAL_ONLY_SETTINGS = ("journal", "resume")


def _groups(units: list[Unit]) -> list[list[Unit]]:
    """Units grouped by block, in order (units outside blocks each alone)."""
    groups: dict[Any, list[Unit]] = {}
    for unit in units:
        key = unit.layer if unit.layer is not None else ("unit", unit.name)
        groups.setdefault(key, []).append(unit)
    return list(groups.values())


def _settings(ctx: Any, units: list[Unit]) -> dict[str, Any]:
    settings = {k: v for k, v in ctx.settings.items() if k not in _LOCAL_ONLY_SETTINGS}
    imatrix = settings.get("imatrix")
    if isinstance(imatrix, dict):
        settings["imatrix"] = {u.name: imatrix[u.name] for u in units if u.name in imatrix}
    return settings


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
    units: list[Unit],
    options: list[Any],
    weights: dict[str, torch.Tensor],
    stats: dict[str, Any] | None,
    extra: dict[str, torch.Tensor] | None,
    settings: dict[str, Any],
    seed: int,
) -> dict[str, dict[str, float]]:
    """The option rows of some units from their weights and shared statistics (a Ray task)."""
    from allocator.profile.estimators import ESTIMATORS, load_all
    from allocator.profile.estimators.fisher import _weighted_rows
    from allocator.profile.estimators.kfac import kfac_rows

    load_all()
    ctx = RowContext(
        model=None,  # type: ignore[arg-type]
        input_ids=torch.empty(0, 0, dtype=torch.long),
        units=units,
        options=options,
        settings=settings,
        progress=False,
        seed=seed,
        weights=weights,
    )
    if stats is not None:
        ctx._capture = Capture(stats=stats, lim={}, n_tokens=0)
    if estimator == "fisher":
        return _weighted_rows(ctx, extra or {})
    if estimator == "kfac":
        return kfac_rows(ctx, extra or {})
    return ESTIMATORS.get(estimator).run(ctx)


_WORKER_MODELS: dict[tuple[str, str], Any] = {}


def _worker_model(source: str, device: str) -> Any:
    """The model as this worker process loaded it (offloaded: weights read as blocks run)."""
    key = (source, device)
    if key not in _WORKER_MODELS:
        from allocator.models.loader import load_model

        _WORKER_MODELS[key] = load_model(source, device=device, offload=True)
    return _WORKER_MODELS[key]


def measure_task(
    estimator: str,
    source: str,
    device: str,
    units: list[Unit],
    options: list[Any],
    input_ids: torch.Tensor,
    states: dict[int, BlockInputs],
    top: BlockInputs,
    stats: dict[str, Any] | None,
    settings: dict[str, Any],
    seed: int,
    batch_size: int,
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
    ctx = ProfileContext(
        model=model,
        input_ids=input_ids,
        units=units,
        options=options,
        settings=settings,
        progress=False,
        batch_size=batch_size,
        seed=seed,
    )
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
    if estimator == "fisher":
        from allocator.profile.estimators.fisher import fisher_importance

        extra = fisher_importance(ctx)
    elif estimator == "kfac":
        from allocator.profile.estimators.kfac import kfac_energy

        extra = kfac_energy(ctx)
    if stats_needed:
        ctx.capture()
    tasks = []
    for units in groups:
        weights = {u.name: ctx.module(u).weight.detach().cpu().clone() for u in units}
        stats = {u.name: ctx.stats(u) for u in units} if stats_needed else None
        share = {u.name: extra[u.name] for u in units} if extra is not None else None
        tasks.append(
            (estimator, units, ctx.options, pool.put(weights), stats, share,
             _settings(ctx, units), ctx.seed)
        )  # fmt: skip
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
            (estimator, source, device, units, ctx.options, ids, pool.put(needed), top, stats,
             _settings(ctx, units), ctx.seed, ctx.batch_size)
        )  # fmt: skip

    def record(i: int, result: dict[str, dict[str, float]]) -> None:
        for unit in todo[i]:
            rows[unit.name] = result[unit.name]
            if journal is not None:
                journal.append(unit.name, result[unit.name])

    pool.map(measure_task, tasks, on_result=record, gpu=True)
    return rows
