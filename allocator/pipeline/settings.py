"""What ``allocator run`` depends on: its settings (one default per setting) and their hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from allocator.profile.estimators import DEFAULT_ESTIMATOR

DEFAULT_OPTIONS = "bits=2,3,4,5,6 group=64,128,256,c sparsity=0,2:4,0.5"


class RunSettings(BaseModel):
    """Everything ``run`` depends on (hashed per stage for resuming). ``allocator run`` takes its
    options from these fields (``allocator.cli.settings_cli``): describe a new field here."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default="smollm2", description="model: 'smollm2', a .gguf file or a HF folder"
    )
    budget: float = Field(
        default=3.5, gt=0, description="average bits per weight, overhead included"
    )
    estimator: str = Field(
        default=DEFAULT_ESTIMATOR, description="sensitivity estimator (allocator estimators)"
    )
    options: str = Field(
        default=DEFAULT_OPTIONS, description="option grid, e.g. 'bits=2,3,4 group=128'"
    )
    profile_windows: int | None = Field(
        default=None, ge=1, description="profiling windows (estimator default)"
    )
    profile_seq_len: int | None = Field(
        default=None, ge=8, description="profiling window length (estimator default)"
    )
    quant_windows: int = Field(default=32, ge=1, description="GPTQ calibration windows")
    eval_windows: int = Field(default=32, ge=1, description="evaluation windows")
    seq_len: int = Field(default=512, ge=8, description="tokens per calibration/evaluation window")
    solver: str = Field(default="auto", description="solver backend (allocator solvers), or auto")
    method: str = Field(default="gptq", description="quantizer method (allocator methods)")
    calibration: Literal["plain", "sequential", "asymmetric"] = Field(
        default="asymmetric",
        description="what GPTQ/SparseGPT calibrate each layer on: the block as it was (plain), "
        "its compressed earlier layers (sequential), or those aiming at the original outputs",
    )
    refine_rounds: int = Field(
        default=0, ge=0, description="closed-loop refinement rounds (0 = off)"
    )
    refine_windows: int = Field(
        default=4, ge=1, description="calibration windows each refinement measure uses"
    )
    calib_text: list[str] | None = Field(
        default=None, description="calibration text files (default: Jane Austen novels)"
    )
    eval_text: list[str] | None = Field(
        default=None, description="held-out evaluation text files (default: Persuasion)"
    )
    compare_uniform: bool = Field(
        default=True, description="also evaluate uniform at the same size"
    )
    compare_llama: bool = Field(
        default=False,
        description="also evaluate the llama.cpp Q4_K_M-style rule at the same budget",
    )
    calibrate_options: bool = Field(
        default=False,
        description="correct each option's losses by measured KL on a few sample units",
    )
    rescale_to_method: bool = Field(
        default=False,
        description="scale the table's round-to-nearest losses to the error --method leaves "
        "(GPTQ/SparseGPT) per projection kind; off: it measured worse on Gemma 3",
    )
    validate_plan: bool = Field(
        default=True,
        description="measure plan vs uniform on held-out calibration windows; keep the better",
    )
    validate_windows: int = Field(
        default=8, ge=1, description="held-out calibration windows to validate on"
    )
    near_uniform: bool = Field(
        default=True,
        description="validation also measures the table re-solved on dense options near uniform",
    )
    bos: bool | None = Field(
        default=None, description="start windows with BOS (default: as the tokenizer does)"
    )
    task: Literal["auto", "causal_lm", "embedding"] = Field(
        default="auto", description="auto (from the model), causal_lm or embedding (encoders)"
    )
    seed: int = Field(default=0, description="random seed")
    device: str = Field(default="cpu", description="cpu or cuda")
    # how, not what: weights read block by block from disk, work spread over Ray (results are
    # the in-memory, one-process run's), so they are left out of the stage hashes (model_dump) and of remote jobs' settings
    offload: bool = Field(
        default=False,
        exclude=True,
        description="keep the weights on disk and read each block only while it runs (models "
        "larger than memory; results equal the in-memory run's)",
    )
    offload_activations: str | None = Field(
        default=None,
        exclude=True,
        description="with --offload: keep the hidden states cached between blocks in files "
        "under this folder",
    )
    ray: str | None = Field(
        default=None,
        exclude=True,
        description="run the profile (estimators that distribute), apply and evaluation work as "
        "Ray tasks: 'auto' (a local Ray instance, or the cluster in $RAY_ADDRESS) or a cluster "
        "ADDRESS (host:6379, see 'ray start --head'); results equal the one-process run's",
    )


def _hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]
