"""``profile()``: a model, calibration data, an estimator and an option grid -> SensitivityTable.

The table's provenance records the model hash, a hash of the calibration token windows, the
settings and their hash, and the versions that produced it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import warnings
from typing import Any

import torch
from torch import nn

from allocator.errors import InputError, UnsupportedError
from allocator.models.adapters import prepare_model
from allocator.models.blocks import check_replay, find_backbone
from allocator.models.corpus import default_calibration_text, read_texts
from allocator.models.loader import LoadedModel, load_model, model_task
from allocator.models.offload import is_offloaded, release_kept
from allocator.models.units import find_units, unhandled_weights
from allocator.models.windows import token_windows
from allocator.profile.context import ProfileContext
from allocator.profile.estimators import DEFAULT_ESTIMATOR, ESTIMATORS, estimators_for, load_all
from allocator.profile.options import check_options, parse_options
from allocator.schema.option import Option
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit

Data = str | list[str] | list[os.PathLike[str]] | torch.Tensor | None
# estimators that run block by block on an offloaded model (--offload)
OFFLOAD_ESTIMATORS = (
    "hessian", "hessian_diag", "block_error", "kl", "hessian_kl", "lim", "zd", "fisher", "kfac",
)  # fmt: skip


def _resolve_model(
    model: Any, device: str, offload: bool = False, offload_activations: Any = None
) -> LoadedModel:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedError(
            f"--device {device}: no CUDA GPU is available here; use --device cpu"
        )
    if isinstance(model, LoadedModel):
        prepare_model(model.model)
        return model
    if isinstance(model, nn.Module):
        prepare_model(model)  # in place: Conv1D and fused experts become nn.Linear
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items())[:8]:
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().flatten()[:4096].numpy().tobytes())
        model.eval().to(device)
        return LoadedModel(
            model=model,
            tokenizer=None,
            source=type(model).__name__,
            model_hash=digest.hexdigest(),
            task=model_task(model),
        )
    return load_model(
        model, device=device, offload=offload, offload_activations=offload_activations
    )


def _windows(
    loaded: LoadedModel, data: Data, n: int | None, seq_len: int, seed: int, bos: bool | None
) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        if data.ndim != 2 or data.dtype not in (torch.int32, torch.int64):
            raise InputError("data: token windows must be an integer tensor (n_windows, seq_len)")
        return data[:n].long()  # n is None unless asked: all given windows
    if loaded.tokenizer is None:
        raise InputError("data: a bare nn.Module has no tokenizer; pass token windows as a tensor")
    if data is None:
        text = default_calibration_text()
    elif isinstance(data, str):
        text = data
    else:
        text = read_texts(list(data))
    return token_windows(
        loaded.tokenizer, text, seq_len=seq_len, n_windows=n or 1, seed=seed, bos=bos
    )


def _rescaling_method(method: str | None, options: list[Option]) -> str | None:
    """``method`` when it changes what the table's RTN options would measure, else None."""
    if method is None:
        return None
    from allocator.profile.method_scaling import rescalable
    from allocator.quant.compress import QUANT_METHODS

    if not QUANT_METHODS.get(method).needs_hessian or not any(map(rescalable, options)):
        return None
    return method


def _starts_with_bos(loaded: LoadedModel, ids: torch.Tensor) -> bool:
    bos = getattr(loaded.tokenizer, "bos_token_id", None)
    return bos is not None and bool((ids[:, 0] == bos).all())


def _versions() -> dict[str, str]:
    import transformers

    from allocator import __version__ as ours

    return {"allocator": ours, "torch": torch.__version__, "transformers": transformers.__version__}


