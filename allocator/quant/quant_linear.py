"""QuantLinear: an nn.Linear replacement that holds packed low-bit (optionally sparse) weights.

Buffers (what a checkpoint stores): ``plane{i}`` int32 bit planes of the codes, ``scales`` fp16
(n_groups, N), ``zeros`` fp16 (asymmetric only; symmetric zeros are the constant 2^(bits-1)),
for sparse layouts ``index{i}`` planes (see ``allocator.quant.packing_sparse``), and ``bias``.
Forward: on CUDA, dense weights are converted once to the kernels' layouts
(``allocator.kernels.prepare``, cached until the buffers change or move) and go through
``torch.ops.allocator.quant_matmul_prepared`` (the autotuned Triton kernels, or torch's own
int4/int8 kernels where they apply and are faster); everywhere else the reference path
dequantizes the weight (cached after the first call unless ``cache_dequantized=False``) and
calls ``F.linear``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from allocator.models.trust import dtype_named
from allocator.quant.compress import CompressedWeight, compress
from allocator.quant.packing import PackedWeight, pack_weight
from allocator.quant.packing_sparse import SparsePackedWeight, pack_sparse
from allocator.schema.option import Option


def _kernel_op(name: str = "quant_matmul") -> Any:
    """``torch.ops.allocator.<name>`` if the kernels package registers it, else None."""
    try:
        import allocator.kernels.ops  # noqa: F401
    except Exception:
        return None
    namespace = getattr(torch.ops, "allocator", None)
    return getattr(namespace, name, None) if namespace is not None else None


class QuantLinear(nn.Module):
    """A linear layer y = x W^T + b with W stored packed; see the module docstring."""

    # buffers registered in __init__ (typed here: nn.Module's __getattr__ is tensor-or-module)
    scales: torch.Tensor
    zeros: torch.Tensor  # asymmetric layouts only

    def __init__(self, layout: dict[str, Any], *, cache_dequantized: bool = True) -> None:
        """Empty buffers for a layout (``layout()`` of another QuantLinear, as in checkpoints)."""
        super().__init__()
        self.layout_info = dict(layout)
        self.in_features = int(layout["in_features"])
        self.out_features = int(layout["out_features"])
        self.bits = int(layout["bits"])
        self.group_size = int(layout["group_size"])
        self.symmetric = bool(layout["symmetric"])
        self.pattern = str(layout.get("pattern", "dense"))
        self.cache_dequantized = cache_dequantized
        self._cache: torch.Tensor | None = None
        self._prepared: tuple[tuple, Any] | None = None  # (buffer stamp, PreparedWeight)
        for name, (shape, dtype) in self.buffer_specs().items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))

    def buffer_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of every persistent buffer."""
        info = self.layout_info
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for i, shape in enumerate(info["plane_shapes"]):
            specs[f"plane{i}"] = (tuple(shape), torch.int32)
        for i, shape in enumerate(info.get("index_shapes", [])):
            specs[f"index{i}"] = (tuple(shape), torch.int32)
        n_groups = -(-self.in_features // self.group_size)
        specs["scales"] = ((n_groups, self.out_features), torch.float16)
        if not self.symmetric:
            specs["zeros"] = ((n_groups, self.out_features), torch.float16)
        if info.get("bias"):
            specs["bias"] = (
                (self.out_features,),
                dtype_named(info.get("bias_dtype", "float32"), where="QuantLinear bias_dtype"),
            )
        return specs

    @classmethod
    def from_packed(
        cls,
        packed: PackedWeight | SparsePackedWeight,
        *,
        symmetric: bool = False,
        bias: torch.Tensor | None = None,
        option_key: str = "",
        cache_dequantized: bool = True,
    ) -> QuantLinear:
        sparse: dict[str, Any] = {}
        if isinstance(packed, SparsePackedWeight):
            pattern, planes, index = packed.pattern, packed.values, packed.index
            sparse = {
                "index_shapes": [list(p.shape) for p in index],
                "n_kept": packed.n_kept,
                "nm": list(packed.nm) if packed.nm else None,
            }
        else:
            pattern, planes, index = "dense", packed.planes, []
        layout: dict[str, Any] = {
            "in_features": packed.in_features,
            "out_features": packed.out_features,
            "bits": packed.bits,
            "group_size": packed.group_size,
            "symmetric": symmetric,
            "pattern": pattern,
            "option": option_key,
            "plane_shapes": [list(p.shape) for p in planes],
            "bias": bias is not None,
            **sparse,
        }
        if bias is not None:
            layout["bias_dtype"] = str(bias.dtype).removeprefix("torch.")
        module = cls(layout, cache_dequantized=cache_dequantized)
        with torch.no_grad():
            for i, plane in enumerate(planes):
                module.get_buffer(f"plane{i}").copy_(plane)
            for i, plane in enumerate(index):
                module.get_buffer(f"index{i}").copy_(plane)
            module.scales.copy_(packed.scales)
            if not symmetric:
                module.zeros.copy_(packed.zeros)
            if bias is not None:
                module.get_buffer("bias").copy_(bias)
        return module

    @classmethod
    def from_compressed(
        cls, compressed: CompressedWeight, bias: torch.Tensor | None = None, **kwargs: Any
    ) -> QuantLinear:
        """Pack a quantized CompressedWeight (not fp16) into a QuantLinear."""
        return cls.from_packed(
            pack_compressed(compressed),
            symmetric=compressed.option.symmetric,
            bias=bias,
            option_key=compressed.option.key,
            **kwargs,
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        option: Option,
        hessian: torch.Tensor | None = None,
        act_sq: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> QuantLinear:
        """Compress an nn.Linear's weight under a (non-fp16) option; kwargs go to ``compress``."""
        compressed = compress(linear.weight, option, hessian, act_sq, **kwargs)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls.from_compressed(compressed, bias)

    def layout(self) -> dict[str, Any]:
        return dict(self.layout_info)

    def _zeros(self) -> torch.Tensor:
        if self.symmetric:
            return torch.full_like(self.scales, float(2 ** (self.bits - 1)))
        return self.zeros

    def _planes(self, prefix: str) -> list[torch.Tensor]:
        count = len(self.layout_info["plane_shapes" if prefix == "plane" else "index_shapes"])
        return [getattr(self, f"{prefix}{i}") for i in range(count)]

    def packed(self) -> PackedWeight | SparsePackedWeight:
        """The packed weight held in the buffers (on CPU)."""
        common = {
            "scales": self.scales.cpu(),
            "zeros": self._zeros().cpu(),
            "bits": self.bits,
            "group_size": self.group_size,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }
        if self.pattern == "dense":
            return PackedWeight(planes=[p.cpu() for p in self._planes("plane")], **common)  # type: ignore[arg-type]
        nm = self.layout_info.get("nm")
        return SparsePackedWeight(
            pattern=self.pattern,
            values=[p.cpu() for p in self._planes("plane")],
            index=[p.cpu() for p in self._planes("index")],
            n_kept=int(self.layout_info["n_kept"]),
            nm=tuple(nm) if nm else None,
            **common,  # type: ignore[arg-type]
        )

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) weight, on the buffers' device; cached when cache_dequantized."""
        cache = self._cache
        if cache is not None and cache.dtype == dtype and cache.device == self.scales.device:
            return cache
        weight = self.packed().dequantize(dtype).to(self.scales.device)
        if self.cache_dequantized:
            self._cache = weight
        return weight

    def _apply(self, fn: Any, recurse: bool = True) -> QuantLinear:
        self._cache = None
        self._prepared = None
        return super()._apply(fn, recurse)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = getattr(self, "bias", None)
        if x.is_cuda:
            y = self.kernel_forward(x)
            if y is not None:
                return y if bias is None else y + bias.to(y.dtype)
        weight = self.dequantized_weight(x.dtype)
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))

    def is_24(self) -> bool:
        """2:4 layout that the kernels' ``quant_matmul_24`` reads (same kept/index planes)."""
        nm = self.layout_info.get("nm")
        return self.pattern == "nm" and nm is not None and tuple(nm) == (2, 4)

    def prepared_weight(self) -> Any:
        """The weight in the GPU kernels' layouts (``allocator.kernels.prepare``), converted on
        first use and again only when a buffer is replaced or written; None without kernels."""
        if self.pattern != "dense" or _kernel_op("quant_matmul_prepared") is None:
            return None
        from allocator.kernels.prepare import prepare

        tensors = [*self._planes("plane"), self.scales, *([] if self.symmetric else [self.zeros])]
        stamp = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._prepared is None or self._prepared[0] != stamp:
            args = (self.bits, self.group_size, self.in_features)
            self._prepared = (
                stamp,
                prepare(self._planes("plane"), self.scales, self._zeros(), *args),
            )
        return self._prepared[1]

    def kernel_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x @ W^T`` through the kernels' custom op (any device it supports), or None."""
        args = (self.scales, self._zeros(), self.bits, self.group_size, self.in_features)
        if self.pattern == "dense" and x.is_cuda:
            # under torch.compile: the weight an eager call prepared (run the layer once first),
            # else the bit-plane op below; the buffer check reads data pointers, which tracing
            # has not got
            compiling = torch.compiler.is_compiling()
            cached = self._prepared[1] if self._prepared is not None else None
            prepared = cached if compiling else self.prepared_weight()
            if prepared is not None:
                from allocator.kernels.prepare import prepared_matmul

                return prepared_matmul(x, prepared)
        if self.pattern == "dense":
            op = _kernel_op("quant_matmul")
            return None if op is None else op(x, self._planes("plane"), *args)
        if self.is_24() and self.group_size % 4 == 0:
            op = _kernel_op("quant_matmul_24")
            return None if op is None else op(x, self._planes("plane"), self.index0, *args)
        return None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, pattern={self.pattern}"
        )


def pack_compressed(compressed: CompressedWeight) -> PackedWeight | SparsePackedWeight:
    """The packed storage of a quantized CompressedWeight (sparse layouts when it has a mask)."""
    q = compressed.quantized
    if q is None:
        raise ValueError(f"option {compressed.option.key} keeps fp16 weights; nothing to pack")
    if compressed.mask is None:
        return pack_weight(q.codes, q.scale, q.zero, q.bits, q.group_size)
    nm = compressed.option.nm if compressed.option.sparsity_pattern == "nm" else None
    return pack_sparse(q.codes, q.scale, q.zero, compressed.mask, q.bits, q.group_size, nm)
