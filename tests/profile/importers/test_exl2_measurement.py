"""ExLlamaV2 measurement.json -> SensitivityTable (joint sublayer units, 1 - accuracy, EXL2 bits)."""

from __future__ import annotations

import json
import math

import pytest

from allocator.errors import InputError
from allocator.profile.importers import read_exl2_measurement
from allocator.schema import Unit

HIDDEN, INTER, KV = 576, 1536, 192
SHAPES = {  # (out, in) as nn.Linear
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTER, HIDDEN),
    "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}
UNITS = [
    Unit(name=f"model.layers.{i}.{s}", shape=shape) for i in range(2) for s, shape in SHAPES.items()
]


def qparams(group_size, bits, bits_prop, scale_bits=4):
    """ExLlamaV2 QParams.get_dict(); JSON turns the per-width group dict keys into strings."""
    if not isinstance(group_size, list):
        group_size = [group_size] * len(bits)
    return {
        "group_size": {b: g for g, b in zip(group_size, bits, strict=True)},
        "bits": bits,
        "bits_prop": bits_prop,
        "scale_bits": scale_bits,
    }


def exl2_total_bits(qp, out_features, in_features):
    """ExLlamaV2's QParams.total_bits on weight.T (rows = in_features, columns = out_features)."""
    rows, columns = in_features, out_features
    groups, remaining, per_width = 0, rows, []
    for b, p in zip(qp["bits"], qp["bits_prop"], strict=True):
        g = math.ceil(min(rows * p, remaining) / qp["group_size"][b])
        groups += g
        remaining -= g * qp["group_size"][b]
        per_width.append(g)
    total, left = 0, rows
    for g, b in zip(per_width, qp["bits"], strict=True):
        r = min(qp["group_size"][b] * g, left)
        left -= r
        total += r * columns * b
    return total + groups * 16 + groups * 32 + groups * columns * qp["scale_bits"] + rows * 32


def candidate(accuracy, sub, params):
    entry = {"accuracy": accuracy, "total_bits": 0}
    for proj, qp in params.items():
        out_f, in_f = SHAPES[f"{sub}.{proj}"]
        entry["total_bits"] += exl2_total_bits(qp, out_f, in_f)
        entry[proj] = qp
    return entry


ATTN = [
    {p: qparams(64, [3, 2], [0.05, 0.95]) for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
    {p: qparams(128, [4, 3], [0.1, 0.9]) for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
    {p: qparams(32, [6], [1]) for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
]
MLP = [
    {
        "gate_proj": qparams(64, [3, 2], [0.05, 0.95]),
        "up_proj": qparams(64, [3, 2], [0.05, 0.95]),
        "down_proj": qparams([32, 64, 64], [6, 3, 2], [0.05, 0.2, 0.75]),
    },
    {p: qparams(128, [8], [1]) for p in ("gate_proj", "up_proj", "down_proj")},
]


@pytest.fixture
def measurement_file(tmp_path):
    measurement = {"model.embed_tokens.embedding": None}
    for i in range(2):
        key = f"model.layers.{i}.self_attn"
        measurement[key] = [
            candidate(0.90 + 0.03 * j + 0.001 * i, "self_attn", c) for j, c in enumerate(ATTN)
        ]
        key = f"model.layers.{i}.mlp"
        measurement[key] = [candidate(0.93 + 0.06 * j, "mlp", c) for j, c in enumerate(MLP)]
    measurement["model.norm.norm"] = None
    measurement["lm_head.linear"] = None
    path = tmp_path / "measurement.json"
    path.write_text(json.dumps({"measurement": measurement, "last_module_idx": 7}, indent=4))
    return path, measurement


def test_reads_sublayers_losses_and_bits(measurement_file):
    path, measurement = measurement_file
    table = read_exl2_measurement(path, UNITS)
    names = [u.name for u in table.units]
    assert names == [f"model.layers.{i}.{k}" for i in range(2) for k in ("self_attn", "mlp")]
    attn = table.unit("model.layers.0.self_attn")
    assert attn.numel == sum(h * w for s, (h, w) in SHAPES.items() if s.startswith("self_attn"))
    assert attn.kind == "self_attn" and attn.layer == 0
    row = table.losses["model.layers.1.self_attn"]
    assert sorted(row.values()) == pytest.approx(
        sorted(1 - c["accuracy"] for c in measurement["model.layers.1.self_attn"])
    )
    bits = table.resources["exl2_bits"]["model.layers.0.mlp"]
    assert sorted(bits.values()) == sorted(
        c["total_bits"] for c in measurement["model.layers.0.mlp"]
    )
    keys = set(table.losses["model.layers.0.self_attn"])
    assert keys == {"b2-g64-sym@exl2a0", "b3-g128-sym@exl2a1", "b6-g32-sym@exl2a2"}
    # down_proj [6,3,2] at [.05,.2,.75] with gate/up [3,2]: mean 2.15 bits -> b2, g64 dominant
    assert set(table.losses["model.layers.0.mlp"]) == {"b2-g64-sym@exl2m0", "b8-g128-sym@exl2m1"}


def test_cost_from_exl2_is_close_to_size_model(measurement_file):
    path, _ = measurement_file
    table = read_exl2_measurement(path, UNITS)
    from allocator.schema.constraints import SizeModel

    size = SizeModel(zero_bits=0)
    for unit in table.units:
        for key, exl2 in table.resources["exl2_bits"][unit.name].items():
            ours = size.cost_bits(table.option(key), unit)
            assert 0.75 < ours / exl2 < 1.25, (unit.name, key, ours, exl2)


def test_errors(tmp_path, measurement_file):
    path, _ = measurement_file
    with pytest.raises(InputError, match=r"no unit model\.layers\.1\.self_attn\.q_proj"):
        read_exl2_measurement(path, UNITS[:7])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(InputError, match="measurement"):
        read_exl2_measurement(bad, UNITS)
