"""The run's output folder state (per-stage hashes) and the lazily loaded model, texts, windows."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from allocator.pipeline.settings import RunSettings
from allocator.schema.io import atomic_write_text


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
            self._loaded = load_model(self.settings.model, **self._load_options())
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

        return load_model(self.settings.model, **self._load_options()).model

    def _load_options(self) -> dict[str, Any]:
        """Device and, with ``--offload``, weights left on disk (``allocator.models.offload``)."""
        s = self.settings
        return {"device": s.device, "offload": s.offload,
                "offload_activations": s.offload_activations}  # fmt: skip

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
            bos=self.settings.bos,
        )

    def data_hash(self, which: str) -> str:
        return hashlib.sha256(self.text(which).encode()).hexdigest()[:16]
