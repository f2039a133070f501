"""Triton kernels compiled for sm_90 without a GPU (the compile half of ``kernels_static.py``).

Inside ``compile_for_target`` a kernel launch on meta tensors runs under a fake Triton driver
whose target is ``GPUTarget("cuda", 90, 32)``: the launch compiles the kernel with the
specialization a real launch would get (16-byte aligned pointers, divisibility of the integer
arguments) and runs nothing; the compiled kernels are collected as ``Captured``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

SM90 = ("cuda", 90, 32)


def compiler_available() -> str | None:
    """None when Triton can compile for sm_90 here, else the reason it cannot."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET is set (the interpreter replaces the compiler)"
    try:
        import triton  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas
    except Exception as exc:  # no triton, or no NVIDIA backend in this build
        return f"triton's NVIDIA backend is not importable: {exc}"
    try:
        path = get_ptxas(90).path
    except Exception as exc:
        return f"no ptxas for sm_90: {exc}"
    if not Path(path).exists():
        return f"no ptxas at {path}"
    return None


@dataclasses.dataclass
class Captured:
    """One kernel launch compiled for the target instead of run."""

    name: str
    grid: tuple[int, int, int]
    kernel: object  # triton CompiledKernel
    constants: dict


class _TargetDriver:
    """Just enough of a Triton driver for compiling: the target, a device and a stream."""

    def __init__(self, target) -> None:
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0


@contextlib.contextmanager
def compile_for_target(target=SM90) -> Iterator[list[Captured]]:
    """Inside, Triton launches compile for ``target`` and run nothing; yields what compiled."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    captured: list[Captured] = []
    original = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        constants = {k: v for k, v in kwargs.items() if isinstance(v, (int, bool))}
        grid3 = tuple([*grid, 1, 1][:3]) if not callable(grid) else (0, 0, 0)
        captured.append(Captured(self.fn.__name__, grid3, kernel, constants))
        return kernel

    previous = driver._active
    driver.set_active(_TargetDriver(GPUTarget(*target)))
    JITFunction.run = run
    try:
        yield captured
    finally:
        JITFunction.run = original
        driver._active = previous
