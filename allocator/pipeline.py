"""The end-to-end job behind ``allocator run``: profile -> solve -> apply -> evaluate.

Stages and what each writes into the output folder:

1. profile: ``table.json`` (SensitivityTable of the chosen estimator on calibration windows);
2. solve: ``plan.json`` (exact solve of the table under the budget; optional closed-loop
   refinement, see ``allocator.refine``);
3. apply: ``checkpoint/`` (the packed model; GPTQ by default) when the executor's checkpoint
   writer is installed;
4. evaluate: ``results.json`` and ``results.md`` (perplexity and KL vs the original on held-out
   text, next to the uniform setting of the same or smaller size).

``state.json`` records, per stage, a hash of everything the stage's output depends on; a rerun
skips every stage whose output exists with a matching hash, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from allocator.errors import InputError
from allocator.schema import Constraints, Plan, SensitivityTable
from allocator.schema.io import atomic_write_text, load_plan, load_table, save_plan, save_table

DEFAULT_ESTIMATOR = "fisher"
DEFAULT_OPTIONS = "bits=2,3,4,5,6 group=64,128,256,c sparsity=0,2:4,0.5"


class RunSettings(BaseModel):
    """Everything ``run`` depends on (hashed per stage for resuming)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2"
    budget: float = Field(default=3.5, gt=0)
    estimator: str = DEFAULT_ESTIMATOR
    options: str = DEFAULT_OPTIONS
    profile_windows: int | None = Field(default=None, ge=1)
    profile_seq_len: int | None = Field(default=None, ge=8)
    quant_windows: int = Field(default=16, ge=1)
    eval_windows: int = Field(default=32, ge=1)
    seq_len: int = Field(default=512, ge=8)
    solver: str = "auto"
    method: str = "gptq"
    refine_rounds: int = Field(default=0, ge=0)
    refine_windows: int = Field(default=4, ge=1)
    calib_text: list[str] | None = None
    eval_text: list[str] | None = None
    compare_uniform: bool = True
    seed: int = 0
    device: str = "cpu"


