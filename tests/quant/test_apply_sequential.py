"""apply_plan calibrates a block's layers stage by stage (GPTQ's true-sequential)."""

from __future__ import annotations

import pytest
import torch

import allocator.quant.apply as apply_module
from allocator.quant.apply import apply_plan, uniform_plan

from .conftest import make_tiny_llama

BLOCK = "model.layers.0"
LATER = ("self_attn.o_proj", "mlp.down_proj")  # read outputs of layers of the same block


def _hessians_seen(monkeypatch, ids: torch.Tensor, calibration: str) -> tuple[dict, object]:
    seen: dict[str, torch.Tensor] = {}
    real = apply_module.compress_unit

    def recording(model, name, option, hessian=None, *args, **kwargs):
        if hessian is not None:
            seen[name] = hessian.clone()
        return real(model, name, option, hessian, *args, **kwargs)

    model = make_tiny_llama()
    with monkeypatch.context() as patch:
        patch.setattr(apply_module, "compress_unit", recording)
        apply_plan(model, uniform_plan(model, "b2-g32"), ids, method="gptq", progress=False,
                   calibration=calibration)  # fmt: skip
    return seen, model


def _input_hessian(model, name: str, ids: torch.Tensor) -> torch.Tensor:
    rows = []
    handle = model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args: rows.append(args[0].reshape(-1, args[0].shape[-1]).double())
    )
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    x = torch.cat(rows)
    return (x.T @ x / x.shape[0]).float()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_later_layers_are_calibrated_on_compressed_earlier_layers(monkeypatch, token_ids):
    sequential, compressed = _hessians_seen(monkeypatch, token_ids, "sequential")
    parallel, _ = _hessians_seen(monkeypatch, token_ids, "plain")
    first = f"{BLOCK}.self_attn.q_proj"
    torch.testing.assert_close(sequential[first], parallel[first])  # same block input
    for later in LATER:
        name = f"{BLOCK}.{later}"
        # In the compressed model, block 0 still receives the embeddings, so the input of a later
        # layer is what the compressed earlier stages make of them: the Hessian GPTQ was given.
        expected = _input_hessian(compressed, name, token_ids)
        assert _relative(sequential[name], expected) < 1e-4
        assert _relative(parallel[name], expected) > 1e-2  # the uncompressed block's inputs


@pytest.mark.parametrize("calibration", ["plain", "sequential", "asymmetric"])
def test_every_calibration_compresses_every_unit(token_ids, calibration):
    model = make_tiny_llama()
    plan = uniform_plan(model, "b3-g32")
    apply_plan(model, plan, token_ids, method="gptq", progress=False, calibration=calibration)
    assert not [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and "layers" in n]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=token_ids).logits).all()


