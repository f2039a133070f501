"""Apply a Plan to a model: prune, quantize and pack every unit, replacing nn.Linear in place.

Units whose method needs calibration (GPTQ/SparseGPT need the input Hessian H, Wanda the input
column mean squares) are compressed block by block, GPTQ style: the calibration windows are
embedded once, then for each block the inputs of its linear layers are captured (H = X^T X / n,
via ``allocator.models.actstats``), its units are compressed, and the block is re-run with its
compressed weights so the next block sees what the compressed model will feed it. Without such
units no calibration is needed and every unit is compressed independently.
fp16 units stay nn.Linear with their weight rounded to fp16.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from allocator.errors import InputError, PlanCheckError
from allocator.models.adapters import prepare_model
from allocator.models.offload import keep_resident, release_kept
from allocator.models.units import find_units
from allocator.quant import DEFAULT_CALIBRATION, check_calibration
from allocator.quant.apply_journal import ApplyJournal
from allocator.quant.compress import check_option, compress, needs_hessian, uses_act_sq
from allocator.quant.distributed import compress_many
from allocator.quant.gptq import clean_target
from allocator.quant.quant_linear import QuantLinear
from allocator.quant.stage_hooks import OriginalInputs, StageRead, cross_hooks, stop_once_read
from allocator.schema.option import Option
from allocator.schema.plan import Plan

SHOWN = 5


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def plan_options(model: nn.Module, plan: Plan, *, method: str | None = None) -> dict[str, Option]:
    """Check the plan against the model and return unit name -> option (method overridden).

    Raises PlanCheckError for units the model lacks, block linear layers the plan misses, a
    numel that differs from the layer's weight, or a layer that is already compressed.
    """
    modules = dict(model.named_modules())
    options: dict[str, Option] = {}
    unknown, wrong_shape, done = [], [], []
    for assignment in plan.assignments:
        module = modules.get(assignment.unit)
        if isinstance(module, QuantLinear):
            done.append(assignment.unit)
        elif not isinstance(module, nn.Linear):
            unknown.append(assignment.unit)
        elif module.weight.numel() != assignment.numel:
            shape = tuple(module.weight.shape)
            wrong_shape.append(f"{assignment.unit} (plan numel {assignment.numel}, model {shape})")
        option = assignment.option
        if method is not None and not option.is_fp16:
            option = option.model_copy(update={"method": method})
        check_option(option, where=f"plan unit {assignment.unit}")
        options[assignment.unit] = option
    if done:
        raise PlanCheckError(
            f"units already compressed: {_listing(done)}; apply a plan to an unmodified model"
        )
    if unknown:
        raise PlanCheckError(
            f"plan names {len(unknown)} units that are not linear layers of the model: "
            f"{_listing(unknown)}; was the plan made for another model?"
        )
    if wrong_shape:
        raise PlanCheckError(
            f"plan units whose size differs from the model's: {_listing(wrong_shape)}; "
            "the plan was made for another model"
        )
    missing = [u.name for u in find_units(model) if u.name not in options]
    if missing:
        raise PlanCheckError(
            f"the plan has no option for {len(missing)} of the model's layers: {_listing(missing)}; "
            "re-solve with a table that covers every unit"
        )
    return options


def _needs(option: Option) -> tuple[bool, bool]:
    """(needs H, can use act_sq) for an option, from the quantizer-method registry."""
    return needs_hessian(option), uses_act_sq(option)


def _block_of(name: str) -> Any:
    from allocator.models.units import layer_index

    index = layer_index(name)
    return name if index is None else index


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def compress_unit(
    model: nn.Module,
    name: str,
    option: Option,
    hessian: torch.Tensor | None = None,
    act_sq: torch.Tensor | None = None,
    *,
    act_order: bool = True,
    compressed: Any = None,
) -> None:
    """Compress one linear layer in place (QuantLinear, or an fp16-rounded nn.Linear);
    ``compressed``: the result of ``compress`` computed elsewhere (a Ray task)."""
    linear = model.get_submodule(name)
    assert isinstance(linear, nn.Linear)
    if compressed is None:
        compressed = compress(linear.weight, option, hessian, act_sq, act_order=act_order)
    if option.is_fp16:
        with torch.no_grad():
            linear.weight.copy_(compressed.weight.to(linear.weight.dtype))
        return
    bias = None if linear.bias is None else linear.bias.detach().clone()
    module = QuantLinear.from_compressed(compressed, bias).to(linear.weight.device)
    _replace(model, name, module)


def _compress_stage(
    model: nn.Module,
    block: nn.Module,
    linears: dict[str, nn.Linear],
    options: dict[str, Option],
    inputs: Any,
    *,
    act_order: bool,
    pool: Any,
    original: OriginalInputs | None = None,
) -> None:
    """Compress ``linears`` of ``block`` on statistics of one pass over the block's inputs.

    ``original``: the same layers' inputs in the original model; GPTQ/SparseGPT then aim at the
    original outputs (``gptq.clean_target``).
    """
    from allocator.models.actstats import ActStats, CrossStats, stat_hooks

    stats: dict[str, Any] = {}
    cross: dict[str, CrossStats | None] = {}
    if any(any(_needs(options[n])) for n in linears):
        seen = original.batches(list(linears)) if original is not None else None
        for hidden, call in inputs:
            hooks = stat_hooks(linears, stats)
            if seen is not None:
                hooks += cross_hooks(linears, cross, next(seen))
            hooks += stop_once_read(linears)
            try:
                with contextlib.suppress(StageRead):
                    call(block, hidden)
            finally:
                for handle in hooks:
                    handle.remove()
    for name in linears:
        if stats.get(name) is None and _needs(options[name])[0]:  # an expert no token reached
            stats[name] = ActStats(linears[name].in_features)  # empty H: GPTQ rounds to nearest
        pair = cross.get(name)
        if _needs(options[name])[0] and pair is not None and pair.n_tokens == stats[name].n_tokens:
            weight = linears[name].weight
            target = clean_target(weight.detach().float(), pair.cross, stats[name].hessian_fp32)
            weight.data = target.to(weight.dtype)
    done = compress_many(pool, linears, options, stats, act_order)  # Ray: in parallel
    for name in linears:
        if name in done:
            compress_unit(model, name, options[name], compressed=done.pop(name))
            continue
        stat = stats.get(name)
        hessian = None if stat is None else stat.hessian_fp32
        act_sq = None if stat is None else stat.act_sq.float()
        compress_unit(model, name, options[name], hessian, act_sq, act_order=act_order)


@torch.no_grad()
def _apply_blockwise(
    model: nn.Module,
    options: dict[str, Option],
    calib_windows: torch.Tensor,
    *,
    act_order: bool,
    batch_size: int,
    progress: bool,
    journal: ApplyJournal | None = None,
    pool: Any = None,
    sequential: bool,
    asymmetric: bool,
) -> set[str]:
    """Sequential block-by-block compression; returns the names it handled.

    ``sequential``: a block's layers are compressed in the stages of
    ``allocator.models.layer_order`` (q/k/v, then o_proj on their compressed outputs, ...), each
    calibrated on the block with the earlier stages compressed; else all on the original block.
    ``asymmetric``: the original model's block inputs are carried along too, and GPTQ/SparseGPT
    aim at each layer's original outputs (``gptq.clean_target``) instead of its own weight.
    """
    import copy

    from allocator.models.blocks import (
        check_replay,
        find_backbone,
        linear_children,
        record_block_calls,
        run_block,
    )
    from allocator.models.layer_order import StageCache

    check_replay(model, calib_windows[:1, :64])
    backbone = find_backbone(model)
    prefix = backbone.prefix
    inputs = record_block_calls(backbone, calib_windows, batch_size)
    clean_inputs = inputs if asymmetric else None
    handled: set[str] = set()
    traced = StageCache()
    bar = tqdm(total=len(backbone.layers), desc="apply", unit="block", disable=not progress)
    for index, block in enumerate(backbone.layers):
        keep_resident(model, f"{prefix}.{index}", commit=True)  # offloaded: read, later written
        linears = {
            n: m for n, m in linear_children(block, f"{prefix}.{index}").items() if n in options
        }
        original = None
        if clean_inputs is not None:  # the block as it was, its layers' inputs and outputs
            copied, inner = copy.deepcopy(block), f"{prefix}.{index}."
            originals = {n: copied.get_submodule(n.removeprefix(inner)) for n in linears}
            original = OriginalInputs(copied, originals, clean_inputs)
        restored = journal is not None and journal.restore(index, model, list(linears))
        if not restored:
            stages = [list(linears)]
            if sequential and any(any(_needs(options[n])) for n in linears):
                first_hidden, first_call = next(iter(inputs))
                stages = traced.stages(block, f"{prefix}.{index}.", linears,
                                       partial(first_call, block, first_hidden))  # fmt: skip
            for stage in stages:
                _compress_stage(model, block, {n: linears[n] for n in stage}, options, inputs,
                                act_order=act_order, pool=pool, original=original)  # fmt: skip
            if journal is not None:
                journal.save(index, model, list(linears))
        handled.update(linears)
        del linears  # the replaced nn.Linear weights go now, not once the next block is loaded
        if index + 1 < len(backbone.layers):
            if original is not None:
                clean_inputs = original.outputs()
            inputs = run_block(block, inputs)
        del original
        bar.update(1)
    bar.close()
    return handled


def apply_plan(
    model: nn.Module,
    plan: Plan,
    calib_windows: torch.Tensor | None = None,
    *,
    method: str | None = None,
    act_order: bool = True,
    batch_size: int = 8,
    progress: bool = True,
    journal: ApplyJournal | None = None,
    ray: str | None = None,
    calibration: str = DEFAULT_CALIBRATION,
) -> nn.Module:
    """Compress ``model`` in place by ``plan`` and return it.

    ``method`` (rtn, gptq, sparsegpt, wanda, magnitude) overrides every option's method.
    ``calib_windows`` (n, L) token ids are required when a method needs the input Hessian.
    ``journal`` keeps each finished block on disk so a killed apply resumes where it stopped
    (``allocator.quant.apply_journal``). ``ray`` (``auto`` or a cluster address): the units of
    each block are compressed as parallel Ray tasks (``allocator.quant.distributed``). An
    offloaded model (``allocator.models.offload``) is compressed one block at a time.
    ``calibration`` (``allocator.quant.CALIBRATIONS``) says what GPTQ/SparseGPT calibrate each layer on.
    """
    check_calibration(calibration)
    from allocator.distributed.pool import pool_for

    pool = pool_for(ray)
    prepare_model(model)  # GPT-2 Conv1D and fused MoE experts become nn.Linear (same function)
    options = plan_options(model, plan, method=method)
    needs_h = [n for n, o in options.items() if _needs(o)[0]]
    if needs_h and calib_windows is None:
        raise InputError(
            f"{len(needs_h)} units use GPTQ/SparseGPT (e.g. {needs_h[0]}), which needs "
            "calibration windows; give calibration text or apply with method rtn"
        )
    handled: set[str] = set()
    if calib_windows is not None and any(any(_needs(o)) for o in options.values()):
        handled = _apply_blockwise(
            model,
            options,
            calib_windows,
            act_order=act_order,
            batch_size=batch_size,
            progress=progress,
            journal=journal,
            pool=pool,
            sequential=calibration != "plain",
            asymmetric=calibration == "asymmetric",
        )
    rest = [n for n in options if n not in handled]
    done: dict[str, Any] = {}
    for name in tqdm(rest, desc="apply", unit="unit", disable=not progress or not rest):
        if _needs(options[name])[0]:
            raise InputError(
                f"unit {name} is outside the decoder blocks; GPTQ for it is not supported, "
                "use an rtn option for it"
            )
        keep_resident(model, name, commit=True)  # offloaded: one block at a time
        if pool is not None and name not in done:  # Ray: this unit's block in parallel tasks
            same = [n for n in rest if _block_of(n) == _block_of(name) and n not in done]
            linears = {n: model.get_submodule(n) for n in same}
            done.update(compress_many(pool, linears, options, {}, act_order))
        compress_unit(model, name, options[name], compressed=done.pop(name, None))
    release_kept(model)  # offloaded: the last block's compressed weights go to scratch
    return model


def uniform_plan(model: nn.Module, option: Option | str, *, solver: str = "uniform") -> Plan:
    """A Plan giving every block linear layer of ``model`` the same option."""
    option = Option.parse(option)
    return plan_for_options(model, {u.name: option for u in find_units(model)}, solver=solver)


def plan_for_options(
    model: nn.Module, choice: dict[str, Option | str], *, solver: str = "manual"
) -> Plan:
    """A Plan for a unit -> option choice over the model's block linear layers (sizes by the
    size model, predicted losses 0)."""
    from allocator.schema.plan import Assignment
    from allocator.schema.size import DEFAULT_SIZE_MODEL

    units = find_units(model)
    missing = [u.name for u in units if u.name not in choice]
    if missing:
        raise InputError(f"no option for units {_listing(missing)}; give every unit one")
    assignments = []
    for u in units:
        option = Option.parse(choice[u.name], where=f"unit {u.name}")
        cost = DEFAULT_SIZE_MODEL.cost_bits(option, u)
        assignments.append(
            Assignment(unit=u.name, option=option, numel=u.numel, cost_bits=cost, predicted_loss=0)
        )
    size_bits = sum(a.cost_bits for a in assignments)
    return Plan.from_assignments(
        assignments, budget_bits=size_bits, solver=solver, status="heuristic"
    )


def needs_calibration(plan: Plan, method: str | None = None) -> bool:
    """True when some unit's method uses calibration data (H for GPTQ/SparseGPT, Wanda stats)."""
    for assignment in plan.assignments:
        option = assignment.option
        if method is not None and not option.is_fp16:
            option = option.model_copy(update={"method": method})
        if any(_needs(option)):
            return True
    return False
