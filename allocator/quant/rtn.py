"""Round-to-nearest group-wise quantization: asymmetric or symmetric group ranges, min-max or
searched for the least rounding error (``clipped_group_params_fp16``; RTN apply and profiling
use the searched ranges, GPTQ and SparseGPT weight the search by diag(H)).

Weights are (out_features, in_features); groups run along the input dimension. A ragged last
group (in_features not a multiple of the group size) is quantized on its own columns.
Codes are unsigned integers in [0, 2^bits - 1]; ``dequant = (code - zero) * scale``.
Symmetric options use a fixed zero of 2^(bits-1) (GPTQ's convention). Scales are rounded to
fp16 as checkpoints store them (``fp16_scales``, what every compressor uses; plain fp32 scales
remain for reference checks).

The one RTN module: ``quantize_rtn`` gives codes (for packing), ``fake_quantize`` the
quantize-dequantized weight of an option in one vectorized pass (for scoring), with the same
values; GPTQ and SparseGPT take their group parameters from ``group_params``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from allocator.schema.option import Option

FP16_MIN_NORMAL = 2.0**-14


@dataclass
class QuantizedWeight:
    """Integer codes (out, in) plus per-group scale and zero, each (out, n_groups)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero, self.group_size)


def effective_group(group_size: int | None, in_features: int) -> int:
    return in_features if group_size is None else min(group_size, in_features)


