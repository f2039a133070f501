"""Compress one weight under an Option: prune, then quantize; the single entry point used by
profiling (``compress_weight``) and by ``apply_plan`` (``compress``, which also keeps the codes).

Methods (the option's ``@method`` suffix):
- ``rtn``: round-to-nearest; a sparse option is pruned with Wanda when ``act_sq`` is given,
  by magnitude otherwise;
- ``gptq``: GPTQ with the layer's input Hessian; a sparse option is pruned and quantized jointly
  by SparseGPT (same H);
- ``sparsegpt``: same as ``gptq``;
- ``wanda`` / ``magnitude``: that pruner, then RTN.
fp16 options (``bits=16``) round the weight to fp16 and ignore the method.
Scales are rounded to fp16 (as stored), so the dequantized weight equals what a packed
checkpoint reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from allocator.errors import InputError, UnsupportedError
from allocator.quant.gptq import gptq_quantize, group_params_fp16
from allocator.quant.prune import magnitude_scores, mask_from_scores, wanda_scores
from allocator.quant.rtn import QuantizedWeight, effective_group, quantize_with_params
from allocator.quant.sparsegpt import sparsegpt_prune
from allocator.schema.option import Option

METHODS = ("rtn", "gptq", "sparsegpt", "wanda", "magnitude")
HESSIAN_METHODS = ("gptq", "sparsegpt")


@dataclass
class CompressedWeight:
    """A compressed unit: its dequantized weight, keep mask (sparse options) and codes."""

    weight: torch.Tensor  # (out, in) fp32
    option: Option
    mask: torch.Tensor | None = None  # (out, in) bool, True = kept
    quantized: QuantizedWeight | None = None  # None for fp16 options


def check_option(option: Option, where: str = "option") -> None:
    """Raise InputError/UnsupportedError for options the executor cannot run."""
    if not option.is_fp16 and not 1 <= option.bits <= 8:
        raise InputError(
            f"{where}: bits={option.bits} is out of range; use 2 to 8 bits, or fp16 (bits=16)"
        )
    if option.method not in METHODS:
        raise UnsupportedError(
            f"{where}: method {option.method!r} is unknown; use one of {', '.join(METHODS)}"
        )


def rtn_quantize(
    weight: torch.Tensor, option: Option, keep_mask: torch.Tensor | None = None
) -> QuantizedWeight:
    """Group-wise RTN with fp16-rounded scales; pruned weights get code = zero (dequantize to 0)."""
    group = effective_group(option.group_size, weight.shape[1])
    w = weight.float() if keep_mask is None else weight.float() * keep_mask
    scale, zero = group_params_fp16(w, option.bits, group, option.symmetric)
    codes = quantize_with_params(w, scale, zero, option.bits, group)
    if keep_mask is not None:
        zero_cols = zero.repeat_interleave(group, dim=1)[:, : w.shape[1]].to(codes.dtype)
        codes = torch.where(keep_mask, codes, zero_cols)
    return QuantizedWeight(codes=codes, scale=scale, zero=zero, bits=option.bits, group_size=group)


def _mask_for(
    weight: torch.Tensor, option: Option, method: str, act_sq: torch.Tensor | None
) -> torch.Tensor:
    if method == "wanda" and act_sq is None:
        raise InputError(
            f"option {option.key}: Wanda pruning needs act_sq (per-input-column mean square of "
            "the layer's activations); pass act_sq or use @magnitude"
        )
    use_wanda = act_sq is not None and method != "magnitude"
    scores = wanda_scores(weight, act_sq) if use_wanda else magnitude_scores(weight)  # type: ignore[arg-type]
    return mask_from_scores(scores, option)


def compress(
    weight: torch.Tensor,
    option: Option,
    hessian: torch.Tensor | None = None,
    act_sq: torch.Tensor | None = None,
    *,
    method: str | None = None,
    act_order: bool = True,
) -> CompressedWeight:
    """Prune then quantize ``weight`` (out, in) under ``option``; ``method`` overrides option.method.

    ``act_order`` (GPTQ, default on) sweeps columns by decreasing diag(H) with static groups; on
    SmolLM2 uniform 3-bit g128 it took perplexity from 79.4 to 60.3.
    """
    option = option if method is None else option.model_copy(update={"method": method})
    check_option(option)
    w = weight.detach().float()
    if option.is_fp16:
        return CompressedWeight(weight=w.to(torch.float16).float(), option=option)
    if option.method in HESSIAN_METHODS:
        if hessian is None:
            raise InputError(
                f"option {option.key}: method {option.method} needs the layer's input Hessian; "
                "give calibration text (apply --calib-text) or use method rtn"
            )
        if hessian.shape != (w.shape[1], w.shape[1]):
            raise InputError(
                f"Hessian shape {tuple(hessian.shape)} does not match the weight's input size "
                f"{w.shape[1]}; pass the H captured for this layer"
            )
    sparse = option.sparsity > 0
    if option.method in HESSIAN_METHODS and sparse:
        result = sparsegpt_prune(
            w,
            hessian,  # type: ignore[arg-type]
            sparsity=option.sparsity,
            nm=option.nm if option.sparsity_pattern == "nm" else None,
            bits=option.bits,
            group_size=option.group_size,
            symmetric=option.symmetric,
        )
        assert result.quantized is not None
        return CompressedWeight(
            weight=result.quantized.dequantize() * result.mask,
            option=option,
            mask=result.mask,
            quantized=result.quantized,
        )
    mask = _mask_for(w, option, option.method, act_sq) if sparse else None
    if option.method in HESSIAN_METHODS:
        quantized = gptq_quantize(
            w,
            hessian,  # type: ignore[arg-type]
            option.bits,
            option.group_size,
            symmetric=option.symmetric,
            act_order=act_order,
        )
    else:
        quantized = rtn_quantize(w, option, mask)
    dequant = quantized.dequantize()
    if mask is not None:
        dequant = dequant * mask
    return CompressedWeight(weight=dequant, option=option, mask=mask, quantized=quantized)


def compress_weight(
    weight: torch.Tensor,
    option: Option,
    hessian: torch.Tensor | None = None,
    act_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """The dequantized (and pruned) weight an option gives, in the weight's dtype."""
    return compress(weight, option, hessian, act_sq).weight.to(weight.dtype)
