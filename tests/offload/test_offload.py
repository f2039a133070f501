"""Offloaded execution (weights read from disk block by block) equals the in-memory model:
forward, evaluation, profile tables (within 1e-6 relative; in practice equal) and apply
checkpoints (bit-identical), on tiny models of several families."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from allocator.errors import UnsupportedError
from allocator.models.offload import runtime_of
from allocator.models.tensorfile import LazyTensor, TensorFiles, read_header, write_safetensors
from tests.helpers import tiny_model
from tests.offload.conftest import (
    FAMILIES,
    in_memory,
    max_relative_gap,
    offloaded,
    same_folders,
)


def test_streamed_safetensors_bytes_equal_save_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "b.w": torch.randn(3, 5, generator=g), "a.h": torch.randn(7, generator=g).half(),
        "q": torch.arange(6, dtype=torch.int32).reshape(2, 3), "u": torch.ones(3, dtype=torch.uint8),
        "z": torch.randn(4, generator=g).bfloat16(), "d": torch.randn(2, dtype=torch.float64),
        "e": torch.zeros(0), "i": torch.ones(2, dtype=torch.int64), "k": torch.ones(5, dtype=torch.bool),
        "c": torch.ones(3, dtype=torch.int8),
    }  # fmt: skip
    save_file(tensors, str(tmp_path / "a.safetensors"))
    lazy = {
        k: LazyTensor(v.dtype, tuple(v.shape), lambda v=v: v.clone()) for k, v in tensors.items()
    }
    write_safetensors(lazy, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    files = TensorFiles()
    header = read_header(tmp_path / "b.safetensors")
    for name, tensor in tensors.items():
        assert torch.equal(files.read(header[name]), tensor)
    files.close()


@pytest.mark.parametrize("family", [*FAMILIES, "gemma2", "bert"])
def test_forward_is_bit_identical(folders, ids, family: str) -> None:
    reference = in_memory(folders[family])
    model = offloaded(folders[family])
    runtime = runtime_of(model)
    assert runtime is not None and runtime.resident_bytes == 0
    with torch.no_grad():
        a, b = reference(input_ids=ids), model(input_ids=ids)
    key = "logits" if hasattr(a, "logits") else "last_hidden_state"
    assert torch.equal(getattr(a, key), getattr(b, key))
    assert runtime.resident_bytes == 0  # every module freed its weights after running
    weights = sum(p.numel() * 4 for p in reference.parameters())
    assert runtime.peak_resident_bytes < weights / 2


def test_parameters_are_placeholders_until_a_block_runs(folders) -> None:
    model = offloaded(folders["llama"])
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert weight.shape == (64, 64) and weight.device.type == "cpu"
    assert torch.isnan(weight).all()  # never plausible numbers
    assert weight.untyped_storage().nbytes() == 4  # one scalar, not a (64, 64) matrix
    runtime = runtime_of(model)
    with runtime.hold(model.model.layers[0]):
        assert torch.isfinite(weight).all()
    assert torch.isnan(weight).all()


def test_fused_moe_and_missing_weights_are_refused(tmp_path: Path) -> None:
    tiny_model("mixtral").save_pretrained(tmp_path / "moe")
    with pytest.raises(UnsupportedError, match="fused MoE"):
        offloaded(tmp_path / "moe")
    from safetensors.torch import load_file, save_file

    tiny_model("llama").save_pretrained(tmp_path / "llama")
    file = tmp_path / "llama" / "model.safetensors"
    state = load_file(str(file))
    state.pop("model.layers.1.mlp.up_proj.weight")
    save_file(state, str(file), metadata={"format": "pt"})
    with pytest.raises(UnsupportedError, match="up_proj"):
        offloaded(tmp_path / "llama")


def test_sharded_folder(tmp_path: Path, ids) -> None:
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = offloaded(tmp_path / "sharded")(input_ids=ids).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_evaluate_equals_in_memory(folders, ids, family: str) -> None:
    from allocator.evaluate import LogProbCache, evaluate

    reference_model = tiny_model(family, seed=5)
    a = evaluate(in_memory(folders[family]), ids, reference_model, batch_size=2, progress=False)
    model = offloaded(folders[family])
    b = evaluate(model, ids, reference_model, batch_size=2, progress=False)
    assert (a.perplexity, a.kl) == (b.perplexity, b.kl)
    cache = LogProbCache.build(model, ids, batch_size=2, progress=False)  # block by block
    c = evaluate(reference_model, ids, cache, batch_size=2, progress=False)
    d = evaluate(reference_model, ids, in_memory(folders[family]), batch_size=2, progress=False)
    assert abs(c.kl - d.kl) <= 1e-3 * max(d.kl, 1e-9)  # the cache stores fp16 log-probs
    cache.close()


ESTIMATOR_CASES = [
    ("llama", "hessian"), ("llama", "hessian_diag"), ("llama", "block_error"), ("llama", "kl"),
    ("llama", "lim"), ("llama", "hessian_kl"), ("gemma3", "hessian"), ("gemma3", "kl"),
    ("gpt2", "hessian"), ("gpt2", "block_error"), ("qwen2", "kl"), ("phi3", "hessian_diag"),
    ("gpt_neox", "hessian"),
]  # fmt: skip


@pytest.mark.parametrize(("family", "estimator"), ESTIMATOR_CASES)
def test_profile_tables_equal_in_memory(folders, ids, family: str, estimator: str) -> None:
    from allocator.profile.api import profile

    options = "bits=2,3,4 group=32" if estimator != "hessian" else "bits=2,4 group=32 method=gptq"
    if estimator in ("kl", "hessian_kl", "block_error"):  # measured: keep them quick
        options, ids = "bits=2,4 group=32", ids[:2, :16]
    kwargs = {"progress": False, "batch_size": 2}
    a = profile(in_memory(folders[family]), ids, estimator, options, **kwargs)
    model = offloaded(folders[family])
    b = profile(model, ids, estimator, options, **kwargs)
    assert max_relative_gap(a.losses, b.losses) <= 1e-6
    assert runtime_of(model).resident_bytes == 0  # the last block an estimator kept is freed


def test_kl_reads_each_downstream_block_once_per_unit(folders, ids) -> None:
    from allocator.profile.api import profile

    model = offloaded(folders["llama"])
    runtime = runtime_of(model)
    profile(model, ids[:2, :16], "kl", "bits=2,3,4,5 group=32", progress=False, batch_size=2)
    n_units, n_blocks = 7 * 4, 4
    # per unit: its block and the blocks above, once for all 4 options (not once per option)
    per_unit = sum(n_blocks - layer for layer in range(n_blocks)) * 7
    assert runtime.loads < 2 * per_unit + 10 * n_blocks
    assert n_units


APPLY_CASES = [
    ("llama", "b4-g32", "rtn"), ("llama", "b3-g32", "gptq"), ("gpt2", "b3-g32", "gptq"),
    ("gemma3", "b4-g32", "sparsegpt"), ("qwen2", "b4-g32-2:4", "sparsegpt"),
    ("phi3", "fp16", "rtn"), ("gpt_neox", "b4-g32-s0.5", "wanda"), ("gemma2", "b2-g32", "gptq"),
]  # fmt: skip


@pytest.mark.parametrize(("family", "option", "method"), APPLY_CASES)
def test_apply_checkpoint_is_bit_identical(folders, ids, family, option, method) -> None:
    from allocator.quant.apply import apply_plan, uniform_plan
    from allocator.quant.checkpoint import load_checkpoint, save_checkpoint

    outs, logits = [], []
    for model in (in_memory(folders[family]), offloaded(folders[family])):
        plan = uniform_plan(model, option)
        apply_plan(model, plan, ids, method=method, progress=False, batch_size=2)
        out = Path(tempfile.mkdtemp()) / "checkpoint"
        save_checkpoint(model, plan, out)
        outs.append(out)
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)  # the offloaded one streams from scratch
    assert same_folders(*outs) == []
    assert torch.equal(*logits)
    with torch.no_grad():
        loaded = load_checkpoint(outs[1]).model(input_ids=ids).logits
    assert torch.equal(loaded, logits[0])


def test_apply_keeps_one_block_resident(folders, ids) -> None:
    from allocator.quant.apply import apply_plan, uniform_plan

    model = offloaded(folders["llama"])
    runtime = runtime_of(model)
    apply_plan(model, uniform_plan(model, "b4-g32"), ids, method="gptq", progress=False)
    block = sum(p.numel() * 4 for p in tiny_model("llama").model.layers[0].parameters())
    embedding = 128 * 64 * 4
    assert runtime.peak_resident_bytes <= block + 2 * embedding
    assert runtime.resident_bytes == 0


def test_embedding_evaluation_equals_in_memory(folders) -> None:
    from allocator.evaluate import evaluate_embeddings

    ids = torch.randint(1, 128, (3, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    reference = tiny_model("bert", seed=4)
    a = evaluate_embeddings(
        {"m": in_memory(folders["bert"])}, ids, reference, attention_mask=mask, progress=False
    )["m"]
    b = evaluate_embeddings(
        {"m": offloaded(folders["bert"])}, ids, reference, attention_mask=mask, progress=False
    )["m"]
    assert (a.cosine, a.hidden_mse) == (b.cosine, b.hidden_mse)
