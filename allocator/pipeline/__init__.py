"""The end-to-end job behind ``allocator run``: profile -> solve -> apply -> validate -> evaluate.

Stages and what each writes into the output folder:

1. profile: ``table.json`` (SensitivityTable of the chosen estimator on calibration windows);
2. solve: ``solved_plan.json`` (exact solve of the table under the budget; optional closed-loop
   refinement, see ``allocator.refine``);
3. apply: the solved plan and the uniform plan of the same or smaller size, each compressed
   with the run's method (GPTQ by default) into ``candidates/plan`` and ``candidates/uniform``;
   each finished block is journaled (``apply-NAME.journal``) so a killed apply resumes;
4. validate: ``validation.json``: both candidates' mean KL against the original model on
   held-out calibration windows (disjoint from the profiling and GPTQ windows, never the
   evaluation text). A plan that measures no better than uniform is not trusted: the run
   re-solves the table on options near the uniform setting (``allocator.refine.
   near_uniform_table``: dense, grouped, bits b-1..b+2, where second-order estimates hold),
   applies and measures that plan too (``near_uniform_plan.json``, ``candidates/near_uniform``)
   and keeps the best measured candidate, uniform on ties, saying which. ``plan.json`` and
   ``checkpoint/`` are the chosen candidate;
5. evaluate: ``results.json`` and ``results.md`` (perplexity and KL vs the original on held-out
   text for the original, the plan and uniform, in one streamed pass).

``state.json`` records, per stage, a hash of everything the stage's output depends on; a rerun
skips every stage whose output exists with a matching hash, so a killed run resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from allocator.errors import InputError
from allocator.pipeline.job import Job, Stages
from allocator.pipeline.judge import (
    evaluate_stage,
    install_choice,
    markdown,
    validate_stage,
)
from allocator.pipeline.settings import DEFAULT_ESTIMATOR, DEFAULT_OPTIONS, RunSettings, _hash
from allocator.pipeline.stages import (
    apply_stage,
    llama_plan_for,
    near_uniform_plan_for,
    predicted_loss,
    profile_stage,
    solve_stage,
    uniform_plan_for,
)
from allocator.quant import APPLY_REVISION
from allocator.schema.io import atomic_write_text

__all__ = [
    "DEFAULT_ESTIMATOR",
    "DEFAULT_OPTIONS",
    "Job",
    "RunSettings",
    "Stages",
    "markdown",
    "run",
]


def run(
    settings: RunSettings,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage into ``out`` (resuming where outputs are up to date); returns the results."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder}: exists and is not a folder; choose another path")
    folder.mkdir(parents=True, exist_ok=True)
    stages = Stages(folder)
    job = Job(settings, progress, log)
    start = time.perf_counter()
    if settings.refine_rounds > 0 and job.task == "embedding":
        raise InputError("--refine-rounds: refinement measures KL of an LM head; an embedding "
                         "model has none, use --refine-rounds 0")  # fmt: skip
    table = profile_stage(job, stages)
    plan = solve_stage(job, stages, table)
    plans = {"plan": plan}
    if settings.validate_plan or settings.compare_uniform:
        plans["uniform"] = uniform_plan_for(job)
    if settings.compare_llama:
        plans["llama"] = llama_plan_for(job)
    eval_key = _hash("eval", {n: p.content_hash() for n, p in plans.items()},
                     settings.model_dump(), job.data_hash("eval"), APPLY_REVISION)  # fmt: skip
    if stages.done("evaluate", eval_key, "results.json", "plan.json"):
        log("evaluate: results.json is up to date, skipped")
        return json.loads((folder / "results.json").read_text())
    candidates, keys = {}, {}
    for name, candidate_plan in plans.items():
        candidates[name], keys[name] = apply_stage(job, stages, candidate_plan, name)
    validation = None
    chosen = "plan"
    if settings.validate_plan and "uniform" in candidates:
        judged = ["plan", "uniform"]
        near = near_uniform_plan_for(job, stages, table, plans)
        if near is not None:
            plans["near_uniform"] = near
            candidates["near_uniform"], keys["near_uniform"] = apply_stage(
                job, stages, near, "near_uniform"
            )
            judged.append("near_uniform")
        validation = validate_stage(job, stages, {n: candidates[n] for n in judged},
                                    {n: keys[n] for n in judged},
                                    {n: predicted_loss(table, plans[n]) for n in judged})  # fmt: skip
        chosen = validation["chosen"]
    install_choice(stages, chosen, plans[chosen])
    if not settings.compare_uniform and chosen == "plan":
        candidates.pop("uniform", None)
    results = evaluate_stage(job, plan, candidates, plans, chosen, stages)
    results["validation"] = validation
    results["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(folder / "results.md", markdown(results))
    stages.mark("evaluate", eval_key)
    log(markdown(results))
    return results
