from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from allocator.profile.api import profile
from allocator.profile.estimators import DEFAULT_ESTIMATOR, ESTIMATORS, TASKS, load_all
from allocator.schema.constraints import Constraints
from allocator.schema.table import SensitivityTable
from tests.profile.conftest import GRID

load_all()
LOSS_ESTIMATORS = [n for n in ESTIMATORS.names() if ESTIMATORS.get(n).kind == "loss"]
SCORE_ESTIMATORS = [n for n in ESTIMATORS.names() if ESTIMATORS.get(n).kind == "score"]
README = Path(__file__).resolve().parents[2] / "README.md"


def test_registry_entries_carry_their_metadata():
    for name in ESTIMATORS.names():
        spec = ESTIMATORS.get(name)
        assert spec.description and spec.windows > 0 and spec.seq_len > 0, name
        assert spec.tasks and set(spec.tasks) <= set(TASKS), name
    assert (
        ESTIMATORS.get("fisher").needs_gradients and not ESTIMATORS.get("hessian").needs_gradients
    )
    assert ESTIMATORS.get("kl").tasks == ("causal_lm",)


def test_readme_names_exactly_the_registered_estimators():
    text = README.read_text()
    paragraph = text[text.index("**Estimators**") :].split("\n\n")[0]
    named = set(re.findall(r"`([a-z_]+)`", paragraph))
    assert named == set(ESTIMATORS.names()), (
        f"README advertises {sorted(named - set(ESTIMATORS.names()))} (not registered) and "
        f"omits {sorted(set(ESTIMATORS.names()) - named)}"
    )


def test_one_default_estimator_everywhere():
    import inspect

    from allocator.pipeline.settings import RunSettings
    from allocator.serve.models import ProfileSettings

    assert DEFAULT_ESTIMATOR in ESTIMATORS
    assert inspect.signature(profile).parameters["estimator"].default == DEFAULT_ESTIMATOR
    assert RunSettings().estimator == ProfileSettings().estimator == DEFAULT_ESTIMATOR


