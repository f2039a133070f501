"""The stages that make artifacts: profile (table), solve (plan), the candidates' plans, apply."""

from __future__ import annotations

import json
import time
from typing import Any

from allocator.errors import AllocatorError
from allocator.pipeline.job import Job, Stages
from allocator.pipeline.settings import _hash
from allocator.quant import APPLY_REVISION
from allocator.quant import REVISION as QUANT_REVISION
from allocator.schema import Constraints, Plan, SensitivityTable
from allocator.schema.io import atomic_write_text, load_plan, load_table, save_plan, save_table


def profile_stage(job: Job, stages: Stages) -> SensitivityTable:
    s = job.settings
    key = _hash(
        "profile", s.model, s.estimator, s.options, s.profile_windows, s.profile_seq_len,
        s.seed, s.bos, s.calibrate_options, job.data_hash("calib"), QUANT_REVISION,
        *([s.method] if s.rescale_to_method else []),
    )  # fmt: skip
    if stages.done("profile", key, "table.json"):
        job.log("profile: table.json is up to date, skipped")
        return load_table(stages.out / "table.json")
    from allocator.profile.api import profile
    from allocator.profile.journal import discard_checkpoints

    start = time.perf_counter()
    table = profile(
        job.loaded,
        job.text("calib"),
        s.estimator,
        s.options,
        bos=s.bos,
        calibrate_options=s.calibrate_options and job.task == "causal_lm",
        rescale_to=s.method if s.rescale_to_method else None,
        windows=s.profile_windows,
        seq_len=s.profile_seq_len,
        seed=s.seed,
        device=s.device,
        progress=job.progress,
        journal=stages.out / f"profile-{key}.journal.jsonl",
        resume=True,
        ray=_profile_ray(job),
    )
    save_table(table, stages.out / "table.json")
    discard_checkpoints(stages.out / f"profile-{key}.journal.jsonl")
    stages.mark("profile", key)
    job.log(f"profile: {s.estimator} table in {time.perf_counter() - start:.1f}s")
    return table


def _profile_ray(job: Job) -> str | None:
    """``--ray`` for the profile stage when its estimator distributes (else it runs here)."""
    s = job.settings
    if s.ray is None:
        return None
    from allocator.profile.distributed import DISTRIBUTED

    if s.estimator in DISTRIBUTED:
        return s.ray
    job.log(f"profile: {s.estimator} runs in this process (--ray: {', '.join(DISTRIBUTED)})")
    return None


def solve_stage(job: Job, stages: Stages, table: SensitivityTable) -> Plan:
    s = job.settings
    constraints = Constraints.simple(s.budget)
    key = _hash("solve", table.content_hash(), constraints.content_hash(), s.solver,
                s.refine_rounds, s.refine_windows, s.method)  # fmt: skip
    if stages.done("solve", key, "solved_plan.json"):
        job.log("solve: solved_plan.json is up to date, skipped")
        return load_plan(stages.out / "solved_plan.json")
    from allocator.solve.api import solve

    plan = solve(table, constraints, solver=s.solver)
    if s.refine_rounds > 0:
        from allocator.pipeline.measure import SubsetMeasurer
        from allocator.refine import refine

        measurer = SubsetMeasurer(job, s.refine_windows)
        result = refine(
            table,
            constraints,
            measurer,
            lambda t, c: solve(t, c, solver=s.solver),
            rounds=s.refine_rounds,
        )
        plan = result.plan.model_copy(update={"notes": [*result.plan.notes, "refined"]})
        atomic_write_text(stages.out / "refine.json", json.dumps(result.summary(), indent=1))
        job.log(f"refine: measured KL {result.rounds[0].measured:.4f} -> "
                f"{result.rounds[result.best].measured:.4f}")  # fmt: skip
    save_plan(plan, stages.out / "solved_plan.json")
    stages.mark("solve", key)
    job.log(f"solve: {plan.solver} {plan.status}, {plan.avg_bits:.3f} bits/weight, "
            f"predicted loss {plan.predicted_loss:.4g}")  # fmt: skip
    return plan


def uniform_plan_for(job: Job) -> Plan:
    """Uniform setting of the same or smaller size (largest single option that fits)."""
    from allocator.models.units import find_units
    from allocator.profile.options import parse_options
    from allocator.solve.rules import plan_from_choice, uniform_choice

    units = find_units(job.loaded.model)
    constraints = Constraints.simple(job.settings.budget)
    grid = parse_options("bits=2,3,4,5,6,8 group=32,64,128,256")
    choice = uniform_choice(units, constraints, grid)
    return plan_from_choice(units, choice, constraints, solver="rule:uniform")


