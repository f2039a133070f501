"""A table scored by round-to-nearest, rescaled to the error GPTQ/SparseGPT leave."""

from __future__ import annotations

import pytest
import torch

from allocator.errors import UnsupportedError
from allocator.profile.api import profile
from allocator.profile.method_scaling import _hessian_error, kind_samples
from allocator.schema.unit import Unit


def test_samples_cover_every_kind_at_spread_depths() -> None:
    units = [
        Unit(name=f"model.layers.{i}.{kind}", shape=(8, 8), kind=kind, layer=i)
        for i in range(9)
        for kind in ("q_proj", "down_proj")
    ]
    units.append(Unit(name="model.layers.0.lonely", shape=(8, 8), kind="lonely", layer=0))
    chosen = kind_samples(units, 2)
    assert sorted(u.name for u in chosen if u.kind == "q_proj") == [
        "model.layers.2.q_proj", "model.layers.6.q_proj"]  # fmt: skip
    assert [u.name for u in chosen if u.kind == "lonely"] == ["model.layers.0.lonely"]


def test_hessian_error_is_the_trace_of_dw_h_dwt() -> None:
    dw = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    h = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    assert _hessian_error(dw, h) == pytest.approx(float(torch.trace(dw @ h @ dw.T)))


def test_rescaled_table_scales_every_unit_of_a_kind_by_its_factor(tiny_model, tiny_ids) -> None:
    grid = "bits=2,3 group=32,c sparsity=0,0.5"
    plain = profile(tiny_model, tiny_ids, "fisher", grid, progress=False)
    rescaled = profile(tiny_model, tiny_ids, "fisher", grid, progress=False, rescale_to="gptq")
    report = rescaled.provenance.settings["method_scaling"]
    assert rescaled.provenance.settings["rescale_to"] == "gptq"
    kinds = {u.name: u.kind for u in plain.units}
    checked = 0
    for name, row in plain.losses.items():
        factors = report["factors"][kinds[name]]
        assert set(factors) == {"b2-g32", "b2-gc", "b2-g32-s0.5", "b2-gc-s0.5", "b3-g32",
                                "b3-gc", "b3-g32-s0.5", "b3-gc-s0.5"}  # fmt: skip
        for key, loss in row.items():
            assert rescaled.losses[name][key] == pytest.approx(loss * round(factors[key], 4),
                                                               rel=1e-3)  # fmt: skip
            checked += 1
    assert checked == len(plain.units) * len(plain.options)
    # GPTQ leaves less error than RTN under the layer's own H, on every sampled kind
    assert all(f < 1.0 for per_kind in report["factors"].values() for f in per_kind.values())


def test_rtn_or_unknown_methods_do_not_rescale(tiny_model, tiny_ids) -> None:
    table = profile(tiny_model, tiny_ids, "fisher", "bits=3 group=32", progress=False,
                    rescale_to="rtn")  # fmt: skip
    assert "method_scaling" not in table.provenance.settings
    with pytest.raises(UnsupportedError, match="nonsense"):
        profile(tiny_model, tiny_ids, "fisher", "bits=3 group=32", progress=False,
                rescale_to="nonsense")  # fmt: skip
