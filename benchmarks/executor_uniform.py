"""Uniform-option perplexity of SmolLM2-135M under one quantizer (the executor's check).

Usage: ``python benchmarks/executor_uniform.py KEY METHOD CALIB_WINDOWS [eval|noeval] [THREADS]
[act-order]``
e.g. ``python benchmarks/executor_uniform.py b3-g128 gptq 32 eval 1``. Calibration: random
512-token windows of Pride and Prejudice + Sense and Sensibility (seed 0); evaluation: the first
32 x 512 tokens of Persuasion (DESIGN.md §8). Prints apply time, avg bits and perplexity.
"""

from __future__ import annotations

import sys
import time

import torch

from allocator.evaluate import perplexity
from allocator.models.corpus import default_calibration_text, default_evaluation_text
from allocator.models.loader import load_model
from allocator.models.windows import token_windows
from allocator.quant.apply import apply_plan, uniform_plan


def main(argv: list[str]) -> None:
    torch.manual_seed(0)
    if len(argv) > 4:
        torch.set_num_threads(int(argv[4]))
    key, method, n_calib = argv[0], argv[1], int(argv[2])
    loaded = load_model("smollm2")
    began = time.time()
    calib = token_windows(
        loaded.tokenizer, default_calibration_text(), seq_len=512, n_windows=n_calib, seed=0
    )
    evaluation = token_windows(
        loaded.tokenizer, default_evaluation_text(), seq_len=512, n_windows=32, contiguous=True
    )
    print("tokenize", time.time() - began, flush=True)
    began = time.time()
    plan = uniform_plan(loaded.model, key)
    apply_plan(
        loaded.model,
        plan,
        calib if method != "rtn" else None,
        method=method,
        act_order=len(argv) > 5 and argv[5] == "act-order",
        progress=False,
    )
    print(key, method, "apply s", round(time.time() - began, 1), "avg bits", plan.avg_bits)
    if len(argv) > 3 and argv[3] == "noeval":
        return
    began = time.time()
    ppl = perplexity(loaded.model, evaluation, progress=False)
    print(key, method, "ppl", ppl, "eval s", round(time.time() - began, 1))


if __name__ == "__main__":
    main(sys.argv[1:])
