"""The size model: how many bits a unit occupies under an option, overhead included.

This is the only module that computes sizes. For a b-bit option with group size g on a unit of
shape (out, in):

- values: ``kept * b`` where ``kept = numel * (1 - sparsity)``;
- group metadata: ``out * ceil(in / g) * (scale_bits + zero_bits)`` (``zero_bits`` is skipped for
  symmetric options; per-channel options have one group per output row);
- sparse metadata: a 1-bit mask per weight for unstructured sparsity, or ``ceil(log2 M)`` index
  bits per kept value for N:M (2 bits per kept value for 2:4, i.e. 1 bit per weight);
- fp16 (``bits=16``): 16 bits per weight and nothing else.

Without a shape (only ``numel``), groups are counted as ``numel / g`` (the in-size is assumed to
be a multiple of g), and per-channel metadata is ignored.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from allocator.schema.option import Option
from allocator.schema.unit import Unit


class SizeModel(BaseModel):
    """Overhead settings; the default is an fp16 scale and an fp16 zero per group."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scale_bits: int = Field(default=16, ge=0, le=64)
    zero_bits: int = Field(default=16, ge=0, le=64)
    mask_bits_per_weight: float = Field(default=1.0, ge=0, le=64)
    fp16_bits: int = Field(default=16, ge=1, le=64)

    def n_groups(self, option: Option, unit: Unit) -> float:
        """Number of quantization groups (each holding one scale and maybe one zero)."""
        if unit.shape is None:
            if option.group_size is None:
                return 0.0
            return unit.numel / option.group_size
        out_features, in_features = unit.shape
        group = in_features if option.group_size is None else option.group_size
        return float(out_features * math.ceil(in_features / group))

    def metadata_bits(self, option: Option, unit: Unit) -> float:
        """Bits of scales, zeros and sparsity indices (everything but the values)."""
        if option.is_fp16:
            return 0.0
        per_group = self.scale_bits + (0 if option.symmetric else self.zero_bits)
        bits = self.n_groups(option, unit) * per_group
        if option.sparsity_pattern == "unstructured":
            bits += unit.numel * self.mask_bits_per_weight
        elif option.sparsity_pattern == "nm" and option.nm is not None:
            n, m = option.nm
            bits += unit.numel * (n / m) * math.ceil(math.log2(m))
        return bits

    def value_bits(self, option: Option, unit: Unit) -> float:
        """Bits of the stored (kept) values."""
        if option.is_fp16:
            return float(unit.numel * self.fp16_bits)
        return unit.numel * (1.0 - option.sparsity) * option.bits

    def cost_bits(self, option: Option, unit: Unit) -> float:
        """Total bits the unit occupies under the option."""
        return self.value_bits(option, unit) + self.metadata_bits(option, unit)

    def bits_per_weight(self, option: Option, unit: Unit) -> float:
        return self.cost_bits(option, unit) / unit.numel


DEFAULT_SIZE_MODEL = SizeModel()
