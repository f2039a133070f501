"""A compressed model as a compressed-tensors Hugging Face folder (transformers, vLLM, SGLang).

What is written, for a model whose plan units hold allocator's quantized weights (``QuantLinear``
after ``apply_plan`` or ``load_checkpoint``):

- ``config.json``: the model's config with a ``quantization_config`` written by the library's
  ``ModelCompressor.update_config``: one config group per (bits, group size, symmetry) the plan
  uses, each targeting the exact names of its units (anchored ``re:`` patterns), format
  ``pack-quantized``, status ``compressed``; every other linear layer (fp16 units, ``lm_head``)
  is listed in ``ignore`` by name, as vLLM needs a target or an ignore entry for each layer;
- ``model.safetensors``: per quantized unit ``weight_packed`` (the library's ``pack_to_int32``
  of allocator's codes shifted to signed: ``q = code - 2^(b-1)``), ``weight_scale`` (allocator's
  fp16 scales, (out, groups)), ``weight_zero_point`` for asymmetric units (``zero - 2^(b-1)``,
  packed along the output dimension as the library's compressor does) and ``weight_shape``;
  every other tensor as the model holds it (``dtype`` may cast them);
- tokenizer and generation config files.

The values are allocator's (GPTQ/SparseGPT codes and scales), never re-quantized:
``(q - zp) * scale`` equals allocator's ``(code - zero) * scale`` exactly. Pruned weights of
sparse units are stored as their group's zero point, so they dequantize to exactly 0; the
library (0.20.1) has no sparse compressor any more (``ModelCompressor`` writes an empty
``sparsity_config`` and refuses Sparse24 configs), so 2:4 units are stored dense.

Checks before writing (``check_plan``, ``check_model``): bits 1-8, group sizes that divide the
layer's inputs (compressed-tensors has no ragged last group), linear layers that transformers
builds from the config with the same shapes (GPT-2's Conv1D and fused MoE experts are not);
``target="vllm"`` adds the vLLM rules of ``allocator.schema.targets``, ``target="transformers"``
refuses asymmetric units (transformers 5 with compressed-tensors 0.20.1 cannot load asymmetric
``pack-quantized`` layers: its loader expects unpacked zero points, and the library's own
asymmetric checkpoints fail the same way).

Modules: ``checks`` (what the format and target can hold), ``tensors`` (the packed tensors and
the quantization config), ``folder`` (writing and reading the folder), ``verify`` (the library's
check of a written folder, and the write-then-verify step of ``allocator apply``).
"""

from allocator.deploy.compressed_tensors.checks import (
    FORMAT,
    TARGETS,
    check_model,
    check_plan,
    option_problem,
    precheck,
)
from allocator.deploy.compressed_tensors.folder import (
    WEIGHTS_FILE,
    CTResult,
    read_folder,
    save_compressed_tensors,
)
from allocator.deploy.compressed_tensors.tensors import (
    FORMAT_PACKED,
    quantization_config,
    scheme_args,
    unit_codes,
    unit_tensors,
)
from allocator.deploy.compressed_tensors.verify import verify_folder, write_and_verify

__all__ = [
    "FORMAT",
    "FORMAT_PACKED",
    "TARGETS",
    "WEIGHTS_FILE",
    "CTResult",
    "check_model",
    "check_plan",
    "option_problem",
    "precheck",
    "quantization_config",
    "read_folder",
    "save_compressed_tensors",
    "scheme_args",
    "unit_codes",
    "unit_tensors",
    "verify_folder",
    "write_and_verify",
]