def test_estimators_command_lists_the_registry(capsys):
    from allocator.cli.main import main

    assert main(["estimators", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ESTIMATORS.names()
    assert [r["name"] for r in rows if r["default"]] == [DEFAULT_ESTIMATOR]


@pytest.mark.parametrize("name", LOSS_ESTIMATORS + SCORE_ESTIMATORS)
def test_estimator_table_is_complete_monotone_and_solvable(name, tiny_model, tiny_ids, tmp_path):
    settings = {"probes": 2} if name in ("hutchinson", "zo") else {}
    table = profile(
        tiny_model, tiny_ids, name, GRID, progress=False, journal=tmp_path / "j.jsonl",
        settings=settings,
    )  # fmt: skip
    assert isinstance(table, SensitivityTable)
    assert len(table.units) == 14
    keys = [o.key for o in table.options]
    for unit in table.units:
        row = table.losses[unit.name]
        assert list(row) == keys
        assert all(v >= 0 for v in row.values())
        assert row["b2-g32"] >= row["b8-g32"]
    total_b2 = sum(table.losses[u.name]["b2-g32"] for u in table.units)
    total_b8 = sum(table.losses[u.name]["b8-g32"] for u in table.units)
    assert total_b2 > 10 * total_b8
    prov = table.provenance
    assert prov.estimator == name and prov.model_hash and prov.data_hash
    assert prov.settings["windows"] == tiny_ids.shape[0]
    from allocator.solve.api import solve

    plan = solve(table, Constraints.simple(4.0))
    assert len(plan.assignments) == 14


def test_hessian_equals_mean_squared_output_error(tiny_model, tiny_ids):
    from allocator.quant.compress import compress_weight
    from allocator.schema.option import Option

    name = "model.layers.1.mlp.down_proj"
    table = profile(tiny_model, tiny_ids, "hessian", GRID, progress=False)
    module = tiny_model.get_submodule(name)
    inputs = []
    handle = module.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    with torch.no_grad():
        tiny_model(input_ids=tiny_ids)
    handle.remove()
    x = torch.cat([i.reshape(-1, i.shape[-1]) for i in inputs]).double()
    dw = (compress_weight(module.weight, Option.parse("b3-g32")) - module.weight).double()
    expected = float((x @ dw.T).square().sum(dim=1).mean())
    assert table.losses[name]["b3-g32"] == pytest.approx(expected, rel=1e-3)


def test_kl_matches_a_full_forward_with_the_unit_compressed(tiny_model, tiny_ids):
    from allocator.quant.compress import compress_weight
    from allocator.schema.option import Option

    name = "model.layers.0.self_attn.v_proj"
    table = profile(tiny_model, tiny_ids, "kl", GRID, progress=False)
    module = tiny_model.get_submodule(name)
    with torch.no_grad():
        clean = torch.log_softmax(tiny_model(input_ids=tiny_ids).logits, -1)
        original = module.weight.data
        module.weight.data = compress_weight(original, Option.parse("b2-g32"))
        noisy = torch.log_softmax(tiny_model(input_ids=tiny_ids).logits, -1)
        module.weight.data = original
    expected = float((clean.exp() * (clean - noisy)).sum(-1).mean())
    assert table.losses[name]["b2-g32"] == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_sparse_options_are_scored(tiny_model, tiny_ids):
    grid = "bits=4 group=32 sparsity=0,0.5,2:4"
    table = profile(tiny_model, tiny_ids, "hessian", grid, progress=False)
    for unit in table.units:
        row = table.losses[unit.name]
        assert row["b4-g32-s0.5"] > row["b4-g32"]
        assert row["b4-g32-2:4"] > row["b4-g32"]


def test_gptq_options_beat_rtn_on_the_hessian_proxy(tiny_model, tiny_ids):
    table = profile(
        tiny_model, tiny_ids, "hessian", "bits=3 group=32 method=rtn,gptq", progress=False
    )
    rtn = sum(table.losses[u.name]["b3-g32"] for u in table.units)
    gptq = sum(table.losses[u.name]["b3-g32@gptq"] for u in table.units)
    assert gptq < rtn


def test_kfac_weights_each_rows_output_error_by_its_gradient_energy(tiny_model, tiny_ids):
    """kfac = 1/2 sum_r G_r [dW H dW^T]_rr with G_r from autograd on the unit's output."""
    from allocator.quant.compress import compress_weight
    from allocator.schema.option import Option

    name = "model.layers.0.self_attn.v_proj"
    table = profile(tiny_model, tiny_ids, "kfac", GRID, progress=False)
    module = tiny_model.get_submodule(name)
    inputs, energy = [], torch.zeros(module.out_features, dtype=torch.float64)

    def on_grad(grad):
        energy.add_(grad.reshape(-1, grad.shape[-1]).double().square().sum(0))

    def hook(_m, args, out):
        inputs.append(args[0].detach())
        out.register_hook(on_grad)

    handle = module.register_forward_hook(hook)
    for ids in tiny_ids:
        embeds = tiny_model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
        tiny_model(inputs_embeds=embeds, labels=ids[None]).loss.backward()
    handle.remove()
    tiny_model.zero_grad(set_to_none=True)
    x = torch.cat([i.reshape(-1, i.shape[-1]) for i in inputs]).double()
    dw = (compress_weight(module.weight, Option.parse("b3-g32")) - module.weight).double()
    per_row = (x @ dw.T).square().mean(dim=0)  # [dW H dW^T]_rr with H = X^T X / n
    expected = 0.5 * float((energy / len(tiny_ids) * per_row).sum())
    assert table.losses[name]["b3-g32"] == pytest.approx(expected, rel=1e-3)


def test_gptq_options_beat_rtn_on_kfac(tiny_model, tiny_ids):
    table = profile(tiny_model, tiny_ids, "kfac", "bits=3 group=32 method=rtn,gptq", progress=False)
    rtn = sum(table.losses[u.name]["b3-g32"] for u in table.units)
    gptq = sum(table.losses[u.name]["b3-g32@gptq"] for u in table.units)
    assert gptq < rtn


def test_hessian_diag_accepts_an_imatrix(tiny_model, tiny_ids):
    from allocator.models.units import find_units

    units = find_units(tiny_model)
    imatrix = {u.name: [1.0] * u.in_features for u in units}
    table = profile(tiny_model, tiny_ids, "hessian_diag", GRID, progress=False,
                    settings={"imatrix": imatrix})  # fmt: skip
    name = units[0].name
    weight = tiny_model.get_submodule(name).weight
    from allocator.quant.compress import compress_weight

    dw = compress_weight(weight, table.options[0]) - weight
    assert table.losses[name]["b2-g32"] == pytest.approx(float(dw.square().sum()), rel=1e-4)


@pytest.mark.parametrize("proxy", ["hessian", "hessian_diag"])
def test_calibrated_proxy_passes_through_measured_kl(proxy, tiny_model, tiny_ids):
    kl = profile(tiny_model, tiny_ids, "kl", GRID, progress=False)
    settings = {"proxy": proxy, "kl_windows": 6, "kl_seq_len": 24}
    calibrated = profile(tiny_model, tiny_ids, "hessian_kl", GRID, progress=False,
                         settings=settings)  # fmt: skip
    for unit in calibrated.units:
        row, measured = calibrated.losses[unit.name], kl.losses[unit.name]
        for key in ("b2-g32", "b3-g32"):  # the default references: the two lowest bit widths
            assert row[key] == pytest.approx(max(measured[key], 1e-9), rel=1e-4)
        assert row["b2-g32"] >= row["b3-g32"] >= row["b4-g32"] >= row["b8-g32"]
