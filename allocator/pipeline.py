"""The end-to-end job behind ``allocator run``: profile -> solve -> apply -> validate -> evaluate.

Stages and what each writes into the output folder:

1. profile: ``table.json`` (SensitivityTable of the chosen estimator on calibration windows);
2. solve: ``solved_plan.json`` (exact solve of the table under the budget; optional closed-loop
   refinement, see ``allocator.refine``);
3. apply: the solved plan and the uniform plan of the same or smaller size, each compressed
   with the run's method (GPTQ by default) into ``candidates/plan`` and ``candidates/uniform``;
4. validate: ``validation.json``: both candidates' mean KL against the original model on
   held-out calibration windows (disjoint from the profiling and GPTQ windows, never the
   evaluation text). A plan that measures worse than uniform is not trusted: the run keeps the
   uniform model and says so. ``plan.json`` and ``checkpoint/`` are the chosen candidate;
5. evaluate: ``results.json`` and ``results.md`` (perplexity and KL vs the original on held-out
   text for the original, the plan and uniform, in one streamed pass).

``state.json`` records, per stage, a hash of everything the stage's output depends on; a rerun
skips every stage whose output exists with a matching hash, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

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
    compare_llama: bool = False
    calibrate_options: bool = True
    validate_plan: bool = True
    validate_windows: int = Field(default=8, ge=1)
    bos: bool | None = None
    task: Literal["auto", "causal_lm", "embedding"] = "auto"
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

    @property
    def task(self) -> str:
        """causal_lm or embedding (``auto``: what the loader found)."""
        if self.settings.task != "auto":
            return self.settings.task
        return str(getattr(self.loaded, "task", "causal_lm"))

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

    def windows(self, which: str, n: int, seq_len: int, *, holdout: bool = False) -> Any:
        from allocator.models.windows import token_windows

        return token_windows(
            self.loaded.tokenizer,
            self.text(which),
            seq_len=seq_len,
            n_windows=n,
            seed=self.settings.seed,
            contiguous=which == "eval",
            bos=self.settings.bos,
            holdout=holdout,
        )

    def data_hash(self, which: str) -> str:
        return hashlib.sha256(self.text(which).encode()).hexdigest()[:16]


def profile_stage(job: Job, stages: Stages) -> SensitivityTable:
    s = job.settings
    key = _hash(
        "profile", s.model, s.estimator, s.options, s.profile_windows, s.profile_seq_len,
        s.seed, s.bos, s.calibrate_options, job.data_hash("calib"),
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
        bos=s.bos,
        calibrate_options=s.calibrate_options and job.task == "causal_lm",
        windows=s.profile_windows,
        seq_len=s.profile_seq_len,
        seed=s.seed,
        device=s.device,
        progress=job.progress,
        journal=stages.out / f"profile-{key}.journal.jsonl",
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
    if stages.done("solve", key, "solved_plan.json"):
        job.log("solve: solved_plan.json is up to date, skipped")
        return load_plan(stages.out / "solved_plan.json")
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


def apply_stage(job: Job, stages: Stages, plan: Plan, name: str) -> tuple[Any, str]:
    """The model compressed by ``plan`` and its key; the checkpoint goes to ``candidates/NAME``."""
    s = job.settings
    key = _hash("apply", plan.content_hash(), job.loaded.model_hash, s.method, s.quant_windows,
                s.seq_len, s.seed, s.bos, job.data_hash("calib"))  # fmt: skip
    folder = f"candidates/{name}"
    checkpoint = _checkpoint_module()
    if checkpoint is not None and stages.done(f"apply:{name}", key, folder):
        job.log(f"apply {name}: checkpoint is up to date, loaded")
        return checkpoint.load_checkpoint(stages.out / folder), key
    from allocator.quant.apply import apply_plan

    start = time.perf_counter()
    calib = job.windows("calib", s.quant_windows, s.seq_len)
    model = apply_plan(job.fresh_model(), plan, calib, method=s.method, progress=job.progress)
    job.log(f"apply {name}: {s.method} in {time.perf_counter() - start:.1f}s")
    if checkpoint is not None:
        checkpoint.save_checkpoint(model, plan, stages.out / folder,
                                   tokenizer=job.loaded.tokenizer)  # fmt: skip
        stages.mark(f"apply:{name}", key)
    return model, key


def _checkpoint_module() -> Any:
    try:
        from allocator.quant import checkpoint
    except ImportError:
        return None
    return checkpoint


def validate_stage(
    job: Job, stages: Stages, plan: Plan, candidates: dict[str, Any], keys: dict[str, str]
) -> dict[str, Any]:
    """Mean KL of each candidate on held-out calibration windows; picks the plan unless uniform
    measures better. Writes ``validation.json``."""
    from allocator.evaluate import evaluate_many

    s = job.settings
    key = _hash("validate", keys, s.validate_windows, s.seq_len, s.seed, s.bos,
                job.data_hash("calib"))  # fmt: skip
    if stages.done("validate", key, "validation.json"):
        job.log("validate: validation.json is up to date, skipped")
        return json.loads((stages.out / "validation.json").read_text())
    ids = job.windows("calib", s.validate_windows, s.seq_len, holdout=True)
    if job.task == "embedding":
        from allocator.evaluate.embedding import evaluate_embeddings

        similarity = evaluate_embeddings(candidates, ids, job.loaded.model,
                                         progress=job.progress, desc="validate")  # fmt: skip
        kl = {
            name: 1.0 - similarity[name].cosine for name in candidates
        }  # 1 - cos, lower is better
    else:
        measured = evaluate_many(candidates, ids, job.loaded.model, progress=job.progress,
                                 desc="validate")  # fmt: skip
        kl = {name: measured[name].kl for name in candidates}
    chosen = "plan"
    if "uniform" in kl and kl["uniform"] is not None and kl["plan"] is not None:
        chosen = "plan" if kl["plan"] <= kl["uniform"] else "uniform"
    record = {
        "windows": int(ids.shape[0]),
        "seq_len": int(ids.shape[1]),
        "predicted_loss": plan.predicted_loss,
        "measured_kl": kl,
        "metric": "1 - cosine" if job.task == "embedding" else "mean KL",
        "chosen": chosen,
    }
    atomic_write_text(stages.out / "validation.json", json.dumps(record, indent=1) + "\n")
    stages.mark("validate", key)
    verdict = "kept" if chosen == "plan" else "NOT better than uniform: falling back to uniform"
    job.log(f"validate: held-out calibration {record['metric']} " + ", ".join(
        f"{n} {v:.4f}" for n, v in kl.items() if v is not None) + f"; plan {verdict}")  # fmt: skip
    return record


def _install_choice(stages: Stages, chosen: str, plan: Plan) -> None:
    """``plan.json`` and ``checkpoint/`` become the chosen candidate's (atomic per file/folder)."""
    import shutil

    save_plan(plan, stages.out / "plan.json")
    source = stages.out / "candidates" / chosen
    if not source.is_dir():
        return
    target = stages.out / "checkpoint"
    tmp = stages.out / ".checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def evaluate_stage(
    job: Job, plan: Plan, candidates: dict[str, Any], plans: dict[str, Plan], chosen: str
) -> dict:
    from allocator.evaluate import evaluate_many

    s = job.settings
    if job.task == "embedding":
        return _evaluate_embedding_stage(job, candidates, plans, chosen)
    eval_ids = job.windows("eval", s.eval_windows, s.seq_len)
    measured = evaluate_many(candidates, eval_ids, job.loaded.model, reference_name="unmodified",
                             progress=job.progress, desc="evaluate")  # fmt: skip
    base = measured["unmodified"]
    rows = [_row("unmodified", 32.0, base.perplexity, 0.0)]
    labels = {"plan": f"plan ({s.estimator} table, {plan.solver}, {s.method})",
              "uniform": f"uniform {plans['uniform'].assignments[0].option.key} ({s.method})"
              if "uniform" in plans else "uniform",
              "llama": f"llama.cpp Q4_K_M-style rule, g128 ({s.method})"}  # fmt: skip
    for name in candidates:
        label = labels[name] + (" [chosen]" if name == chosen and len(candidates) > 1 else "")
        rows.append(_row(label, plans[name].avg_bits, measured[name].perplexity,
                         measured[name].kl))  # fmt: skip
    return {"settings": s.model_dump(), "rows": rows, "predicted_loss": plan.predicted_loss,
            "budget": s.budget, "chosen": chosen, "bos": bool(eval_ids.shape[1] and _starts_with_bos(job, eval_ids)),
            "eval_windows": int(eval_ids.shape[0]), "seq_len": int(eval_ids.shape[1])}  # fmt: skip