def _grouped(weight: torch.Tensor, group: int) -> torch.Tensor:
    """(out, in) -> (out, n_groups, group), edge-padding a ragged last group with its last column."""
    out_features, in_features = weight.shape
    n_groups = -(-in_features // group)
    pad = n_groups * group - in_features
    if pad:
        weight = torch.cat([weight, weight[:, -1:].expand(out_features, pad)], dim=1)
    return weight.reshape(out_features, n_groups, group)


def group_params(
    weight: torch.Tensor, bits: int, group: int, symmetric: bool, *, fp16_scales: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max (or abs-max) scale and zero per group, each (out, n_groups), in fp32
    (``fp16_scales``: the scale rounded to fp16 as stored)."""
    low, high = _group_range(_grouped(weight.float(), group), symmetric)
    scale, zero = _range_params(low, high, bits, symmetric)
    if fp16_scales:
        scale = _fp16(scale)
    return scale, zero


def _group_range(grouped: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) of each group of (out, n_groups, group): [-absmax, absmax] when symmetric,
    else [min, max] widened to include 0."""
    if symmetric:
        absmax = grouped.abs().amax(dim=2)
        return -absmax, absmax
    return grouped.amin(dim=2).clamp(max=0), grouped.amax(dim=2).clamp(min=0)


def _range_params(
    low: torch.Tensor, high: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (scale, zero) mapping [low, high] (low = -high when symmetric) onto the codes."""
    maxq = 2**bits - 1
    if symmetric:
        scale = 2 * high.clamp(min=1e-8) / maxq
        return scale, torch.full_like(scale, float(2 ** (bits - 1)))
    scale = ((high - low) / maxq).clamp(min=1e-8)
    return scale, torch.round(-low / scale)


def _fp16(scale: torch.Tensor) -> torch.Tensor:
    """Scales rounded to fp16 as checkpoints store them (kept above fp16's smallest normal)."""
    return scale.clamp(min=FP16_MIN_NORMAL).to(torch.float16).float()


def group_params_fp16(
    weight: torch.Tensor, bits: int, group: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``group_params`` with the scale rounded to fp16 as stored; (out, n_groups)."""
    return group_params(weight, bits, group, symmetric, fp16_scales=True)


def clipped_group_params_fp16(
    weight: torch.Tensor,
    bits: int,
    group: int,
    symmetric: bool,
    column_weight: torch.Tensor | None = None,
    *,
    steps: int = 36,
    min_shrink: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group parameters whose range is shrunk per group to minimize the (column-weighted)
    squared rounding error, fp16 scales; (out, n_groups).

    For each group the min-max range is scaled by ``steps`` factors from 1 down to ``min_shrink``
    (GPTQ's ``mse`` grid, llama.cpp's clipping search; 2-bit per-channel groups choose factors
    near 0.45 on SmolLM2, 4-bit g128 near 0.93) and the factor with the least
    ``sum_j c_j (w_j - q(w_j))^2`` is kept, ``c`` = ``column_weight`` (diag(H) for GPTQ: the
    output error of rounding alone), uniform when None. Factor 1 is min-max, so the result is
    never worse than ``group_params_fp16`` by that measure.
    """
    grouped = _grouped(weight.float(), group)
    n_groups = grouped.shape[1]
    in_features = weight.shape[1]
    cw = torch.zeros(n_groups * group)  # the ragged last group's padding does not count
    cw[:in_features] = 1.0 if column_weight is None else column_weight.float()
    cw = cw.reshape(1, n_groups, group)
    low, high = _group_range(grouped, symmetric)
    work = torch.empty_like(grouped)

    def candidate(shrink: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scale, zero, weighted squared error) of the range scaled by ``shrink``."""
        scale, zero = _range_params(low * shrink, high * shrink, bits, symmetric)
        scale = _fp16(scale)
        s, z = scale[..., None], zero[..., None]
        torch.div(grouped, s, out=work)
        work.round_().add_(z).clamp_(0, 2**bits - 1).sub_(z).mul_(s).sub_(grouped)
        return scale, zero, work.square_().mul_(cw).sum(dim=2)

    factors = torch.linspace(1.0, min_shrink, steps).tolist()
    best_scale, best_zero, best_err = candidate(factors[0])
    for shrink in factors[1:]:
        scale, zero, err = candidate(shrink)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


RTN_SEARCH_STEPS = 8  # range factors 1.0, 0.9, ..., 0.3: profiling scores every option this way


def rtn_group_params(
    weight: torch.Tensor, bits: int, group: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """RTN's group parameters (fp16 scales): each group's range searched for the least squared
    rounding error on a coarse grid (``RTN_SEARCH_STEPS``), cheap enough to score every option
    of every unit while profiling."""
    return clipped_group_params_fp16(weight, bits, group, symmetric, steps=RTN_SEARCH_STEPS)


def _rtn_params(
    w: torch.Tensor,
    bits: int,
    group: int,
    symmetric: bool,
    *,
    search: bool,
    fp16_scales: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RTN's group parameters: searched (fp16 scales) or min-max."""
    if search:
        return rtn_group_params(w, bits, group, symmetric)
    return group_params(w, bits, group, symmetric, fp16_scales=fp16_scales)


def quantize_with_params(
    weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group: int
) -> torch.Tensor:
    """Codes (out, in) for the given per-group scale and zero."""
    in_features = weight.shape[1]
    scale_cols = scale.repeat_interleave(group, dim=1)[:, :in_features]
    zero_cols = zero.repeat_interleave(group, dim=1)[:, :in_features]
    return torch.clamp(torch.round(weight.float() / scale_cols) + zero_cols, 0, 2**bits - 1).to(
        torch.uint8
    )


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int
) -> torch.Tensor:
    in_features = codes.shape[1]
    scale_cols = scale.repeat_interleave(group, dim=1)[:, :in_features]
    zero_cols = zero.repeat_interleave(group, dim=1)[:, :in_features]
    return (codes.float() - zero_cols) * scale_cols


def quantize_rtn(
    weight: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool = False,
    *,
    fp16_scales: bool = False,
    keep_mask: torch.Tensor | None = None,
    search: bool = False,
) -> QuantizedWeight:
    """Group-wise RTN codes of ``weight`` (out, in); with ``keep_mask`` the pruned weights are
    left out of the group parameters and get code = zero (they dequantize to 0). ``search``:
    ranges from ``rtn_group_params`` (fp16 scales), else min-max."""
    group = effective_group(group_size, weight.shape[1])
    w = weight.float() if keep_mask is None else weight.float() * keep_mask
    scale, zero = _rtn_params(w, bits, group, symmetric, search=search, fp16_scales=fp16_scales)
    codes = quantize_with_params(w, scale, zero, bits, group)
    if keep_mask is not None:
        zero_cols = zero.repeat_interleave(group, dim=1)[:, : w.shape[1]].to(codes.dtype)
        codes = torch.where(keep_mask, codes, zero_cols)
    return QuantizedWeight(codes=codes, scale=scale, zero=zero, bits=bits, group_size=group)


def fake_quantize(
    weight: torch.Tensor,
    option: Option,
    keep_mask: torch.Tensor | None = None,
    *,
    search: bool = True,
) -> torch.Tensor:
    """The quantize-dequantized weight (out, in) fp32 an RTN option gives with fp16 scales
    (pruned by ``keep_mask`` first): the values of ``quantize_rtn(..., fp16_scales=True,
    search=search)`` dequantized, in one vectorized pass (fp16 options round the weight to
    fp16)."""
    if option.is_fp16:
        return weight.detach().float().half().float()
    w = weight.detach().float() if keep_mask is None else weight.detach().float() * keep_mask
    out_features, in_features = w.shape
    group = effective_group(option.group_size, in_features)
    scale, zero = _rtn_params(w, option.bits, group, option.symmetric, search=search)
    x = _grouped(w, group)
    maxq = 2**option.bits - 1
    codes = torch.clamp(torch.round(x / scale[..., None]) + zero[..., None], 0, maxq)
    dequant = ((codes - zero[..., None]) * scale[..., None]).reshape(out_features, -1)
    dequant = dequant[:, :in_features]
    return dequant if keep_mask is None else dequant * keep_mask
