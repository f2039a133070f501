"""Round-to-nearest group-wise quantization (asymmetric min-max or symmetric abs-max).

Weights are (out_features, in_features); groups run along the input dimension. A ragged last
group (in_features not a multiple of the group size) is quantized on its own columns.
Codes are unsigned integers in [0, 2^bits - 1]; ``dequant = (code - zero) * scale``.
Symmetric options use a fixed zero of 2^(bits-1) (GPTQ's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from allocator.schema.option import Option


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
    weight: torch.Tensor, bits: int, group: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max (or abs-max) scale and zero per group, each (out, n_groups), in fp32."""
    grouped = _grouped(weight.float(), group)
    maxq = 2**bits - 1
    if symmetric:
        absmax = grouped.abs().amax(dim=2).clamp(min=1e-8)
        scale = 2 * absmax / maxq
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        wmin = grouped.amin(dim=2).clamp(max=0)
        wmax = grouped.amax(dim=2).clamp(min=0)
        scale = ((wmax - wmin) / maxq).clamp(min=1e-8)
        zero = torch.round(-wmin / scale)
    return scale, zero


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
    weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = False
) -> QuantizedWeight:
    group = effective_group(group_size, weight.shape[1])
    scale, zero = group_params(weight, bits, group, symmetric)
    codes = quantize_with_params(weight, scale, zero, bits, group)
    return QuantizedWeight(codes=codes, scale=scale, zero=zero, bits=bits, group_size=group)


def fake_quantize(weight: torch.Tensor, option: Option) -> torch.Tensor:
    """Quantize-dequantize a weight with RTN under an option (fp16 options round to fp16)."""
    if option.is_fp16:
        return weight.to(torch.float16).to(weight.dtype)
    q = quantize_rtn(weight, option.bits, option.group_size, option.symmetric)
    return q.dequantize().to(weight.dtype)
