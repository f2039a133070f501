"""What ``allocator run`` depends on: its settings (one default per setting) and their hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    calibrate_options: bool = False
    validate_plan: bool = True
    validate_windows: int = Field(default=8, ge=1)
    retry_near_uniform: bool = True
    bos: bool | None = None
    task: Literal["auto", "causal_lm", "embedding"] = "auto"
    seed: int = 0
    device: str = "cpu"


def _hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]
