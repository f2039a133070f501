"""``eval --ray``: the evaluation windows split across Ray tasks (see ``allocator.distributed``).

The windows are cut into batches exactly as the single-process evaluation cuts them, and runs
of consecutive batches become tasks. A task loads the models itself from their specs (a model
folder or name, or a packed checkpoint folder: the same path on every machine; offloaded when
asked) and returns every batch's sums (``allocator.evaluate.metrics.BatchSums``: NLL and KL
sums per model, window count); the driver adds them in batch order, the order the
single-process loop adds them, so perplexity and KL equal the single-process values bit for bit.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from allocator.evaluate.metrics import BatchSums, EvalResult, batch_sums, results_of


def _load(spec: str, offload: bool, device: str) -> Any:
    """The model of ``spec`` as ``allocator eval`` loads it (checkpoint or model spec)."""
    from allocator.models.loader import load_model
    from allocator.quant.checkpoint import is_checkpoint, load_checkpoint

    if is_checkpoint(spec):
        return load_checkpoint(spec, device=device).model
    return load_model(spec, device=device, offload=offload).model


def sums_task(
    specs: dict[str, str],
    reference: str | None,
    windows: torch.Tensor,
    batch_size: int,
    reference_nll: bool,
    offload: bool,
    device: str,
) -> list[BatchSums]:
    """The batch sums of some consecutive windows (a Ray task; the models loaded here)."""
    models = {name: _load(spec, offload, device) for name, spec in specs.items()}
    ref = None if reference is None else _load(reference, offload, device)
    return batch_sums(models, windows, ref, batch_size=batch_size, reference_nll=reference_nll)


def evaluate_on_ray(
    specs: dict[str, str],
    windows: torch.Tensor,
    reference: str | None = None,
    *,
    pool: Any,
    batch_size: int,
    reference_name: str | None = None,
    offload: bool = False,
    device: str = "cpu",
) -> dict[str, EvalResult]:
    """``evaluate_many`` of the models at ``specs`` (name -> spec), its batches as Ray tasks.

    ``batch_size`` must be the single-process run's (``auto_batch_size`` of the model) for the
    results to equal it; the batches are split into one run per CPU (GPU with ``--device
    cuda``) slot of the cluster."""
    began = time.perf_counter()
    gpu = str(device).startswith("cuda")
    starts = list(range(0, int(windows.shape[0]), batch_size))
    n_tasks = max(1, min(len(starts), pool.slots(gpu=gpu)))
    per_task = -(-len(starts) // n_tasks)
    tasks = []
    with_ref_nll = reference is not None and reference_name is not None
    for first in range(0, len(starts), per_task):
        begin = starts[first]
        end = starts[first + per_task] if first + per_task < len(starts) else windows.shape[0]
        tasks.append(
            (dict(specs), reference, windows[begin:end].clone(), batch_size, with_ref_nll,
             offload, device)
        )  # fmt: skip
    sums = [s for part in pool.map(sums_task, tasks, gpu=gpu) for s in part]
    return results_of(
        sums, list(specs), int(windows.shape[1]), with_kl=reference is not None,
        reference_name=reference_name if with_ref_nll else None,
        seconds=time.perf_counter() - began,
    )  # fmt: skip
