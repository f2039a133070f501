"""The bundled example: a synthetic table shaped like SmolLM2-135M (210 units) and constraints.

The losses are synthetic, not measured: ``loss(unit, b, g) = c_unit * 4^-b * (g / 32)^0.25``,
with 2-bit options 3x worse than the curve (RTN at 2 bits is close to catastrophic), fp16 free,
and ``c_unit`` heavy-tailed across units: log-normal noise times a per-projection factor
(v/down more sensitive) and a per-layer factor (first and last blocks more sensitive). It
exists so the solver runs out of the box; real tables come from ``allocator profile``.
Regenerate the files with ``python -m allocator.data.example``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from allocator.schema.constraints import Constraints
from allocator.schema.io import dump_model, load_constraints, load_table
from allocator.schema.option import Option
from allocator.schema.table import Provenance, SensitivityTable
from allocator.schema.unit import Unit

DATA_DIR = Path(__file__).parent
TABLE_PATH = DATA_DIR / "example_table.json"
CONSTRAINTS_PATH = DATA_DIR / "example_constraints.yaml"

HIDDEN, INTERMEDIATE, KV, LAYERS = 576, 1536, 192, 30
SHAPES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV, HIDDEN),
    "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}
KIND_FACTOR = {
    "q_proj": 0.6,
    "k_proj": 0.5,
    "v_proj": 2.0,
    "o_proj": 1.0,
    "gate_proj": 0.8,
    "up_proj": 0.9,
    "down_proj": 2.5,
}
BITS, GROUPS = (2, 3, 4, 5, 6, 8), (32, 64, 128)


def example_units() -> list[Unit]:
    """The 210 block linear layers of SmolLM2-135M with their shapes and fused-group keys."""
    units = []
    for layer in range(LAYERS):
        for suffix, shape in SHAPES.items():
            name = f"model.layers.{layer}.{suffix}"
            kind = suffix.split(".")[-1]
            tie = None
            if kind in ("q_proj", "k_proj", "v_proj"):
                tie = f"model.layers.{layer}.self_attn.qkv"
            elif kind in ("gate_proj", "up_proj"):
                tie = f"model.layers.{layer}.mlp.gate_up"
            units.append(Unit(name=name, shape=shape, kind=kind, tie=tie, layer=layer))
    return units


def example_options() -> list[Option]:
    options = [Option(bits=b, group_size=g) for b in BITS for g in GROUPS]
    return [*options, Option(bits=16, group_size=None)]


def example_table(seed: int = 0) -> SensitivityTable:
    """The synthetic table (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    units, options = example_units(), example_options()
    losses: dict[str, dict[str, float]] = {}
    for unit in units:
        assert unit.layer is not None
        depth = unit.layer / (LAYERS - 1)
        layer_factor = 1.0 + 3.0 * np.exp(-unit.layer) + 1.5 * depth**4
        scale = 0.1 * KIND_FACTOR[unit.kind] * layer_factor * rng.lognormal(0.0, 0.8)
        row = {}
        for option in options:
            if option.is_fp16:
                row[option.key] = 0.0
                continue
            assert option.group_size is not None
            value = scale * 4.0 ** (-option.bits) * (option.group_size / 32) ** 0.25
            row[option.key] = float(f"{value * (3.0 if option.bits == 2 else 1.0):.6g}")
        losses[unit.name] = row
    provenance = Provenance(
        estimator="synthetic",
        model="SmolLM2-135M-Instruct (shapes only)",
        settings={"formula": "c * 4^-b * (g/32)^0.25, 2-bit x3, lognormal(0, 0.8)", "seed": seed},
    )
    return SensitivityTable(units=units, options=options, losses=losses, provenance=provenance)


def load_example() -> tuple[SensitivityTable, Constraints]:
    """The bundled table and constraints."""
    return load_table(TABLE_PATH), load_constraints(CONSTRAINTS_PATH)


if __name__ == "__main__":
    dump_model(example_table(), TABLE_PATH)
    print(f"wrote {TABLE_PATH}")
