"""Static analysis of what the GPU would run: the Triton kernels compiled for sm_90, no GPU needed.

Each kernel launch of ``allocator.kernels`` is run on meta tensors under a fake Triton driver
whose target is ``GPUTarget("cuda", 90, 32)``: the launch compiles the kernel with the
specialization a real launch would get (16-byte aligned pointers, divisibility of the integer
arguments) and runs nothing. The cubin is then read with the tools the Triton wheel ships:

- ``ptxas -v`` (same flags as Triton): registers, spill stores/loads, stack;
- ``nvdisasm`` (SASS): the weight loads (every kernel loads its packed weights with
  ``eviction_policy="evict_first"``, SASS ``LDG.E.EF``, and nothing else), their widths
  (``LDG.E.EF.128`` = 16 bytes), and the main K loop (the backward branch whose body holds
  the weight loads).

Per kernel it records registers, spills, shared memory (what Triton launches with), the weight
load widths, SASS instructions per weight byte (main-loop warp instructions over the weight bytes
the loop moves per pass) and shared-memory instructions in the loop, and an issue floor: the
warp instructions of the whole call over the issue rate of an H100 SXM (132 SMs x 4 schedulers x
1.98 GHz), next to the memory floor of the same call at 3021 GB/s (the H100 copy bandwidth
measured in ``results/kernels_h100.md``). A kernel whose issue floor is above its memory floor
cannot reach the bandwidth limit whatever the occupancy.

    python benchmarks/kernels_static.py              # writes benchmarks/results/kernels_static.md
    python benchmarks/kernels_static.py --quick      # M=1 only, default configs
    python benchmarks/kernels_static.py --json OUT   # the rows as JSON too

Must run without ``TRITON_INTERPRET`` (the interpreter replaces the compiler).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SM90 = ("cuda", 90, 32)
H100 = {"sms": 132, "schedulers": 4, "clock_ghz": 1.98, "copy_gbps": 3021.0}
SHAPE = (8192, 28672)  # K x N, the issue's headline shape
BITS = [2, 3, 4, 5, 6, 8]
MS = [1, 4, 16]


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


def tool(name: str) -> str:
    """A binary of the Triton wheel's NVIDIA backend (ptxas, nvdisasm, cuobjdump)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return str(Path(get_ptxas(90).path).parent / name)


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


def ptxas_usage(ptx: str, arch: str = "sm_90a") -> dict:
    """Registers, spills and stack from ``ptxas -v`` with Triton's flags."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        cmd = [get_ptxas(90).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={arch}", str(src), "-o", str(Path(tmp) / "k.o")]  # fmt: skip
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    return {
        "registers": int(regs.group(1)) if regs else -1,
        "spill_stores": int(spills.group(1)) if spills else -1,
        "spill_loads": int(spills.group(2)) if spills else -1,
        "stack": int(stack.group(1)) if stack else -1,
    }


@dataclasses.dataclass
class Inst:
    op: str
    file: str | None
    line: int | None


def disassemble(cubin: bytes) -> tuple[list[Inst], dict[str, int]]:
    """SASS instructions with their source lines, and the instruction index of each label."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([tool("nvdisasm"), "-g", "-c", str(path)], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
    insts: list[Inst] = []
    labels: dict[str, int] = {}
    where: tuple[str | None, int | None] = (None, None)
    for raw in text.splitlines():
        if m := re.match(r'\s*//## File "(.*)", line (\d+)', raw):
            where = (m.group(1), int(m.group(2)))
        elif m := re.match(r"^(\.L_x_\d+):", raw):
            labels[m.group(1)] = len(insts)
        elif m := re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", raw):
            insts.append(Inst(m.group(1), *where))
    return insts, labels


def loops(insts: list[Inst], labels: dict[str, int]) -> list[tuple[int, int]]:
    """(first, last) instruction index of every backward branch's body."""
    out = []
    for i, inst in enumerate(insts):
        m = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", inst.op)
        if m and labels.get(m.group(1), i + 1) <= i:
            out.append((labels[m.group(1)], i))
    return out


def evict_first_lines(ttgir: str) -> set[tuple[str, int]]:
    """Source lines of the evict-first loads and async copies in the TTGIR (their own locations).

    Pipelined weight loads become ``cp.async`` (SASS ``LDGSTS``), which carries no cache hint;
    they are recognized by their source line, which ptxas keeps exact for these instructions.
    """
    defs = dict(re.findall(r"^(#loc\d+) = loc\((.*)\)$", ttgir, re.M))

    def resolve(text: str, depth: int = 0) -> tuple[str, int] | None:
        if depth > 50:
            return None
        if m := re.match(r'"([^"]+)":(\d+):\d+$', text):
            return m.group(1), int(m.group(2))
        if m := re.match(r"callsite\((#loc\d+) at", text):  # the innermost frame
            return resolve(defs.get(m.group(1), ""), depth + 1)
        if m := re.match(r'"[^"]*"\((#loc\d+)\)$', text):  # a named location
            return resolve(defs.get(m.group(1), ""), depth + 1)
        if re.match(r"#loc\d+$", text):
            return resolve(defs.get(text, ""), depth + 1)
        return None

    out = set()
    for line in ttgir.splitlines():
        m = re.search(r"loc\((#loc\d+)\)\s*$", line) if "evict_first" in line else None
        where = resolve(m.group(1)) if m else None
        if where is not None:
            out.add(where)
    return out