def _hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class Stages:
    """The output folder's ``state.json``: stage name -> hash of its inputs."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / "state.json"
        self.state: dict[str, str] = {}
        if self.path.is_file():
            try:
                self.state = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.state = {}

    def done(self, stage: str, key: str, *outputs: str) -> bool:
        return self.state.get(stage) == key and all((self.out / o).exists() for o in outputs)

    def mark(self, stage: str, key: str) -> None:
        self.state[stage] = key
        atomic_write_text(self.path, json.dumps(self.state, indent=1) + "\n")


class Job:
    """Lazily loaded model, tokenizer and token windows shared by the stages."""

    def __init__(self, settings: RunSettings, progress: bool, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.progress = progress
        self.log = log
        self._loaded: Any = None
        self._texts: dict[str, str] = {}

    @property
    def loaded(self) -> Any:
        if self._loaded is None:
            from allocator.models.loader import load_model

            start = time.perf_counter()
            self._loaded = load_model(self.settings.model, device=self.settings.device)
            self.log(f"model {self.settings.model} loaded in {time.perf_counter() - start:.1f}s")
        return self._loaded

    def fresh_model(self) -> Any:
        """A new copy of the unmodified model (applying a plan changes a model in place)."""
        from allocator.models.loader import load_model

        return load_model(self.settings.model, device=self.settings.device).model

    def text(self, which: str) -> str:
        from allocator.models import corpus

        if which not in self._texts:
            files = self.settings.calib_text if which == "calib" else self.settings.eval_text
            if files:
                self._texts[which] = corpus.read_texts(files)
            elif which == "calib":
                self._texts[which] = corpus.default_calibration_text()
            else:
                self._texts[which] = corpus.default_evaluation_text()
        return self._texts[which]

    def windows(self, which: str, n: int, seq_len: int) -> Any:
        from allocator.models.windows import token_windows

        return token_windows(
            self.loaded.tokenizer,
            self.text(which),
            seq_len=seq_len,
            n_windows=n,
            seed=self.settings.seed,
            contiguous=which == "eval",
        )

    def data_hash(self, which: str) -> str:
        return hashlib.sha256(self.text(which).encode()).hexdigest()[:16]


def profile_stage(job: Job, stages: Stages) -> SensitivityTable:
    s = job.settings
    key = _hash(
        "profile", s.model, s.estimator, s.options, s.profile_windows, s.profile_seq_len,
        s.seed, job.data_hash("calib"),
    )  # fmt: skip
    if stages.done("profile", key, "table.json"):
        job.log("profile: table.json is up to date, skipped")
        return load_table(stages.out / "table.json")
    from allocator.profile.api import profile

    start = time.perf_counter()
    table = profile(
        job.loaded,
        job.text("calib"),
        s.estimator,
        s.options,
        windows=s.profile_windows,
        seq_len=s.profile_seq_len,
        seed=s.seed,
        device=s.device,
        progress=job.progress,
        journal=stages.out / "profile.journal.jsonl",
        resume=True,
    )
    save_table(table, stages.out / "table.json")
    stages.mark("profile", key)
    job.log(f"profile: {s.estimator} table in {time.perf_counter() - start:.1f}s")
    return table


def solve_stage(job: Job, stages: Stages, table: SensitivityTable) -> Plan:
    s = job.settings
    constraints = Constraints.simple(s.budget)
    key = _hash("solve", table.content_hash(), constraints.content_hash(), s.solver,
                s.refine_rounds, s.refine_windows, s.method)  # fmt: skip
    if stages.done("solve", key, "plan.json"):
        job.log("solve: plan.json is up to date, skipped")
        return load_plan(stages.out / "plan.json")
    from allocator.solve.api import solve

    plan = solve(table, constraints, solver=s.solver)
    if s.refine_rounds > 0:
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
    save_plan(plan, stages.out / "plan.json")
    stages.mark("solve", key)
    job.log(f"solve: {plan.solver} {plan.status}, {plan.avg_bits:.3f} bits/weight, "
            f"predicted loss {plan.predicted_loss:.4g}")  # fmt: skip
    return plan


def apply_stage(job: Job, stages: Stages, plan: Plan) -> tuple[Any, str]:
    """The compressed model and the apply stage's key (the checkpoint is saved when possible)."""
    s = job.settings
    key = _hash("apply", plan.content_hash(), job.loaded.model_hash, s.method, s.quant_windows,
                s.seq_len, s.seed, job.data_hash("calib"))  # fmt: skip
    checkpoint = _checkpoint_module()
    if checkpoint is not None and stages.done("apply", key, "checkpoint"):
        job.log("apply: checkpoint is up to date, loaded")
        return checkpoint.load_checkpoint(stages.out / "checkpoint"), key
    from allocator.quant.apply import apply_plan

    start = time.perf_counter()
    calib = job.windows("calib", s.quant_windows, s.seq_len)
    model = apply_plan(job.fresh_model(), plan, calib, method=s.method, progress=job.progress)
    job.log(f"apply: {s.method} in {time.perf_counter() - start:.1f}s")
    if checkpoint is not None:
        checkpoint.save_checkpoint(model, plan, stages.out / "checkpoint",
                                   tokenizer=job.loaded.tokenizer)  # fmt: skip
        stages.mark("apply", key)
    return model, key


def _checkpoint_module() -> Any:
    try:
        from allocator.quant import checkpoint
    except ImportError:
        return None
    return checkpoint


def evaluate_stage(job: Job, stages: Stages, plan: Plan, model: Any, apply_key: str) -> dict:
    from allocator.evaluate import LogProbCache, evaluate

    s = job.settings
    eval_ids = job.windows("eval", s.eval_windows, s.seq_len)
    reference = LogProbCache.build(job.loaded.model, eval_ids, progress=job.progress)
    try:
        ours = evaluate(model, eval_ids, reference, progress=job.progress, desc="planned")
        rows = [_row("unmodified", 32.0, _cached_perplexity(reference, eval_ids), 0.0),
                _row(f"plan ({s.estimator} table, {plan.solver}, {s.method})", plan.avg_bits,
                     ours.perplexity, ours.kl)]  # fmt: skip
        if s.compare_uniform:
            rows.append(_uniform_row(job, eval_ids, reference))
    finally:
        reference.close()
    results = {"settings": s.model_dump(), "apply_key": apply_key, "rows": rows,
               "predicted_loss": plan.predicted_loss, "budget": s.budget}  # fmt: skip
    return results


def _cached_perplexity(reference: Any, eval_ids: Any) -> float:
    """Perplexity of the reference model from its cached log-probs (saves a forward pass)."""
    import math

    nll = 0.0
    for i in range(eval_ids.shape[0]):
        logp = reference.log_probs(i, i + 1)[0].log_softmax(-1)
        nll -= float(logp[:-1].gather(1, eval_ids[i, 1:, None]).sum())
    return math.exp(nll / (eval_ids.shape[0] * (eval_ids.shape[1] - 1)))