def _evaluate_embedding_stage(
    job: Job, candidates: dict[str, Any], plans: dict[str, Plan], chosen: str
) -> dict:
    """Encoders: cosine of pooled sentence embeddings and last-hidden MSE vs the original."""
    from allocator.evaluate.embedding import evaluate_embeddings, text_batches

    s = job.settings
    ids, mask = text_batches(job.loaded.tokenizer, job.text("eval"), n_texts=s.eval_windows)
    measured = evaluate_embeddings(candidates, ids, job.loaded.model, attention_mask=mask,
                                   progress=job.progress, desc="evaluate")  # fmt: skip
    rows = [{"method": "unmodified", "avg_bits": 32.0, "cosine": 1.0, "cosine_min": 1.0,
             "relative_mse": 0.0}]  # fmt: skip
    for name, result in measured.items():
        label = f"{name} ({plans[name].solver}, {s.method})"
        label += " [chosen]" if name == chosen and len(candidates) > 1 else ""
        rows.append({"method": label, "avg_bits": plans[name].avg_bits, "cosine": result.cosine,
                     "cosine_min": result.cosine_min, "relative_mse": result.relative_mse})  # fmt: skip
    return {"settings": s.model_dump(), "task": "embedding", "rows": rows,
            "predicted_loss": plans["plan"].predicted_loss, "budget": s.budget, "chosen": chosen,
            "eval_texts": int(ids.shape[0])}  # fmt: skip


