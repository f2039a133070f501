"""``--format compressed-tensors``: folders transformers loads (CPU, compressed-tensors
decompression) with logits equal to allocator's model, checked by the real libraries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("compressed_tensors")

from allocator.deploy.compressed_tensors import (
    check_plan,
    read_folder,
    save_compressed_tensors,
    verify_folder,
)
from allocator.errors import UnsupportedError
from allocator.models.units import find_units
from allocator.quant.apply import apply_plan, plan_for_options

# 4-bit g32/g64, 8-bit per channel, 3-bit (g64 spans a 64-input layer: written per channel),
# fp16, and a 2:4 SparseGPT unit, all symmetric (transformers loads those)
MIXED = [
    "b4-g32-sym@gptq",
    "b8-gc-sym@gptq",
    "b3-g64-sym@gptq",
    "fp16",
    "b4-g32-sym-2:4@sparsegpt",
    "b3-g32-sym@gptq",
    "b4-g64-sym@gptq",
    "b8-g32-sym",
]


def _load(folder: Path):
    from allocator.models.loader import load_model

    return load_model(str(folder))


def _plan(model, keys: list[str]):
    units = [u.name for u in find_units(model)]
    return plan_for_options(model, {n: keys[i % len(keys)] for i, n in enumerate(units)})


def _windows(loaded, text: str, n: int = 4, seq_len: int = 32) -> torch.Tensor:
    from allocator.models.windows import token_windows

    return token_windows(loaded.tokenizer, text, seq_len=seq_len, n_windows=n, seed=0)


def _hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def mixed(tiny_folder, tmp_path_factory):
    """The tiny model compressed by the mixed plan (GPTQ/SparseGPT), and its folder."""
    loaded = _load(tiny_folder["model"])
    plan = _plan(loaded.model, MIXED)
    text = tiny_folder["calib"].read_text()
    apply_plan(loaded.model, plan, _windows(loaded, text, n=8), progress=False)
    out = tmp_path_factory.mktemp("ct") / "folder"
    result = save_compressed_tensors(loaded.model, plan, out, tokenizer=loaded.tokenizer)
    return loaded, plan, out, result


def test_transformers_loads_mixed_widths_with_equal_logits(mixed, tiny_folder):
    loaded, _, out, _ = mixed
    ids = _windows(loaded, tiny_folder["calib"].read_text(), n=3, seq_len=40)
    with torch.no_grad():
        ours = loaded.model(input_ids=ids).logits
    theirs = _hf_logits(out, ids)
    assert theirs.shape == ours.shape
    assert float((theirs - ours).abs().max()) <= 1e-5 * max(1.0, float(ours.abs().max()))


def test_library_validates_and_decompresses_every_unit_exactly(mixed):
    loaded, _, out, _ = mixed
    assert verify_folder(out, loaded.model) == 0.0


def test_config_groups_cover_each_scheme_once(mixed):
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import match_name

    _, plan, out, result = mixed
    data = json.loads((out / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(data)
    assert config.format == "pack-quantized" and config.quantization_status == "compressed"
    schemes = {
        (g.weights.num_bits, g.weights.strategy, g.weights.group_size, g.weights.symmetric)
        for g in config.config_groups.values()
    }
    assert schemes == {
        (4, "group", 32, True),
        (8, "channel", None, True),
        (3, "channel", None, True),
        (3, "group", 32, True),
        (4, "group", 64, True),
        (4, "channel", None, True),
        (8, "group", 32, True),
    }
    for a in plan.assignments:
        hits = [
            name
            for name, group in config.config_groups.items()
            if any(match_name(a.unit, t) for t in group.targets)
        ]
        if a.option.is_fp16:
            assert hits == [] and a.unit in config.ignore
        else:
            assert len(hits) == 1, a.unit
    assert "lm_head" in config.ignore
    assert result.fp16_units == sum(a.option.is_fp16 for a in plan.assignments)
    assert any("stored dense" in n for n in result.notes)  # the 2:4 units


def test_folder_has_tokenizer_and_pruned_weights_stay_zero(mixed):
    from transformers import AutoTokenizer

    loaded, plan, out, _ = mixed
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "the sister said that her mother had a little house"
    assert tokenizer(text).input_ids == loaded.tokenizer(text).input_ids
    _, tensors = read_folder(out)
    sparse = next(a.unit for a in plan.assignments if a.option.sparsity_pattern == "nm")
    module = loaded.model.get_submodule(sparse)
    weight = module.dequantized_weight()
    assert float((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1).max()) <= 2
    assert f"{sparse}.weight_packed" in tensors


def test_asymmetric_units_use_the_library_layout(tiny_folder, tmp_path):
    """Asymmetric units carry packed zero points (what vLLM reads); the library decompresses
    them exactly. transformers 5 + compressed-tensors 0.20.1 cannot load them: refused with
    --target transformers, naming the unit, the option and the formats that could."""
    loaded = _load(tiny_folder["model"])
    plan = _plan(loaded.model, ["b4-g32", "b8-gc-sym", "b3-g64", "b2-g32"])
    apply_plan(loaded.model, plan, progress=False)
    out = tmp_path / "asym"
    save_compressed_tensors(loaded.model, plan, out)
    assert verify_folder(out, loaded.model) == 0.0
    from compressed_tensors.utils.match import match_name

    _, tensors = read_folder(out)
    asym = next(a.unit for a in plan.assignments if a.option.key == "b4-g32")
    assert tensors[f"{asym}.weight_zero_point"].dtype == torch.int32
    assert match_name(asym, "re:^" + asym.replace(".", r"\.") + "$")
    with pytest.raises(UnsupportedError, match=r"asymmetric.*formats that can hold it: allocator"):
        save_compressed_tensors(loaded.model, plan, tmp_path / "refused", target="transformers")
    assert not (tmp_path / "refused").exists()


def test_refusals_name_unit_option_and_formats(tiny_folder):
    loaded = _load(tiny_folder["model"])
    model = loaded.model
    shapes = {u.name: u.shape for u in find_units(model)}
    ragged = _plan(model, ["b4-g48"])  # 48 does not divide the 64 inputs
    with pytest.raises(UnsupportedError) as info:
        check_plan(ragged, shapes)
    message = str(info.value)
    assert "model.layers.0.self_attn.q_proj: b4-g48: group size 48 does not divide" in message
    assert "formats that can hold it: allocator, gguf" in message
    three_bit = _plan(model, ["b3-g32-sym"])
    check_plan(three_bit, shapes)  # compressed-tensors holds 3-bit ...
    with pytest.raises(
        UnsupportedError, match=r"(?s)target .vllm.*q_proj: b3-g32-sym: bits=3 not in"
    ):
        check_plan(three_bit, shapes, target="vllm")  # ... vLLM does not serve it


def test_gpt2_conv1d_layout_is_refused():
    from allocator.deploy.compressed_tensors import check_model
    from tests.helpers import tiny_model

    model = tiny_model("gpt2")
    plan = _plan(model, ["b4-g32-sym"])
    apply_plan(model, plan, progress=False)
    with pytest.raises(UnsupportedError, match=r"Conv1D.*formats that can hold it: allocator"):
        check_model(model, plan)


def test_cli_writes_verifies_and_converts_a_packed_checkpoint(tiny_folder, tmp_path, capsys):
    from allocator.cli.main import main
    from allocator.quant.checkpoint import load_checkpoint
    from allocator.schema.io import save_plan

    loaded = _load(tiny_folder["model"])
    keys = ["b4-g32-sym@gptq", "b8-gc-sym", "fp16"]  # one per block: vLLM fuses q/k/v, gate/up
    units = find_units(loaded.model)
    plan = plan_for_options(loaded.model, {u.name: keys[u.layer % 3] for u in units})
    save_plan(plan, tmp_path / "plan.json")
    common = ["--plan", str(tmp_path / "plan.json"), "--calib-text", str(tiny_folder["calib"])]
    common += ["--calib-windows", "4", "--seq-len", "32"]
    ckpt = tmp_path / "ckpt"
    model_arg = ["--model", str(tiny_folder["model"])]
    assert main(["apply", *common, *model_arg, "--out", str(ckpt), "--quiet"]) == 0
    folder = tmp_path / "ct"
    args = ["apply", *common, "--model", str(ckpt), "--format", "compressed-tensors"]
    assert main([*args, "--out", str(folder), "--target", "vllm"]) == 0
    text = capsys.readouterr().out
    assert "decompresses to allocator's weights exactly" in text and "config groups       2" in text
    packed = load_checkpoint(ckpt)
    ids = _windows(packed, tiny_folder["calib"].read_text(), n=2)
    with torch.no_grad():
        ours = packed.model(input_ids=ids).logits
    assert float((_hf_logits(folder, ids) - ours).abs().max()) <= 1e-5
    # a checkpoint is converted only with its own plan; --target needs the format
    other = _plan(loaded.model, ["b8-gc-sym"])
    save_plan(other, tmp_path / "other.json")
    bad = ["apply", "--plan", str(tmp_path / "other.json"), "--model", str(ckpt)]
    assert main([*bad, "--format", "compressed-tensors", "--out", str(tmp_path / "x")]) == 2
    assert "made by another plan" in capsys.readouterr().err
    plain = ["apply", *common, *model_arg, "--out", str(tmp_path / "y")]
    assert main([*plain, "--target", "vllm"]) == 2
    assert "only --format compressed-tensors takes a target" in capsys.readouterr().err


@pytest.mark.model
def test_smollm2_perplexity_through_transformers_equals_allocator_eval(tmp_path):
    """SmolLM2-135M, a mixed symmetric RTN plan (4-bit g64/g128, 8-bit, 3-bit): perplexity
    of the folder loaded by transformers equals allocator's on the same held-out windows."""
    from transformers import AutoModelForCausalLM

    from allocator.evaluate import evaluate
    from allocator.models import corpus
    from allocator.models.loader import load_model
    from allocator.models.windows import token_windows

    loaded = load_model("smollm2")
    model = loaded.model
    choice = {}
    for i, unit in enumerate(find_units(model)):
        if unit.name.endswith("down_proj"):
            choice[unit.name] = "b4-g128-sym"
        else:
            choice[unit.name] = ["b4-g64-sym", "b8-gc-sym", "b3-g64-sym"][i % 3]
    plan = plan_for_options(model, choice)
    apply_plan(model, plan, progress=False)
    out = tmp_path / "smollm2-ct"
    save_compressed_tensors(model, plan, out, tokenizer=loaded.tokenizer, target=None)
    assert verify_folder(out, model) == 0.0
    ids = token_windows(
        loaded.tokenizer, corpus.default_evaluation_text(), seq_len=256, n_windows=4,
        contiguous=True,
    )  # fmt: skip
    ours = evaluate(model, ids, progress=False).perplexity
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    theirs = evaluate(hf, ids, progress=False).perplexity
    assert theirs == pytest.approx(ours, rel=1e-4)