def llama_plan_for(job: Job) -> Plan:
    """llama.cpp's Q4_K_M-style rule (v/down promoted) scaled to the budget, g128 ladder."""
    from allocator.models.units import find_units
    from allocator.profile.options import parse_options
    from allocator.solve.rules import llama_rule_choice, plan_from_choice

    units = find_units(job.loaded.model)
    constraints = Constraints.simple(job.settings.budget)
    ladder = parse_options("bits=2,3,4,5,6,8 group=128")
    choice = llama_rule_choice(units, constraints, ladder, group_size=128)
    return plan_from_choice(units, choice, constraints, solver="rule:llama.cpp")


def near_uniform_plan_for(
    job: Job, stages: Stages, table: SensitivityTable, plans: dict[str, Plan]
) -> Plan | None:
    """The third candidate validation measures: the same table re-solved on options near the
    uniform setting (``allocator.refine.near_uniform_table``), where its estimates hold best.
    ``None`` when switched off or when it would repeat an existing candidate."""
    if not job.settings.near_uniform or "uniform" not in plans:
        return None
    from allocator.refine import near_uniform_table
    from allocator.solve.api import solve

    center = plans["uniform"].assignments[0].option
    restricted = near_uniform_table(table, center)
    if restricted is None:
        return None
    try:
        plan = solve(
            restricted, Constraints.simple(job.settings.budget), solver=job.settings.solver
        )
    except AllocatorError as exc:
        job.log(f"near-uniform re-solve: {exc}; keeping the measured candidates")
        return None
    choice = {u: o.key for u, o in plan.options_by_unit().items()}
    for other in plans.values():
        if choice == {u: o.key for u, o in other.options_by_unit().items()}:
            return None
    plan = plan.model_copy(update={"notes": [*plan.notes, f"near uniform {center.key}"]})
    save_plan(plan, stages.out / "near_uniform_plan.json")
    job.log(f"solve near uniform {center.key}: {plan.avg_bits:.3f} bits/weight, predicted loss "
            f"{plan.predicted_loss:.4g}")  # fmt: skip
    return plan


def predicted_loss(table: SensitivityTable, plan: Plan) -> float | None:
    """The table's predicted loss of any plan (``None`` if it uses an option the table lacks)."""
    total = 0.0
    for a in plan.assignments:
        value = table.losses.get(a.unit, {}).get(a.option.key)
        if value is None:
            return None
        total += value
    return total


def apply_stage(job: Job, stages: Stages, plan: Plan, name: str) -> tuple[Any, str]:
    """The model compressed by ``plan`` and its key; the checkpoint goes to ``candidates/NAME``."""
    s = job.settings
    key = _hash("apply", plan.content_hash(), job.loaded.model_hash, s.method, s.quant_windows,
                s.seq_len, s.seed, s.bos, job.data_hash("calib"), APPLY_REVISION,
                s.calibration)  # fmt: skip
    folder = f"candidates/{name}"
    checkpoint = _checkpoint_module()
    if checkpoint is not None and stages.done(f"apply:{name}", key, folder):
        job.log(f"apply {name}: checkpoint is up to date, loaded")
        return checkpoint.load_checkpoint(stages.out / folder).model, key
    from allocator.quant.apply import apply_plan
    from allocator.quant.apply_journal import ApplyJournal

    start = time.perf_counter()
    calib = job.windows("calib", s.quant_windows, s.seq_len)
    journal = ApplyJournal(stages.out / f"apply-{name}.journal", key, discard_other=True)
    model = apply_plan(job.fresh_model(), plan, calib, method=s.method, progress=job.progress,
                       journal=journal, ray=s.ray, calibration=s.calibration)  # fmt: skip
    job.log(f"apply {name}: {s.method} in {time.perf_counter() - start:.1f}s")
    if checkpoint is not None:
        checkpoint.save_checkpoint(model, plan, stages.out / folder,
                                   tokenizer=job.loaded.tokenizer)  # fmt: skip
        stages.mark(f"apply:{name}", key)
    journal.discard()
    return model, key


def _checkpoint_module() -> Any:
    try:
        from allocator.quant import checkpoint
    except ImportError:
        return None
    return checkpoint
