"""The size model: how many bits a unit occupies under an option, overhead included.

This is the only module that computes sizes. For a b-bit option with group size g on a unit of
shape (out, in), the default (``layout="group"``):

- values: ``kept * b`` where ``kept = numel * (1 - sparsity)``;
- group metadata: ``out * ceil(in / g)`` groups, each with a ``scale_bits`` scale and, for
  asymmetric options (or always with ``zeros_always``), a zero point of ``zero_bits`` bits, or of
  the option's own ``b`` bits with ``zero_packed`` (GPTQ's packed ``qzeros``); per-channel
  options have one group per output row;
- per-unit extras: ``column_bits`` per input column (GPTQ's int32 ``g_idx``) and
  ``tensor_bits`` per unit (e.g. compressed-tensors' ``weight_shape``);
- sparse metadata: a 1-bit mask per weight for unstructured sparsity, or ``ceil(log2 M)`` index
  bits per kept value for N:M (2 bits per kept value for 2:4, i.e. 1 bit per weight);
- fp16 (``bits=16``): ``fp16_bits`` per weight and nothing else.

``layout="ggml"`` prices an option as the llama.cpp ggml type it becomes (``ggml_type_for``):
K-quants with 256-weight super-blocks, or the 32-block type when a row is not a multiple of 256.

Without a shape (only ``numel``), groups are counted as ``numel / g`` (the in-size is assumed to
be a multiple of g), and per-channel and per-column metadata is ignored.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import ConfigDict, Field

from allocator.schema.base import SchemaModel
from allocator.schema.option import Option
from allocator.schema.unit import Unit

# ggml type -> (bits per weight, weights per block); bpw = 8 * block bytes / block weights
GGML_TYPES: dict[str, tuple[float, int]] = {
    "Q2_K": (2.625, 256),
    "Q3_K": (3.4375, 256),
    "Q4_K": (4.5, 256),
    "Q5_K": (5.5, 256),
    "Q6_K": (6.5625, 256),
    "Q4_0": (4.5, 32),
    "Q4_1": (5.0, 32),
    "Q5_0": (5.5, 32),
    "Q5_1": (6.0, 32),
    "Q8_0": (8.5, 32),
    "IQ4_NL": (4.5, 32),
    "IQ4_XS": (4.25, 256),
    "IQ3_S": (3.4375, 256),
    "IQ3_XXS": (3.0625, 256),
    "IQ2_S": (2.5625, 256),
    "IQ2_XS": (2.3125, 256),
    "IQ2_XXS": (2.0625, 256),
    "F16": (16.0, 1),
}
# Bit width -> ggml types in order of preference: the K-quant of that width (256-weight
# super-blocks), then, for rows that 256 does not divide, the smallest 32-block type with at least
# that many bits and the option's symmetry (Q4_1/Q5_1 store a minimum per block, as an asymmetric
# option stores a zero point; Q4_0/Q5_0/Q8_0 do not). IQ types need an imatrix: none is chosen.
GGML_PREFERENCE: dict[int, tuple[str, ...]] = {
    1: ("Q2_K", "Q4_0"),
    2: ("Q2_K", "Q4_0"),
    3: ("Q3_K", "Q4_0"),
    4: ("Q4_K", "Q4_0"),
    5: ("Q5_K", "Q5_0"),
    6: ("Q6_K", "Q8_0"),
    7: ("Q8_0",),
    8: ("Q8_0",),
    16: ("F16",),
}
GGML_ASYMMETRIC = {"Q4_0": "Q4_1", "Q5_0": "Q5_1"}  # the same block with a minimum per block


def ggml_type_for(option: Option, in_features: int | None) -> str:
    """The ggml type for an option on a tensor whose rows hold ``in_features`` weights."""
    for name in GGML_PREFERENCE[option.bits]:
        block = GGML_TYPES[name][1]
        if in_features is None or in_features % block == 0:
            return name if option.symmetric else GGML_ASYMMETRIC.get(name, name)
    return "F16"


def _is_false(value: object) -> bool:
    return value is False


def _is_zero(value: object) -> bool:
    return value == 0


def _is_none(value: object) -> bool:
    return value is None


def _is_group(value: object) -> bool:
    return value == "group"


# Fields added after format 1 are written only when set (exclude_if), so files and content
# hashes of constraints that do not use them stay as they were.


class SizeModel(SchemaModel):
    """How a format stores a quantized weight; the default is an fp16 scale and an fp16 zero per
    group (zero only for asymmetric options). Export targets bring their own (``gptqmodel``:
    zeros packed at the option's width and always stored, plus ``g_idx``; ``llamacpp``: ggml
    block types)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scale_bits: int = Field(
        default=16, ge=0, le=64, description="Bits of one group's scale.", examples=[16, 32]
    )
    zero_bits: int = Field(
        default=16,
        ge=0,
        le=64,
        description="Bits of one group's zero point (asymmetric options).",
        examples=[16, 8, 0],
    )
    zero_packed: bool = Field(
        exclude_if=_is_false,
        default=False,
        description="Zero points are stored at the option's own bit width (GPTQ qzeros) "
        "instead of zero_bits.",
        examples=[False, True],
    )
    zeros_always: bool = Field(
        exclude_if=_is_false,
        default=False,
        description="A zero point is stored for symmetric options too (GPTQ format).",
        examples=[False, True],
    )
    column_bits: float = Field(
        exclude_if=_is_zero,
        default=0.0,
        ge=0,
        le=64,
        description="Extra bits per input column of each unit (GPTQ's int32 g_idx: 32).",
        examples=[0, 32],
    )
    tensor_bits: float = Field(
        exclude_if=_is_zero,
        default=0.0,
        ge=0,
        le=1e6,
        description="Extra bits per unit (e.g. a stored shape tensor).",
        examples=[0, 64],
    )
    storage_bits: int | None = Field(
        exclude_if=_is_none,
        default=None,
        ge=1,
        le=64,
        description="Bits each kept value occupies when the format does not pack to the "
        "option's width (torchao's unpacked int8 layout: 8); null: the option's bits.",
        examples=[None, 8],
    )
    mask_bits_per_weight: float = Field(
        default=1.0,
        ge=0,
        le=64,
        description="Bits per weight of an unstructured sparsity mask.",
        examples=[1.0],
    )
    fp16_bits: int = Field(
        default=16,
        ge=1,
        le=64,
        description="Bits per weight of a unit kept unquantized (bits=16 options).",
        examples=[16, 32],
    )
    layout: Literal["group", "ggml"] = Field(
        exclude_if=_is_group,
        default="group",
        description="'group': values + per-group metadata as above; 'ggml': the llama.cpp "
        "ggml type each option becomes (block sizes of ggml).",
        examples=["group", "ggml"],
    )

    def n_groups(self, option: Option, unit: Unit) -> float:
        """Number of quantization groups (each holding one scale and maybe one zero)."""
        if unit.shape is None:
            if option.group_size is None:
                return 0.0
            return unit.numel / option.group_size
        out_features, in_features = unit.shape
        group = in_features if option.group_size is None else option.group_size
        return float(out_features * math.ceil(in_features / group))

    def zero_point_bits(self, option: Option) -> int:
        """Bits of one group's zero point under this model (0 when none is stored)."""
        if option.symmetric and not self.zeros_always:
            return 0
        return option.bits if self.zero_packed else self.zero_bits

    def metadata_bits(self, option: Option, unit: Unit) -> float:
        """Bits of scales, zeros, indices and per-unit extras (everything but the values)."""
        if option.is_fp16 or self.layout == "ggml":
            return 0.0
        per_group = self.scale_bits + self.zero_point_bits(option)
        bits = self.n_groups(option, unit) * per_group + self.tensor_bits
        if unit.shape is not None:
            bits += unit.shape[1] * self.column_bits
        if option.sparsity_pattern == "unstructured":
            bits += unit.numel * self.mask_bits_per_weight
        elif option.sparsity_pattern == "nm" and option.nm is not None:
            n, m = option.nm
            bits += unit.numel * (n / m) * math.ceil(math.log2(m))
        return bits

    def value_bits(self, option: Option, unit: Unit) -> float:
        """Bits of the stored (kept) values (for ``ggml``: the whole ggml tensor)."""
        if option.is_fp16:
            return float(unit.numel * self.fp16_bits)
        if self.layout == "ggml":
            ggml = ggml_type_for(option, unit.in_features)
            return unit.numel * GGML_TYPES[ggml][0]
        bits = option.bits if self.storage_bits is None else self.storage_bits
        return unit.numel * (1.0 - option.sparsity) * bits

    def cost_bits(self, option: Option, unit: Unit) -> float:
        """Total bits the unit occupies under the option."""
        return self.value_bits(option, unit) + self.metadata_bits(option, unit)

    def bits_per_weight(self, option: Option, unit: Unit) -> float:
        return self.cost_bits(option, unit) / unit.numel


