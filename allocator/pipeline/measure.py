"""Measuring a partial plan's KL on calibration windows (the closed-loop refinement's measure)."""

from __future__ import annotations

from typing import Any

from allocator.pipeline.job import Job


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
                hessian = self._stats[name].hessian_fp32
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
