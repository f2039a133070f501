from __future__ import annotations

import pytest

from allocator.profile.calibrate import calibrate_row
from allocator.profile.combine import combine_scores


def test_calibrated_curve_passes_through_measured_points_and_is_monotone():
    proxy = {"b2": 100.0, "b3": 20.0, "b4": 4.0, "b5": 1.0}
    measured = {"b2": 0.9, "b3": 0.05}
    row = calibrate_row(proxy, measured)
    assert row["b2"] == pytest.approx(0.9)
    assert row["b3"] == pytest.approx(0.05)
    assert row["b4"] == pytest.approx(0.05 * 4 / 20)  # slope 1 below the lowest point
    assert row["b2"] > row["b3"] > row["b4"] > row["b5"] > 0


def test_calibration_with_one_point_is_a_rescale_and_clips_noise():
    row = calibrate_row({"a": 10.0, "b": 1.0}, {"a": 2.0})
    assert row == pytest.approx({"a": 2.0, "b": 0.2})
    noisy = calibrate_row({"a": 10.0, "b": 1.0}, {"a": -1e-5, "b": 1e-3})
    assert noisy["a"] >= noisy["b"] >= 0  # negative noise clipped, order kept


def test_combine_scales_relative_error_by_normalized_score():
    losses = combine_scores({"u": 3.0, "v": 1.0}, {"u": {"b2": 0.1}, "v": {"b2": 0.1}})
    assert losses["u"]["b2"] == pytest.approx(0.15)
    assert losses["v"]["b2"] == pytest.approx(0.05)