def test_asymmetric_calibration_lowers_the_output_error():
    """Aiming each layer at the original model's outputs (GPTAQ) leaves less error on held-out
    tokens than calibrating on the compressed model alone (2-bit, where the gap is large)."""
    calib = torch.randint(0, 96, (16, 32), generator=torch.Generator().manual_seed(1))
    held_out = torch.randint(0, 96, (16, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        clean = make_tiny_llama()(input_ids=held_out).logits
    errors = {}
    for calibration in ("sequential", "asymmetric"):
        model = make_tiny_llama()
        apply_plan(model, uniform_plan(model, "b2-g32"), calib, method="gptq", progress=False,
                   calibration=calibration)  # fmt: skip
        with torch.no_grad():
            errors[calibration] = float((model(input_ids=held_out).logits - clean).pow(2).mean())
    assert errors["asymmetric"] < 0.9 * errors["sequential"]


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_original_inputs_kept_in_one_pass_equal_the_per_stage_reruns(monkeypatch, family):
    """In memory the original block runs once per batch and its layers' inputs are kept; with
    hidden states in files it re-runs up to each stage instead. Both give the same model."""
    import allocator.quant.stage_hooks as hooks
    from tests.helpers import tiny_ids, tiny_model

    ids = tiny_ids(n=6, seq_len=24)
    weights, runs = {}, {}
    for path in ("kept", "rerun"):
        model = tiny_model(family)
        calls = []
        with monkeypatch.context() as patch:
            if path == "rerun":
                patch.setattr(hooks.OriginalInputs, "_capture", lambda self: None)
            real_init = hooks.OriginalInputs.__init__

            def counting(self, block, originals, inputs, _real=real_init, _calls=calls):
                block.register_forward_pre_hook(lambda *_: _calls.append(1))
                _real(self, block, originals, inputs)

            patch.setattr(hooks.OriginalInputs, "__init__", counting)
            apply_plan(model, uniform_plan(model, "b3-g32"), ids, method="gptq", progress=False,
                       calibration="asymmetric", batch_size=3)  # fmt: skip
        runs[path] = len(calls)
        weights[path] = {n: m.dequantized_weight() for n, m in model.named_modules()
                         if hasattr(m, "dequantized_weight")}  # fmt: skip
    assert weights["kept"].keys() == weights["rerun"].keys() and weights["kept"]
    for name, weight in weights["kept"].items():
        torch.testing.assert_close(weight, weights["rerun"][name], rtol=0, atol=0)
    n_blocks, n_batches = len(tiny_model(family).model.layers), 2
    assert runs["kept"] == n_blocks * n_batches  # each original block once per batch
    assert runs["rerun"] > 2 * runs["kept"]


def test_layers_fed_one_input_share_one_cross_product(token_ids):
    """q/k/v read the same X (original) and Y (compressed): X^T Y is formed once for the three."""
    from allocator.models.actstats import CrossStats
    from allocator.quant.stage_hooks import cross_hooks

    model = make_tiny_llama()
    attn = model.model.layers[0].self_attn
    linears = {n: getattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")}
    cross: dict = {}
    xs = [torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    ys = [x + 0.1 * torch.randn_like(x) for x in xs]
    for x, y in zip(xs, ys, strict=True):
        hooks = cross_hooks(linears, cross, dict.fromkeys(linears, x))
        with torch.no_grad():
            for layer in linears.values():
                layer(y)
        for handle in hooks:
            handle.remove()
    assert cross["q_proj"] is cross["k_proj"] is cross["v_proj"]
    expected = CrossStats(64)
    for x, y in zip(xs, ys, strict=True):
        expected.add_batch(x, y)
    torch.testing.assert_close(cross["q_proj"].xty, expected.xty)
    assert cross["q_proj"].n_tokens == 20


def test_unknown_calibration_is_refused(token_ids):
    from allocator.errors import InputError

    model = make_tiny_llama()
    with pytest.raises(InputError, match=r"calibration 'tru'.*plain, sequential, asymmetric"):
        apply_plan(model, uniform_plan(model, "b3-g32"), token_ids, calibration="tru")


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "gpt_neox"])
def test_asymmetric_calibration_on_moe_and_parallel_blocks(family):
    """Experts routed differently in the original and the compressed model keep their own
    weight as the target; parallel-residual blocks compress in their two stages."""
    from tests.helpers import tiny_ids, tiny_model

    model = tiny_model(family)
    ids = tiny_ids(n=6, seq_len=24)
    apply_plan(model, uniform_plan(model, "b3-g32"), ids, method="gptq", progress=False,
               calibration="asymmetric")  # fmt: skip
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_settings_offer_exactly_the_known_calibrations():
    """``allocator run --calibration`` and the service's apply jobs list the same choices."""
    import typing

    from allocator.pipeline import RunSettings
    from allocator.quant import CALIBRATIONS, DEFAULT_CALIBRATION
    from allocator.serve.models import ApplySettings

    for model in (RunSettings, ApplySettings):
        field = model.model_fields["calibration"]
        assert typing.get_args(field.annotation) == tuple(CALIBRATIONS)
        assert field.default == DEFAULT_CALIBRATION
