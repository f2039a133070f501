"""``--format gguf``: the tiny model through gguf-py and llama.cpp itself (llama-cpp-python).

The writer and importance-matrix tests need only gguf-py; the quantize/evaluate tests skip
without ``llama_cpp`` (an optional extra that builds llama.cpp from source)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from allocator.deploy import gguf as dg
from allocator.models.units import find_units
from allocator.quant.apply import plan_for_options

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python not installed")


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    from allocator.models.loader import load_model

    return load_model(str(tiny_folder["model"]))


@pytest.fixture(scope="module")
def tiny_f32(tiny_folder, tmp_path_factory) -> Path:
    return dg.source_gguf(str(tiny_folder["model"]), tmp_path_factory.mktemp("gguf") / "f32.gguf")


def _windows(loaded, text: str, n: int, seq_len: int = 48, contiguous: bool = False):
    from allocator.models.windows import token_windows

    return token_windows(
        loaded.tokenizer, text, seq_len=seq_len, n_windows=n, seed=0, contiguous=contiguous
    )


def test_llama_writer_holds_the_models_weights(tiny, tiny_f32):
    names = [u.name for u in find_units(tiny.model)]
    weights = dg.unit_weights(tiny_f32, names, tiny.model.config)
    for name in names:
        np.testing.assert_array_equal(
            weights[name], tiny.model.get_submodule(name).weight.detach().numpy()
        )
    types = dg.tensor_types(tiny_f32)
    assert {t for t, _ in types.values()} == {"F32"}
    assert "output.weight" in types  # the tiny Llama does not tie its head


def test_gguf_to_f32_keeps_metadata_and_values(tiny_f32, tmp_path):
    import gguf

    copy = dg.gguf_to_f32(tiny_f32, tmp_path / "copy.gguf")
    a, b = gguf.GGUFReader(str(tiny_f32)), gguf.GGUFReader(str(copy))
    assert [f for f in a.fields if not f.startswith("GGUF.")] == [
        f for f in b.fields if not f.startswith("GGUF.")
    ]
    assert (
        a.fields["tokenizer.ggml.tokens"].contents() == b.fields["tokenizer.ggml.tokens"].contents()
    )
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert x.name == y.name
        np.testing.assert_array_equal(np.asarray(x.data), np.asarray(y.data))


def test_importance_matrix_is_the_mean_squared_input(tiny, tiny_folder):
    ids = _windows(tiny, tiny_folder["calib"].read_text(), n=3)
    imatrix = dg.importance_matrix(tiny.model, ids)
    assert "blk.0.attn_q.weight" in imatrix and "output.weight" in imatrix
    captured = []
    layer = tiny.model.get_submodule("model.layers.1.mlp.down_proj")
    handle = layer.register_forward_pre_hook(lambda _m, a: captured.append(a[0].reshape(-1, 128)))
    with torch.no_grad():
        for row in ids:
            tiny.model(input_ids=row[None])
    handle.remove()
    expected = torch.cat(captured).double().pow(2).mean(0).float().numpy()
    np.testing.assert_allclose(imatrix["blk.1.ffn_down.weight"], expected, rtol=1e-5)


def test_plan_types_come_from_the_llamacpp_exporter(tiny):
    units = find_units(tiny.model)
    keys = ["b4-g32", "b5-g32", "b8-g32", "b4-g32-sym", "b5-g32-sym"]
    plan = plan_for_options(tiny.model, {u.name: keys[i % 5] for i, u in enumerate(units)})
    overrides, common = dg.plan_tensor_types(plan, units)
    # 64- and 128-input rows are no multiple of 256: 32-block types, with a minimum per block
    # (Q4_1/Q5_1) for asymmetric options
    types = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}
    assert {t for _, t in overrides} == types
    assert all(p.startswith("^") and p.endswith("$") for p, _ in overrides)
    assert common in types


def test_without_llama_cpp_the_cli_says_how_to_install(tiny_folder, tmp_path, capsys):
    if HAS_LLAMA_CPP:
        pytest.skip("llama-cpp-python is installed")
    from allocator.cli.main import main
    from allocator.models.loader import load_model
    from allocator.quant.apply import uniform_plan
    from allocator.schema.io import save_plan

    model = load_model(str(tiny_folder["model"])).model
    save_plan(uniform_plan(model, "b4-g32"), tmp_path / "plan.json")
    args = ["apply", "--plan", str(tmp_path / "plan.json"), "--model", str(tiny_folder["model"])]
    assert main([*args, "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 4
    assert "pip install" in capsys.readouterr().err and "llama-cpp-python" in dg.INSTALL


@needs_llama_cpp
def test_llama_cpp_follows_the_plan_and_evaluates_like_allocator(tiny, tiny_folder, tmp_path):
    from allocator.evaluate import evaluate

    units = find_units(tiny.model)
    keys = ["b4-g32", "b5-g32-sym", "b8-g32", "b5-g32"]
    plan = plan_for_options(tiny.model, {u.name: keys[i % 4] for i, u in enumerate(units)})
    text = tiny_folder["calib"].read_text()
    result = dg.apply_gguf(
        str(tiny_folder["model"]), plan, tmp_path / "plan.gguf", text, windows=4, seq_len=48,
        progress=False,
    )  # fmt: skip
    assert result.unit_bytes == result.predicted_unit_bytes
    assert set(result.types) == {"Q4_1", "Q5_0", "Q5_1", "Q8_0"}
    assert result.imatrix_entries == len(units) + 1
    held = _windows(tiny, text, n=4, contiguous=True)
    f32 = dg.source_gguf(str(tiny_folder["model"]), tmp_path / "f32.gguf")
    ours = evaluate(tiny.model, held, progress=False).perplexity
    assert dg.perplexity(f32, held) == pytest.approx(ours, rel=1e-3)
    quantized = dg.perplexity(result.path, held)
    assert np.isfinite(quantized) and quantized == pytest.approx(ours, rel=0.2)


@needs_llama_cpp
def test_cli_writes_a_gguf(tiny_folder, tmp_path, capsys):
    from allocator.cli.main import main
    from allocator.models.loader import load_model
    from allocator.quant.apply import uniform_plan
    from allocator.schema.io import save_plan

    model = load_model(str(tiny_folder["model"])).model
    save_plan(uniform_plan(model, "b5-g32-sym"), tmp_path / "plan.json")
    args = ["apply", "--plan", str(tmp_path / "plan.json"), "--model", str(tiny_folder["model"])]
    args += ["--calib-text", str(tiny_folder["calib"]), "--calib-windows", "2", "--seq-len", "32"]
    assert main([*args, "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    text = capsys.readouterr().out
    assert "Q5_0 x28" in text and (tmp_path / "m.gguf").is_file()
    assert main([*args, "--format", "gguf", "--out", str(tmp_path / "m.bin")]) == 2