def settings_hash(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def profile(
    model: Any = "smollm2",
    data: Data = None,
    estimator: str = DEFAULT_ESTIMATOR,
    options: str | list[str] | list[Option] = "bits=2,3,4,5,6,8 group=128",
    *,
    windows: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    units: list[Unit] | None = None,
    batch_size: int = 4,
    journal: str | os.PathLike[str] | None = None,
    resume: bool = False,
    settings: dict[str, Any] | None = None,
    bos: bool | None = None,
    calibrate_options: bool = False,
    rescale_to: str | None = None,
    offload: bool = False,
    offload_activations: str | os.PathLike[str] | None = None,
    ray: str | None = None,
) -> SensitivityTable:
    """Profile a model (name, path, LoadedModel or nn.Module) and return its SensitivityTable.

    ``data``: text, a list of text files, token windows (n, L), or None for the Jane Austen
    calibration novels. ``windows``/``seq_len`` default to the estimator's budget; ``bos``: start
    every window with BOS (default: when the tokenizer adds it). ``calibrate_options`` corrects
    each option's losses by measured single-unit KL on a few sample units
    (``allocator.profile.option_calibration``). ``rescale_to`` (a Hessian method: ``gptq``,
    ``sparsegpt``) scales the round-to-nearest losses to the error that method leaves, measured
    on sample units of each projection kind (``allocator.profile.method_scaling``). Journaled
    estimators (kl, hessian_kl, block_error) persist each unit to ``journal`` and skip the units
    already there when ``resume`` is true.

    ``offload`` (a model name or folder): weights stay on disk and each block is read when it
    runs (``allocator.models.offload``; estimators in ``OFFLOAD_ESTIMATORS``);
    ``offload_activations``: a folder for the cached hidden states. ``ray`` (``auto`` or a
    cluster address): the per-block work runs as Ray tasks (``allocator.profile.distributed``).
    """
    load_all()
    spec = ESTIMATORS.get(estimator)
    option_list = parse_options(options)
    loaded = _resolve_model(model, device, offload, offload_activations)
    if loaded.task not in spec.tasks:  # e.g. next-token losses on an encoder: refused before work
        usable = estimators_for(loaded.task)
        raise UnsupportedError(
            f"estimator {estimator!r} needs a causal-LM head (next-token loss or logits); "
            f"model {loaded.source} ({type(loaded.model).__name__}) is an encoder/embedding "
            f"model without one; use one of: {', '.join(usable)}"
        )
    unit_list = units if units is not None else find_units(loaded.model)
    if not unit_list:
        blocks = find_backbone(loaded.model)
        kinds = sorted({type(m).__name__ for m in blocks.layers[0].modules()})
        raise UnsupportedError(
            f"model {loaded.source}: its blocks ({blocks.prefix}) hold no nn.Linear, Conv1D or "
            f"fused-expert layers to profile (block 0 holds: {', '.join(kinds)})"
        )
    if units is None:
        unhandled = unhandled_weights(loaded.model)
        if unhandled:
            warnings.warn(
                f"model {loaded.source}: {len(unhandled)} weight matrices per block are not "
                f"quantizable units and stay in full precision: {'; '.join(unhandled[:4])}",
                stacklevel=2,
            )
    check_options(option_list, unit_list)
    if is_offloaded(loaded.model) and estimator not in OFFLOAD_ESTIMATORS:
        raise UnsupportedError(
            f"estimator {estimator!r} does not run on an offloaded model; with --offload use "
            f"one of: {', '.join(OFFLOAD_ESTIMATORS)}"
        )
    n = windows or spec.windows
    length = seq_len or spec.seq_len
    torch.manual_seed(seed)
    input_ids = _windows(
        loaded, data, windows if isinstance(data, torch.Tensor) else n, length, seed, bos
    )
    check_replay(loaded.model, input_ids[:1, :64])
    extra = dict(settings or {})
    record = {
        "estimator": estimator,
        "options": [o.key for o in option_list],
        "windows": int(input_ids.shape[0]),
        "seq_len": int(input_ids.shape[1]),
        "seed": seed,
        "bos": bool(input_ids.shape[0] and _starts_with_bos(loaded, input_ids)),
        "compressor": "allocator.quant.compress (rtn: vectorized equivalent)",
        **{k: v for k, v in extra.items() if k != "imatrix"},
    }
    if calibrate_options:
        record["calibrate_options"] = True
    rescaling = _rescaling_method(rescale_to, option_list)
    if rescaling is not None:
        record["rescale_to"] = rescaling
    if "imatrix" in extra:
        record["imatrix"] = True
    digest = settings_hash({**record, "model_hash": loaded.model_hash})
    # measured points do not depend on which proxy is calibrated to them: journals are shared
    measured = {k: v for k, v in record.items() if k != "proxy"}
    journal_hash = settings_hash({**measured, "model_hash": loaded.model_hash})
    extra.update(journal=journal, resume=resume, settings_hash=digest, journal_hash=journal_hash)
    ctx = ProfileContext(
        model=loaded.model,
        input_ids=input_ids,
        units=unit_list,
        options=option_list,
        settings=extra,
        progress=progress,
        batch_size=batch_size,
        seed=seed,
    )
    start = time.perf_counter()
    with torch.inference_mode(False):
        try:
            if ray is not None:
                from allocator.distributed.pool import pool_for
                from allocator.profile.distributed import run_on_ray

                result = run_on_ray(ctx, estimator, loaded.source, device, pool_for(ray, device))
            else:
                result = spec.run(ctx)
        finally:
            release_kept(loaded.model)  # offloaded: the last block an estimator read
    scores = None
    if spec.kind == "score":
        from allocator.profile.combine import scores_to_losses

        scores = result
        result = scores_to_losses(ctx, scores)
    if calibrate_options:
        from allocator.profile.option_calibration import calibrate_options as correct

        with torch.inference_mode(False):
            result, report = correct(ctx, result)
        record["option_calibration"] = report
    if rescaling is not None:
        from allocator.profile.method_scaling import rescale_to_method

        with torch.inference_mode(False):
            result, report = rescale_to_method(ctx, result, rescaling)
        record["method_scaling"] = report
    release_kept(loaded.model)  # offloaded: what scores_to_losses / calibration kept
    record["seconds"] = round(time.perf_counter() - start, 2)
    provenance = Provenance(
        estimator=estimator,
        model=loaded.source,
        model_hash=loaded.model_hash,
        data_hash=hashlib.sha256(input_ids.numpy().tobytes()).hexdigest()[:16],
        settings=record,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        versions=_versions(),
        settings_hash=digest,
    )
    if scores is not None:
        provenance.scores = scores  # type: ignore[attr-defined]
    losses = {u.name: {k: max(float(v), 0.0) for k, v in result[u.name].items()} for u in unit_list}
    return SensitivityTable(
        units=unit_list, options=option_list, losses=losses, provenance=provenance
    )