def _starts_with_bos(job: Job, ids: Any) -> bool:
    bos = getattr(job.loaded.tokenizer, "bos_token_id", None)
    return bos is not None and bool((ids[:, 0] == bos).all())


def _row(name: str, bits: float, ppl: float, kl: float | None) -> dict[str, Any]:
    return {"method": name, "avg_bits": bits, "perplexity": ppl, "kl": kl}


def markdown(results: dict[str, Any]) -> str:
    if results.get("task") == "embedding":
        return _embedding_markdown(results)
    lines = [f"# allocator run: budget {results['budget']} bits/weight", "",
             "| method | avg bits | perplexity | KL vs original |", "|---|---|---|---|"]  # fmt: skip
    for r in results["rows"]:
        kl = "-" if r["kl"] is None else f"{r['kl']:.4f}"
        lines.append(f"| {r['method']} | {r['avg_bits']:.3f} | {r['perplexity']:.2f} | {kl} |")
    windows = results.get("eval_windows")
    if windows:
        bos = ", each starting with BOS" if results.get("bos") else ""
        lines += ["", f"Evaluation: {windows} held-out windows x {results['seq_len']} tokens{bos}."]
    validation = results.get("validation")
    if validation:
        kl = ", ".join(
            f"{n} {v:.4f}" for n, v in validation["measured_kl"].items() if v is not None
        )
        lines.append(
            f"Validation on {validation['windows']} held-out calibration windows, mean KL: {kl}; "
            f"predicted loss {validation['predicted_loss']:.4g}; chosen: {validation['chosen']}."
        )
    return "\n".join(lines) + "\n"


def _embedding_markdown(results: dict[str, Any]) -> str:
    lines = [f"# allocator run: budget {results['budget']} bits/weight (embedding model)", "",
             "| method | avg bits | mean cosine | worst cosine | relative MSE |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in results["rows"]:
        lines.append(f"| {r['method']} | {r['avg_bits']:.3f} | {r['cosine']:.4f} | "
                     f"{r['cosine_min']:.4f} | {r['relative_mse']:.4f} |")  # fmt: skip
    lines += ["", f"Evaluation: {results['eval_texts']} held-out passages, pooled embeddings vs the "
              "original model."]  # fmt: skip
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
                     settings.model_dump(), job.data_hash("eval"))  # fmt: skip
    if stages.done("evaluate", eval_key, "results.json", "plan.json"):
        log("evaluate: results.json is up to date, skipped")
        return json.loads((folder / "results.json").read_text())
    candidates, keys = {}, {}
    for name, candidate_plan in plans.items():
        candidates[name], keys[name] = apply_stage(job, stages, candidate_plan, name)
    validation = None
    chosen = "plan"
    if settings.validate_plan and "uniform" in candidates:
        pair = {n: candidates[n] for n in ("plan", "uniform")}
        validation = validate_stage(job, stages, plan, pair, {n: keys[n] for n in pair})
        chosen = validation["chosen"]
    _install_choice(stages, chosen, plans[chosen])
    if not settings.compare_uniform and chosen == "plan":
        candidates.pop("uniform", None)
    results = evaluate_stage(job, plan, candidates, plans, chosen)
    results["validation"] = validation
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
