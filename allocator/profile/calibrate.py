"""Calibrating a proxy curve against a few measured end-to-end points (pure functions).

For one unit, ``proxy[option]`` (e.g. tr(dW H dW^T)) ranks options well but is not on the scale
of the end-to-end loss across layers. Given measured losses (e.g. KL) at one or two reference
options, the calibrated curve passes exactly through the measured points:

- between two measured points: interpolation in log-log space (a power law through both);
- below the smallest measured proxy (better options): proportional to the proxy (slope 1 in
  log-log, the small-perturbation regime where the loss is quadratic in dW like the proxy);
- above the largest: the last segment's power law (slope clamped to [1, 3]), or proportional
  when only one point was measured.

Measured values are made monotone in the proxy (running maximum) and floored at ``floor`` so
noise cannot reverse the order or produce negative losses.
"""

from __future__ import annotations

import math


def calibrate_row(
    proxy: dict[str, float], measured: dict[str, float], *, floor: float = 1e-9
) -> dict[str, float]:
    """Map every option's proxy value onto the measured scale (see module docstring)."""
    points = sorted((proxy[k], max(v, 0.0)) for k, v in measured.items() if proxy.get(k, 0) > 0)
    if not points:
        return {k: 0.0 for k in proxy}
    xs: list[float] = []
    ys: list[float] = []
    running = floor
    for x, y in points:
        running = max(running, y)
        if xs and x == xs[-1]:
            ys[-1] = running
            continue
        xs.append(x)
        ys.append(running)
    return {k: _curve(x, xs, ys) for k, x in proxy.items()}


def _curve(x: float, xs: list[float], ys: list[float]) -> float:
    if x <= 0:
        return 0.0
    if x <= xs[0]:
        return ys[0] * x / xs[0]
    if x >= xs[-1]:
        if len(xs) == 1:
            return ys[-1] * x / xs[-1]
        slope = _slope(xs[-2], ys[-2], xs[-1], ys[-1])
        return ys[-1] * (x / xs[-1]) ** min(max(slope, 1.0), 3.0)
    for i in range(1, len(xs)):
        if x <= xs[i]:
            slope = _slope(xs[i - 1], ys[i - 1], xs[i], ys[i])
            return ys[i - 1] * (x / xs[i - 1]) ** slope
    return ys[-1]  # unreachable


def _slope(x0: float, y0: float, x1: float, y1: float) -> float:
    return math.log(y1 / y0) / math.log(x1 / x0)