def _row(name: str, bits: float, ppl: float, kl: float | None) -> dict[str, Any]:
    return {"method": name, "avg_bits": bits, "perplexity": ppl, "kl": kl}


def _uniform_row(job: Job, eval_ids: Any, reference: Any) -> dict[str, Any]:
    """Uniform setting of the same or smaller size (largest single option that fits), same method."""
    from allocator.evaluate import evaluate
    from allocator.models.units import find_units
    from allocator.profile.options import parse_options
    from allocator.quant.apply import apply_plan
    from allocator.solve.rules import plan_from_choice, uniform_choice

    s = job.settings
    units = find_units(job.loaded.model)
    constraints = Constraints.simple(s.budget)
    grid = parse_options("bits=2,3,4,5,6,8 group=32,64,128,256")
    plan = plan_from_choice(units, uniform_choice(units, constraints, grid), constraints,
                            solver="rule:uniform")  # fmt: skip
    calib = job.windows("calib", s.quant_windows, s.seq_len)
    model = apply_plan(job.fresh_model(), plan, calib, method=s.method, progress=job.progress)
    result = evaluate(model, eval_ids, reference, progress=job.progress, desc="uniform")
    name = f"uniform {plan.assignments[0].option.key} ({s.method})"
    return _row(name, plan.avg_bits, result.perplexity, result.kl)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# allocator run: budget {results['budget']} bits/weight", "",
             "| method | avg bits | perplexity | KL vs original |", "|---|---|---|---|"]  # fmt: skip
    for r in results["rows"]:
        kl = "-" if r["kl"] is None else f"{r['kl']:.4f}"
        lines.append(f"| {r['method']} | {r['avg_bits']:.3f} | {r['perplexity']:.2f} | {kl} |")
    return "\n".join(lines) + "\n"


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
    table = profile_stage(job, stages)
    plan = solve_stage(job, stages, table)
    eval_key = _hash("eval", plan.content_hash(), settings.model_dump(), job.data_hash("eval"))
    if stages.done("evaluate", eval_key, "results.json"):
        log("evaluate: results.json is up to date, skipped")
        return json.loads((folder / "results.json").read_text())
    model, apply_key = apply_stage(job, stages, plan)
    results = evaluate_stage(job, stages, plan, model, apply_key)
    results["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(folder / "results.md", markdown(results))
    stages.mark("evaluate", eval_key)
    log(markdown(results))
    return results


class SubsetMeasurer:
    """``measure(choice)``: mean KL on calibration windows with only ``choice``'s units compressed.

    Compressed weights are cached per (unit, option); GPTQ options use each unit's input Hessian
    from one capture on the same windows (not sequential, unlike ``apply_plan``).
    """

    def __init__(self, job: Job, n_windows: int) -> None:
        from allocator.evaluate import LogProbCache

        self.job = job
        self.model = job.fresh_model()
        self.ids = job.windows("calib", n_windows, job.settings.seq_len)
        self.reference = LogProbCache.build(self.model, self.ids, progress=job.progress)
        self.original = {n: m.weight.detach().clone() for n, m in self._linears().items()}
        self.cache: dict[tuple[str, str], Any] = {}
        self._stats: Any = None

    def _linears(self) -> dict[str, Any]:
        import torch

        return {n: m for n, m in self.model.named_modules() if isinstance(m, torch.nn.Linear)}

    def _weight(self, name: str, option: Any) -> Any:
        from allocator.quant.compress import compress_weight

        key = (name, option.key)
        if key not in self.cache:
            method = self.job.settings.method
            hessian = None
            if method in ("gptq", "sparsegpt"):
                if self._stats is None:
                    from allocator.profile.capture import capture_stats

                    self._stats = capture_stats(self.model, self.ids, progress=False).stats
                hessian = self._stats[name].hessian.float()
            option = option.model_copy(update={"method": method})
            self.cache[key] = compress_weight(self.original[name], option, hessian=hessian)
        return self.cache[key]

    def __call__(self, choice: Any) -> float:
        from allocator.evaluate import mean_kl

        linears = self._linears()
        try:
            for name, option in choice.items():
                linears[name].weight.data = self._weight(name, option)
            return mean_kl(self.model, self.reference, self.ids, progress=False)
        finally:
            for name in choice:
                linears[name].weight.data = self.original[name]
