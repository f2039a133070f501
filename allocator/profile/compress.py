"""The compressed weight an option yields, for scoring: pruned (if sparse), then quantized.

RTN options take a vectorized path here that gives exactly what the executor's
``allocator.quant.compress.compress_weight`` gives (fp16-rounded scales, Wanda mask when ``act_sq``
is given, magnitude otherwise), about 8x faster on this machine; every other method (``gptq``,
``sparsegpt``, ``wanda``, ``magnitude``) goes to ``compress_weight`` itself.
"""

from __future__ import annotations

import torch

from allocator.quant.compress import compress_weight
from allocator.quant.gptq import FP16_MIN_NORMAL
from allocator.quant.prune import prune_mask
from allocator.schema.option import Option


def fast_fake_quantize(weight: torch.Tensor, option: Option) -> torch.Tensor:
    """Group-wise min-max RTN quantize-dequantize with fp16-rounded scales, (out, in) fp32.

    A ragged last group is padded with its last column (as ``allocator.quant.rtn`` does).
    """
    out_f, in_f = weight.shape
    group = in_f if option.group_size is None else min(option.group_size, in_f)
    n_groups = -(-in_f // group)
    pad = n_groups * group - in_f
    x = weight.float()
    if pad:
        x = torch.cat([x, x[:, -1:].expand(out_f, pad)], dim=1)
    x = x.reshape(out_f, n_groups, group)
    maxq = 2**option.bits - 1
    if option.symmetric:
        scale = 2 * x.abs().amax(2, keepdim=True).clamp(min=1e-8) / maxq
        zero = torch.full_like(scale, float(2 ** (option.bits - 1)))
    else:
        wmin = x.amin(2, keepdim=True).clamp(max=0)
        wmax = x.amax(2, keepdim=True).clamp(min=0)
        scale = ((wmax - wmin) / maxq).clamp(min=1e-8)
        zero = torch.round(-wmin / scale)
    scale = scale.clamp(min=FP16_MIN_NORMAL).half().float()
    codes = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return ((codes - zero) * scale).reshape(out_f, n_groups * group)[:, :in_f]


def compressed_weight(
    weight: torch.Tensor,
    option: Option,
    *,
    hessian: torch.Tensor | None = None,
    act_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantized (and pruned) weight, same shape and dtype as ``weight``."""
    w = weight.detach().float()
    if option.is_fp16:
        return w.half().to(weight.dtype)
    if option.method != "rtn":
        return compress_weight(w, option, hessian=hessian, act_sq=act_sq).to(weight.dtype)
    if option.sparsity > 0:
        mask = prune_mask(w, option, act_sq)
        return (fast_fake_quantize(w * mask, option) * mask).to(weight.dtype)
    return fast_fake_quantize(w, option).to(weight.dtype)
