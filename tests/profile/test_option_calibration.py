"""Per-option correction of a table by measured single-unit KL on sample units."""

from __future__ import annotations

import pytest

from allocator.profile.api import profile
from allocator.profile.option_calibration import option_factors, sample_units
from allocator.schema.unit import Unit


def test_factors_are_geometric_means_of_ratios() -> None:
    predicted = {"a": {"x": 1.0, "y": 2.0}, "b": {"x": 4.0, "y": 0.0}}
    measured = {"a": {"x": 2.0, "y": 2.0}, "b": {"x": 32.0, "y": 5.0}}
    factors = option_factors(predicted, measured)
    assert factors["x"] == pytest.approx(4.0)  # sqrt(2 * 8)
    assert factors["y"] == pytest.approx(1.0)  # b's zero prediction carries no ratio


def test_sample_spreads_over_kinds_and_depth() -> None:
    units = [
        Unit(name=f"model.layers.{i}.{kind}", shape=(8, 8), kind=kind, layer=i)
        for i in range(10)
        for kind in ("q_proj", "down_proj")
    ]
    chosen = sample_units(units, 4)
    assert len({u.name for u in chosen}) == 4
    assert {u.kind for u in chosen} == {"q_proj", "down_proj"}
    assert len({u.layer for u in chosen}) >= 3


def test_calibrated_table_keeps_measured_rows(tiny_model, tiny_ids, tmp_path) -> None:
    from allocator.profile.estimators.kl import KLMeter  # noqa: F401  (the meter it uses)

    grid = "bits=2,3,4 group=32"
    plain = profile(tiny_model, tiny_ids, "hessian", grid, progress=False)
    journal = tmp_path / "j.jsonl"
    corrected = profile(
        tiny_model, tiny_ids, "hessian", grid, progress=False, calibrate_options=True,
        journal=journal, resume=True,
        settings={"calibration_units": 2, "calibration_windows": 2, "calibration_seq_len": 16},
    )  # fmt: skip
    report = corrected.provenance.settings["option_calibration"]
    assert len(report["units"]) == 2 and set(report["factors"]) <= {o.key for o in plain.options}
    other = next(u.name for u in plain.units if u.name not in report["units"])
    for key, factor in report["factors"].items():
        assert corrected.losses[other][key] == pytest.approx(plain.losses[other][key] * factor)
    assert (tmp_path / "j.jsonl.calibration").is_file()
    again = profile(
        tiny_model, tiny_ids, "hessian", grid, progress=False, calibrate_options=True,
        journal=journal, resume=True,
        settings={"calibration_units": 2, "calibration_windows": 2, "calibration_seq_len": 16},
    )  # fmt: skip
    assert again.losses == corrected.losses


def test_group_sizes_share_one_measured_option_per_family() -> None:
    from allocator.profile.option_calibration import representatives
    from allocator.profile.options import parse_options

    grid = parse_options("bits=2,4 group=64,128,256,c sparsity=0,0.5")
    chosen = representatives(grid)
    probes = {o.key for o in chosen.values()}
    assert len(probes) == 8  # (2 bits) x (2 sparsities) x (grouped at g128, per-channel)
    assert all(o.group_size in (128, None) for o in chosen.values())
    assert chosen["b4-g64"].key == "b4-g128"