DEFAULT_SIZE_MODEL = SizeModel()

# What each export format writes per weight matrix (checked against the libraries' own writers
# in tests/export/test_target_sizes.py):
GPTQ_SIZE_MODEL = SizeModel(scale_bits=16, zero_packed=True, zeros_always=True, column_bits=32)
"""GPTQ format (GPTQModel, AutoRound's auto_gptq export): int32-packed qweight, fp16 scales,
int32-packed qzeros of the option's width stored for symmetric options too, int32 g_idx."""
COMPRESSED_TENSORS_SIZE_MODEL = SizeModel(scale_bits=16, zero_packed=True, tensor_bits=128)
"""compressed-tensors pack-quantized: weight_packed (int32), weight_scale in the model's 16-bit
dtype, weight_zero_point packed at the option's width (asymmetric only), int64 weight_shape."""
GGML_SIZE_MODEL = SizeModel(layout="ggml")
"""llama.cpp: each option becomes a ggml type with its own blocks (``ggml_type_for``)."""
TORCHAO_SIZE_MODEL = SizeModel(scale_bits=16, zero_bits=8, zeros_always=True, storage_bits=8)
"""torchao IntxWeightOnlyConfig (default unpacked_to_int8 layout): int8 values whatever the
width, a 16-bit scale and an int8 zero point per group."""
