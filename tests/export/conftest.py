"""Fixtures: SmolLM2's real module names (meta-device model) and realistic plans per target."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from allocator.schema import Assignment, Option, Plan, Unit
from allocator.schema.constraints import SizeModel
from allocator.schema.targets import constraints_for_target, get_rules, kind_of
from allocator.schema.ties import preset_key

DEFAULT_SIZE_MODEL = SizeModel()  # (importing allocator.cost first is a circular import)

CANDIDATES = [
    Option.parse(k)
    for k in (
        [f"b{b}-g{g}{s}" for b in range(2, 9) for g in ("64", "128", "c") for s in ("", "-sym")]
        + ["b4-g32-sym", "fp16", "b4-g128-2:4", "b4-g128-sym-2:4", "b8-gc-sym-2:4"]
    )
]


def smollm2_model():
    """SmolLM2-135M's architecture (30 blocks) on the meta device: real names, no weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def model():
    return smollm2_model()


@pytest.fixture(scope="session")
def units(model) -> list[Unit]:
    from allocator.models.units import find_units

    found = find_units(model)
    assert len(found) == 210
    return found


@pytest.fixture(scope="session")
def module_names(model) -> list[str]:
    return [name for name, _ in model.named_modules()]


@pytest.fixture(scope="session")
def linear_names(model) -> list[str]:
    from torch import nn

    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def make_plan(units: Sequence[Unit], choice: Mapping[str, Option]) -> Plan:
    """A Plan whose sizes come from the project's size model."""
    assignments = [
        Assignment(
            unit=u.name,
            option=choice[u.name],
            numel=u.numel,
            cost_bits=DEFAULT_SIZE_MODEL.cost_bits(choice[u.name], u),
            predicted_loss=0.0,
        )
        for u in units
    ]
    size = sum(a.cost_bits for a in assignments)
    numel = sum(a.numel for a in assignments)
    return Plan(
        assignments=assignments,
        predicted_loss=0.0,
        size_bits=size,
        size_bytes=size / 8,
        total_numel=numel,
        avg_bits=size / numel,
        budget_bits=size,
        solver="fixture",
        status="feasible",
    )


def random_plan(units: Sequence[Unit], target: str | None, seed: int = 0) -> Plan:
    """Seeded random plan over CANDIDATES; with a target, only options that fit (the preset's
    allowed keys, per-unit rules and ties, as ``constraints_for_target`` gives them)."""
    import re

    from allocator.schema import OptionFilter

    rng = random.Random(seed)
    allowed = {u.name: list(CANDIDATES) for u in units}
    presets: list[str] = []
    uniform = False
    if target is not None:
        extra = constraints_for_target(target, CANDIDATES, units)
        keys = set(extra["allowed"]["keys"])
        presets, uniform = extra["tie_presets"], extra.get("uniform_per_kind", False)
        for u in units:
            allowed[u.name] = [o for o in CANDIDATES if o.key in keys]
            for rule in extra.get("rules", []):
                if re.search(rule["pattern"], u.name):
                    keep = OptionFilter.model_validate(rule["allow"])
                    allowed[u.name] = [o for o in allowed[u.name] if keep.allows(o)]
    groups: dict[str, list[str]] = {}
    for u in units:
        key = kind_of(u.name) if uniform else None
        for preset in presets:
            key = key or preset_key(u.name, preset)
        groups.setdefault(key or u.name, []).append(u.name)
    choice = {}
    for members in groups.values():
        common = [o for o in allowed[members[0]] if all(o in allowed[m] for m in members)]
        picked = rng.choice(common)
        choice.update(dict.fromkeys(members, picked))
    return make_plan(units, choice)


@pytest.fixture(scope="session")
def mixed_plan(units) -> Plan:
    """2-8 bits, fp16 units, g64/g128/per-channel, some 2:4: fits compressed-tensors only."""
    return random_plan(units, None, seed=7)


TARGETS = sorted(
    [
        "gptqmodel",
        "autoround",
        "compressed-tensors",
        "vllm",
        "llamacpp",
        "torchao",
        "modelopt",
        "hqq",
    ]
)


@pytest.fixture(scope="session")
def target_plans(units) -> dict[str, Plan]:
    plans = {t: random_plan(units, t, seed=11) for t in TARGETS}
    for t, plan in plans.items():
        assert get_rules(t).name  # every target has rules
        assert len({a.option.key for a in plan.assignments}) > 1, t
    return plans
