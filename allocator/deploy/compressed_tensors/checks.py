"""What compressed-tensors (and the runtime targeted) can hold, checked before any compression.

``check_plan``: the plan's options (bits 1-8, group sizes that divide the layer's inputs: no
ragged last group) and the target's rules (``vllm``: those of ``allocator.schema.targets``;
``transformers``: no asymmetric units). ``check_model``: every unit is a linear layer that
transformers builds from the config with the same shape (GPT-2's Conv1D and fused MoE experts
are not). ``precheck``: both, and that a checkpoint given as the model was made by the plan.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from allocator.errors import InputError, UnsupportedError
from allocator.quant.quant_linear import QuantLinear
from allocator.schema.option import Option
from allocator.schema.plan import Plan

FORMAT = "compressed-tensors"
TARGETS = ("vllm", "transformers")
SHOWN = 20


def option_problem(option: Option, in_features: int | None = None) -> str | None:
    """Why compressed-tensors cannot hold ``option`` on a weight with ``in_features`` inputs."""
    if option.is_fp16:
        return None
    if not 1 <= option.bits <= 8:
        return f"bits={option.bits}: pack-quantized holds 1 to 8 bits"
    group = option.group_size
    if (
        group is not None
        and in_features is not None
        and in_features % group
        and group < in_features
    ):
        return (
            f"group size {group} does not divide the {in_features} inputs "
            "(compressed-tensors has no ragged last group)"
        )
    return None


def _raise(problems: list[str], what: str) -> None:
    if not problems:
        return
    shown = "\n  ".join(problems[:SHOWN])
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    raise UnsupportedError(f"{what}; {len(problems)} problem(s):\n  {shown}{more}")


def check_plan(
    plan: Plan,
    shapes: dict[str, tuple[int, int]] | None = None,
    *,
    target: str | None = None,
) -> None:
    """Raise UnsupportedError naming every unit whose option the format (or target) cannot hold,
    with the formats that could."""
    from allocator.deploy import formats_for

    if target not in (None, *TARGETS):
        raise InputError(f"--target {target!r}: with --format {FORMAT} use one of {TARGETS}")
    shapes = shapes or {}
    problems = []
    for a in plan.assignments:
        shape = shapes.get(a.unit)
        in_features = shape[1] if shape else None
        why = option_problem(a.option, in_features)
        asym = not a.option.is_fp16 and not a.option.symmetric
        if why is None and target == "transformers" and asym:
            why = (
                "asymmetric (zero point): transformers with compressed-tensors 0.20.1 cannot "
                "load asymmetric pack-quantized layers; use -sym options"
            )
        if why:
            could = ", ".join(f for f in formats_for(a.option, in_features) if f != FORMAT)
            problems.append(f"{a.unit}: {a.option.key}: {why} (formats that can hold it: {could})")
    _raise(problems, f"the plan does not fit --format {FORMAT}")
    if target == "vllm":
        from allocator.schema.targets import enforce, get_rules

        enforce(plan, get_rules("vllm"), shapes)


def _shape(weight: torch.Tensor) -> tuple[int, int]:
    out, inputs = weight.shape
    return int(out), int(inputs)


def _fresh_linears(model: nn.Module) -> dict[str, tuple[int, int]] | None:
    """Linear layers (name -> weight shape) of the model's class built from its config on the
    meta device: the layout transformers will load, before allocator's ``prepare_model``."""
    config = getattr(model, "config", None)
    from_config = getattr(type(model), "_from_config", None)  # transformers' PreTrainedModel
    if config is None or from_config is None:
        return None
    with torch.device("meta"):
        fresh = cast(nn.Module, from_config(config))
    return {n: _shape(m.weight) for n, m in fresh.named_modules() if isinstance(m, nn.Linear)}


def check_model(model: nn.Module, plan: Plan) -> dict[str, tuple[int, int]]:
    """Unit shapes, after checking every unit is a linear layer transformers builds from the
    config with the same shape (else the folder could not be loaded)."""
    modules = dict(model.named_modules())
    fresh = _fresh_linears(model)
    shapes: dict[str, tuple[int, int]] = {}
    problems = []
    for a in plan.assignments:
        module = modules.get(a.unit)
        if isinstance(module, QuantLinear):
            shape = (module.out_features, module.in_features)
        elif isinstance(module, nn.Linear):
            shape = _shape(module.weight)
        else:
            problems.append(f"{a.unit}: not a linear layer of the model")
            continue
        shapes[a.unit] = shape
        if fresh is not None and fresh.get(a.unit) != shape:
            problems.append(
                f"{a.unit}: {type(model).__name__} built from its config has no nn.Linear of shape "
                f"{shape} there (GPT-2 Conv1D and fused MoE experts are re-laid out by allocator; "
                "formats that can hold it: allocator)"
            )
    _raise(problems, f"the model cannot be written as --format {FORMAT}")
    return shapes


def precheck(
    model: nn.Module, plan: Plan, *, target: str | None = None, checkpoint: str | None = None
) -> None:
    """Everything that can be checked before the (minutes-long) compression: the model's layout,
    the plan's options for the format and target, and, when ``model`` was loaded from an
    allocator checkpoint, that the checkpoint was made by this very plan."""
    shapes = check_model(model, plan)
    check_plan(plan, shapes, target=target)
    if checkpoint is not None:
        from allocator.quant.checkpoint import checkpoint_plan

        if checkpoint_plan(checkpoint).content_hash() != plan.content_hash():
            raise InputError(
                f"--model {checkpoint}: the checkpoint was made by another plan than --plan; "
                "give its own plan (plan.json inside it) or the original model"
            )