def is_weight_load(inst: Inst, ef_lines: set[tuple[str, int]]) -> bool:
    """A global load of packed weights: every kernel streams them with ``evict_first`` (SASS
    ``LDG.E.EF``) and nothing else; pipelined ones are ``LDGSTS`` on those source lines."""
    opcode = _opcode(inst.op)
    if opcode.startswith("LDGSTS"):
        return (inst.file, inst.line) in ef_lines
    return opcode.startswith("LDG") and ".EF" in opcode


def load_bytes(op: str) -> int:
    """Bytes per thread of a global load instruction (LDG.E.128 -> 16)."""
    m = re.search(r"\.(128|64|U16|S16|U8|S8)\b", op)
    if not m:
        return 4
    return {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}[m.group(1)]


def _opcode(op: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", op).split()[0]


@dataclasses.dataclass
class Tiles:
    """What one compiled kernel does per K tile, to turn the loop into per-byte numbers."""

    unique_bytes: int  # packed weight bytes of one BLOCK_K x BLOCK_N tile
    loaded_bytes: int  # bytes its weight loads fetch per tile (more when codes reload a word)
    count: int  # tiles processed by the whole call (all programs together)


def analyze(captured: Captured, tiles: Tiles, bytes_moved: int, hw: dict = H100) -> dict:
    """Registers, spills, shared memory, weight loads and the main loop of one compiled kernel.

    ``sass_per_byte``: warp instructions of the main loop per unique weight byte it consumes.
    ``issue_floor_us``: the whole call's warp instructions (the code outside the loop once per
    program, the loop once per tile) at one instruction per scheduler per clock.
    """
    kernel = captured.kernel
    meta = kernel.metadata
    warps = meta.num_warps
    usage = ptxas_usage(kernel.asm["ptx"])
    insts, labels = disassemble(kernel.asm["cubin"])
    ef_lines = evict_first_lines(kernel.asm["ttgir"])
    weight = [i for i, inst in enumerate(insts) if is_weight_load(inst, ef_lines)]
    body: tuple[int, int] | None = None
    for first, last in loops(insts, labels):
        n_weight = sum(first <= i <= last for i in weight)
        if n_weight and (body is None or n_weight > sum(body[0] <= i <= body[1] for i in weight)):
            body = (first, last)
    widths = {load_bytes(insts[i].op) for i in weight}
    row = {
        "kernel": captured.name,
        "grid": list(captured.grid),
        "warps": warps,
        "stages": meta.num_stages,
        **usage,
        "shared": meta.shared,
        "sass": len(insts),
        "weight_loads": sorted({_opcode(insts[i].op) for i in weight}),
        "weight_128": widths == {16},
        "memory_floor_us": bytes_moved / (hw["copy_gbps"] * 1e9) * 1e6,
    }
    if body is None:
        return {**row, "loop_sass": 0, "loop_shared": 0, "sass_per_byte": float("nan"),
                "load_ratio": float("nan"), "issue_floor_us": float("nan")}  # fmt: skip
    first, last = body
    loop = insts[first : last + 1]
    loaded = sum(load_bytes(insts[i].op) for i in weight if first <= i <= last) * warps * 32
    unroll = max(1, round(loaded / tiles.loaded_bytes))  # tiles per pass of the loop
    programs = captured.grid[0] * captured.grid[1] * captured.grid[2]
    warp_insts = programs * warps * (len(insts) - len(loop))
    warp_insts += len(loop) * warps * tiles.count / unroll
    issue_rate = hw["sms"] * hw["schedulers"] * hw["clock_ghz"] * 1e9
    return {
        **row,
        "loop_sass": len(loop),
        "loop_shared": sum(_opcode(i.op).startswith(("LDS", "STS", "LDSM", "STSM")) for i in loop),
        "load_ratio": loaded / (tiles.unique_bytes * unroll),
        "sass_per_byte": len(loop) * warps / (tiles.unique_bytes * unroll),
        "issue_floor_us": warp_insts / issue_rate * 1e6,
    }


def budget_per_byte(hw: dict = H100) -> float:
    """Warp instructions per weight byte a kernel can afford and still stream at the copy
    bandwidth (every scheduler issuing every clock)."""
    return hw["sms"] * hw["schedulers"] * hw["clock_ghz"] * 1e9 / (hw["copy_gbps"] * 1e9)


# ---------------------------------------------------------------------------------------------
# cases: a kernel launch on meta tensors, and what it does per tile


@dataclasses.dataclass
class Case:
    path: str  # "round 2" (K-major), "round 1" (bit planes)
    bits: int
    m: int
    config: object  # KernelConfig
    note: str = ""


def _meta(shape, dtype):
    import torch

    return torch.empty(shape, dtype=dtype, device="meta")


def run_case(case: Case, k: int, n: int, group: int) -> dict:
    """Compile the case's launch for sm_90 and analyze the main kernel."""
    import torch
    from kernels_roofline import quant_bytes

    from allocator.quant.packing import plane_widths

    cfg = case.config
    widths = plane_widths(case.bits)
    x = _meta((case.m, k), torch.float16)
    scales = _meta((-(-k // group), n), torch.float16)
    with compile_for_target() as captured:
        if case.path == "round 2":
            from allocator.kernels.layout import kmajor_k
            from allocator.kernels.prepare import PreparedWeight, run_config

            words = [_meta((n, kmajor_k(k) * w // 32), torch.int32) for w in widths]
            planes = [_meta((-(-k // 32) * w, n), torch.int32) for w in widths]
            weight = PreparedWeight(planes, words, scales, scales, case.bits, group, k)
            run_config(x, weight, cfg)
        else:
            from allocator.kernels.dequant import dequant_matmul
            from allocator.kernels.matmul import launch_fused

            planes = [_meta((-(-k // 32) * w, n), torch.int32) for w in widths]
            run = dequant_matmul if cfg.dequant else launch_fused
            run(x, planes, scales, scales, case.bits, group, k, cfg)
    main = captured[0]  # the kernel (dequant path: the dequantization kernel)
    bm = cfg.block_m if not cfg.dequant else 1
    n_tiles = -(-n // cfg.block_n) * -(-k // cfg.block_k) * (-(-case.m // bm) if bm else 1)
    unique = cfg.block_n * cfg.block_k * case.bits // 8
    if case.path == "round 1" and not cfg.reshape:
        loaded = cfg.block_n * cfg.block_k * 4 * len(widths)  # every code loads its word
    else:
        loaded = unique
    row = analyze(main, Tiles(unique, loaded, n_tiles), quant_bytes(k, n, case.m, case.bits, group))
    return {"path": case.path, "bits": case.bits, "m": case.m, "config": short(cfg),
            "note": case.note, **row}  # fmt: skip


def short(config) -> str:
    """KernelConfig -> 'dot bm16 bn128 bk128 w4 st1 sk3' (or the backend's name)."""
    if config.backend != "triton":
        return config.backend
    kind = "dequant" if config.dequant else "dot" if config.use_dot else "gemv"
    flags = " reshape" if config.reshape and not config.kmajor else ""
    return (f"{kind} bm{config.block_m} bn{config.block_n} bk{config.block_k} "
            f"w{config.num_warps} st{config.num_stages} sk{config.split_k}{flags}")  # fmt: skip


def round2_cases(bits_list, ms, k, n, group, sms=132, every=False) -> list[Case]:
    """The default K-major config of each (width, M), the GEMV for M <= 4; ``every``: all."""
    from allocator.kernels.autotune import kmajor_candidates

    out = []
    for bits in bits_list:
        for m in ms:
            pool = [c for c in kmajor_candidates(m, n, k, group, sms) if c.kmajor]
            if not every:
                gemv = [c for c in pool if not c.use_dot][:1]
                pool = pool[:1] + gemv
            for i, config in enumerate(pool):
                out.append(Case("round 2", bits, m, config, "default" if i == 0 else ""))
    return out


def round1_cases(results: Path, bits_list, ms, k, n, group) -> list[Case]:
    """The configs the round-1 autotuner chose on the H100 (results/kernels_h100.json)."""
    from allocator.kernels.autotune import KernelConfig

    if not results.exists():
        return []
    out = []
    for row in json.loads(results.read_text())["rows"]:
        if (row.get("k"), row.get("n"), row.get("group")) != (k, n, group) or "config" not in row:
            continue
        if row["bits"] in bits_list and row["m"] in ms:
            fields = re.findall(r"(\w+)=(\w+)", row["config"])
            values = {f: int(v) if v.isdigit() else v == "True" for f, v in fields}
            note = f"H100: {row['ours_us']:.0f} us, {row['pct_bw']:.0f}% of copy bw"
            out.append(Case("round 1", row["bits"], row["m"], KernelConfig(**values), note))
    return out


COLUMNS = [
    ("path", "{}"), ("bits", "{}"), ("m", "{}"), ("config", "{}"), ("registers", "{}"),
    ("spills", "{}"), ("shared", "{}"), ("weight_loads", "{}"), ("weight_128", "{}"),
    ("loop_sass", "{}"), ("loop_shared", "{}"), ("load_ratio", "{:.2f}"),
    ("sass_per_byte", "{:.3f}"), ("issue_floor_us", "{:.1f}"), ("memory_floor_us", "{:.1f}"),
    ("note", "{}"),
]  # fmt: skip


def markdown(rows: list[dict], k: int, n: int, group: int, env: dict) -> str:
    budget = budget_per_byte()
    lines = [
        "# Static analysis of the low-bit kernels for sm_90 (no GPU)",
        "",
        f"`python benchmarks/kernels_static.py`: {env}. Shape K x N = {k} x {n}, group {group}, "
        "fp16 activations. Each kernel compiled by Triton for `GPUTarget('cuda', 90, 32)` with a "
        "real launch's specialization (meta tensors, a fake driver), then `ptxas -v` and "
        "`nvdisasm` from the Triton wheel.",
        "",
        "- registers / spills (bytes stored + loaded) from ptxas; shared = bytes Triton launches "
        "with; weight loads = the SASS opcodes of the packed-weight loads (every kernel loads "
        "weights `evict_first`, `.EF`; pipelined ones are `LDGSTS`), 128-bit = all of them "
        "16 bytes a thread.",
        "- loop = the main K loop (the backward branch around the weight loads): its SASS "
        "instructions and shared-memory instructions; load ratio = weight bytes its loads fetch "
        "per unique byte (round 1 without `reshape` reloads a word for every code).",
        f"- SASS/B = warp instructions of the loop per weight byte. An H100 SXM issues "
        f"{H100['sms']} x {H100['schedulers']} x {H100['clock_ghz']} GHz warp instructions/s; "
        f"at the measured copy bandwidth ({H100['copy_gbps']:.0f} GB/s) that is **{budget:.3f} "
        "warp instructions per byte**: a kernel above that cannot reach the bandwidth limit "
        "even issuing every clock.",
        "- issue floor = the whole call's warp instructions at that rate (code outside the loop "
        "once per program, the loop once per tile); memory floor = the bytes the call must "
        "move (`kernels_roofline.py`) at the copy bandwidth. Both are lower bounds, not "
        "predictions; the GPU numbers of this round are not measured yet.",
        "- round 1 = the bit-plane kernels with the configs its autotuner chose on the H100 "
        "(`kernels_h100.json`, measured time in the note); round 2 = the prepared-weight "
        "kernels' default config (and the M = 1 GEMV candidate). The GPU image may carry "
        "another Triton than the one above (the H200 image had 3.6): its SASS can differ.",
        "",
        "| " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['path']} | {row['bits']} | {row['m']} | {row['config']} | "
                         f"error: {row['error']} |" + " |" * (len(COLUMNS) - 5))  # fmt: skip
            continue
        cells = {**row, "spills": f"{row['spill_stores']}/{row['spill_loads']}",
                 "weight_loads": " ".join(row["weight_loads"])}  # fmt: skip
        lines.append("| " + " | ".join(fmt.format(cells[c]) for c, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def import_kernels() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kernels_checks import import_kernels as load

    load()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="M=1 only, round 2 defaults")
    parser.add_argument("--all", action="store_true", help="every K-major candidate config")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    reason = compiler_available()
    if reason:
        print(f"cannot compile for sm_90 here: {reason}")
        return 2
    import_kernels()
    import triton

    k, n, group = SHAPE[0], SHAPE[1], 128
    ms = [1] if args.quick else MS
    cases = round2_cases(BITS, ms, k, n, group, every=args.all)
    if not args.quick:
        h100 = ROOT / "benchmarks" / "results" / "kernels_h100.json"
        cases += round1_cases(h100, BITS, ms, k, n, group)
    rows = []
    start = time.time()
    for case in cases:
        try:
            row = run_case(case, k, n, group)
        except Exception as exc:  # report the case, keep the others
            row = {"path": case.path, "bits": case.bits, "m": case.m, "config": short(case.config),
                   "error": f"{type(exc).__name__}: {exc}"[:200]}  # fmt: skip
        print({key: row[key] for key in row if key != "grid"}, flush=True)
        rows.append(row)
    env = {"triton": triton.__version__, "target": "sm_90a", "seconds": round(time.time() - start)}
    rows.sort(key=lambda r: (r["path"] != "round 2", r["m"], r["bits"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels_static.md").write_text(markdown(rows, k, n, group, env))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
