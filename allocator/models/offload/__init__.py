"""Block-wise offloaded execution: a model whose weights stay on disk until a block runs.

``load_offloaded(folder)`` builds the model's skeleton on the meta device (no weight memory),
ties and prepares it as the loader does (GPT-2 Conv1D -> nn.Linear), and gives every parameter
a one-element placeholder of its shape and dtype on the target device (a NaN scalar expanded,
so device and shape queries hold and a computation that reads an unloaded weight yields NaN,
never plausible numbers). Weights are read from the folder's safetensors files (sharded or not)
with positioned reads, tensor by tensor (``allocator.models.tensorfile``), only when needed:

- every block of the block stack and every other module owning weights (embeddings, final norm,
  head) gets forward hooks that load its weights before it runs and free them after, so a plain
  ``model(input_ids)`` streams the model through memory one block at a time;
- ``run_block`` and the block-by-block loops hold a block for all cached batches
  (``hold``), so each block is read once per pass, not once per batch;
- ``keep(name)`` keeps the block owning a unit loaded until a unit of another block is asked
  for (the estimators' per-unit loops read weights through ``ProfileContext.module``);
- ``hold(block, commit=True)`` (apply) writes the block as it is at the end (QuantLinear
  buffers, fp16-rounded weights, norms) to a scratch safetensors file and frees it: the model
  stays usable (evaluating it streams the compressed blocks from scratch) and
  ``save_checkpoint`` writes it tensor by tensor (``lazy``), bit-identical to the
  checkpoint of the same model compressed in memory.

Tied weights (embeddings and head) are one parameter read from whichever name the files hold.
Refused with a clear message: fused MoE experts (transformers renames and fuses expert weights
when loading, so the files' names are not the model's) and weights the files lack
(``from_pretrained`` would initialize them randomly). ``device="cuda"`` reads each block to the
GPU when it runs. With ``activations`` (``--offload-activations DIR``) the hidden states cached
between blocks live in files under DIR (``allocator.models.activations``).

The package, by job: ``runtime`` (``OffloadRuntime``: reads, hooks, hold/keep/commit, and the
helpers the block-wise code calls), ``load`` (``load_offloaded``) and ``stream`` (``streamed``,
evaluation block by block).
"""

from allocator.models.offload.load import load_offloaded
from allocator.models.offload.runtime import (
    ATTR,
    GROUP_ATTR,
    OffloadRuntime,
    holding,
    is_offloaded,
    keep_resident,
    release_kept,
    runtime_of,
)
from allocator.models.offload.stream import StreamedLM, streamed

__all__ = [
    "ATTR",
    "GROUP_ATTR",
    "OffloadRuntime",
    "StreamedLM",
    "holding",
    "is_offloaded",
    "keep_resident",
    "load_offloaded",
    "release_kept",
    "runtime_of",
    "streamed",
]
