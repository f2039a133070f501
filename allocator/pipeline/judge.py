"""The stages that measure: validation of plan vs uniform on held-out calibration windows, the
final evaluation on held-out text, and the results' markdown."""

from __future__ import annotations

import json
from typing import Any

from allocator.pipeline.job import Job, Stages
from allocator.pipeline.settings import _hash
from allocator.schema import Plan
from allocator.schema.io import atomic_write_text, save_plan


def validate_stage(
    job: Job,
    stages: Stages,
    candidates: dict[str, Any],
    keys: dict[str, str],
    predicted: dict[str, float | None],
) -> dict[str, Any]:
    """Each candidate's mean KL (encoders: 1 - cosine) on held-out calibration windows; picks the
    best measured one, uniform winning ties. Candidates measured before with the same apply key
    and windows are not measured again. Writes ``validation.json``."""
    s = job.settings
    window_key = _hash("validate", s.validate_windows, s.seq_len, s.seed, s.bos,
                       job.data_hash("calib"), "clear of", s.quant_windows, s.estimator,
                       s.profile_windows, s.profile_seq_len)  # fmt: skip
    path = stages.out / "validation.json"
    known: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            if previous.get("window_key") == window_key:
                known = previous.get("candidates", {})
        except (json.JSONDecodeError, AttributeError):
            known = {}
    kl: dict[str, float | None] = {}
    todo = {}
    for name, model in candidates.items():
        entry = known.get(name)
        if isinstance(entry, dict) and entry.get("apply_key") == keys[name]:
            kl[name] = entry.get("measured")
        else:
            todo[name] = model
    ids, overlapping = validation_windows(job)
    if todo:
        kl.update(_measure(job, stages, todo, ids))
    chosen = _best(kl)
    record = {
        "windows": int(ids.shape[0]),
        "seq_len": int(ids.shape[1]),
        "overlapping_windows": overlapping,
        "window_key": window_key,
        "metric": "1 - cosine" if job.task == "embedding" else "mean KL",
        "predicted_loss": predicted.get("plan"),
        "measured_kl": {n: kl[n] for n in candidates},
        "candidates": {
            n: {"apply_key": keys[n], "predicted": predicted.get(n), "measured": kl[n]}
            for n in candidates
        },
        "chosen": chosen,
    }
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    verdict = {"plan": "plan kept", "uniform": "plan NOT better than uniform: falling back to "
               "uniform"}.get(chosen, f"{chosen} chosen")  # fmt: skip
    job.log(f"validate: held-out calibration {record['metric']} (predicted -> measured) " + ", ".join(
        f"{n} {_fmt(predicted.get(n))} -> {_fmt(kl[n])}" for n in candidates) + f"; {verdict}")  # fmt: skip
    return record


def validation_windows(job: Job) -> tuple[Any, int]:
    """Held-out calibration windows that share no token with the profiling windows or GPTQ's
    (where the text is long enough), and how many do share some."""
    from allocator.models.windows import Draw, holdout_windows
    from allocator.profile.estimators import ESTIMATORS, load_all

    s = job.settings
    load_all()
    spec = ESTIMATORS.get(s.estimator)
    profiled = Draw(s.profile_windows or spec.windows, s.profile_seq_len or spec.seq_len)
    ids, overlapping = holdout_windows(
        job.loaded.tokenizer, job.text("calib"), seq_len=s.seq_len, n_windows=s.validate_windows,
        seed=s.seed, bos=s.bos, avoid=[Draw(s.quant_windows, s.seq_len), profiled],
    )  # fmt: skip
    if overlapping:
        job.log(f"validate: {overlapping} of the {ids.shape[0]} held-out windows share tokens "
                "with the profiling or GPTQ windows: the calibration text is too short to keep "
                "them apart; give more --calib-text for an unbiased check")  # fmt: skip
    return ids, overlapping


def _measure(job: Job, stages: Stages, models: dict[str, Any], ids: Any) -> dict[str, float | None]:
    if job.task == "embedding":
        from allocator.evaluate.embedding import evaluate_embeddings

        similarity = evaluate_embeddings(models, ids, job.loaded.model, progress=job.progress,
                                         desc="validate")  # fmt: skip
        return {name: 1.0 - similarity[name].cosine for name in models}
    measured = _evaluate(job, stages, models, ids, desc="validate")
    return {name: measured[name].kl for name in models}


def _evaluate(
    job: Job,
    stages: Stages | None,
    candidates: dict[str, Any],
    ids: Any,
    *,
    reference_name: str | None = None,
    desc: str,
) -> dict[str, Any]:
    """``evaluate_many`` of the candidates against the original; with ``--ray`` its batches
    run as Ray tasks loading each candidate from its saved checkpoint (same results)."""
    from allocator.evaluate import auto_batch_size, evaluate_many

    s = job.settings
    folders = {} if stages is None else {n: stages.out / "candidates" / n for n in candidates}
    if s.ray is None or not candidates or not all(f.is_dir() for f in folders.values()):
        return evaluate_many(candidates, ids, job.loaded.model, reference_name=reference_name,
                             progress=job.progress, desc=desc)  # fmt: skip
    from allocator.distributed.pool import pool_for
    from allocator.evaluate.distributed import evaluate_on_ray
    from allocator.pipeline.tasks import worker_spec

    size = auto_batch_size(next(iter(candidates.values())), int(ids.shape[1]))
    return evaluate_on_ray(
        {n: str(f.resolve()) for n, f in folders.items()}, ids, worker_spec(s.model),
        pool=pool_for(s.ray, s.device), batch_size=size, reference_name=reference_name,
        offload=s.offload, device=s.device,
    )  # fmt: skip


def _best(kl: dict[str, float | None]) -> str:
    """The lowest measured candidate; uniform wins ties (it needs no table to be trusted)."""
    if kl.get("uniform") is None:
        return "plan"
    order = ["uniform", *[n for n in kl if n != "uniform"]]
    valid = [n for n in order if kl[n] is not None]
    return min(valid, key=lambda n: (kl[n], order.index(n)))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def install_choice(stages: Stages, chosen: str, plan: Plan) -> None:
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
    job: Job,
    plan: Plan,
    candidates: dict[str, Any],
    plans: dict[str, Plan],
    chosen: str,
    stages: Stages | None = None,
) -> dict:
    s = job.settings
    if job.task == "embedding":
        return _evaluate_embedding_stage(job, candidates, plans, chosen)
    eval_ids = job.windows("eval", s.eval_windows, s.seq_len)
    measured = _evaluate(job, stages, candidates, eval_ids, reference_name="unmodified",
                         desc="evaluate")  # fmt: skip
    base = measured["unmodified"]
    rows = [_row("unmodified", 32.0, base.perplexity, 0.0)]
    labels = {"plan": f"plan ({s.estimator} table, {plan.solver}, {s.method})",
              "uniform": f"uniform {plans['uniform'].assignments[0].option.key} ({s.method})"
              if "uniform" in plans else "uniform",
              "llama": f"llama.cpp Q4_K_M-style rule, g128 ({s.method})",
              "near_uniform": f"plan near uniform (dense, {plans['near_uniform'].solver}, "
              f"{s.method})" if "near_uniform" in plans else "near_uniform"}  # fmt: skip
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
