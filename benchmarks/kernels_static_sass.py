"""What a compiled kernel does, read from its cubin with the tools the Triton wheel ships (the
analysis half of ``kernels_static.py``).

- ``ptxas -v`` (same flags as Triton): registers, spill stores/loads, stack;
- ``nvdisasm`` (SASS): the weight loads (every kernel loads its packed weights with
  ``eviction_policy="evict_first"``, SASS ``LDG.E.EF``, and nothing else), their widths
  (``LDG.E.EF.128`` = 16 bytes), and the main K loop (the backward branch whose body holds
  the weight loads).

``analyze`` turns these into per-kernel numbers: SASS instructions per weight byte and an issue
floor at the issue rate of an H100 SXM, next to the memory floor at its copy bandwidth.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from pathlib import Path

from kernels_static_compile import Captured

H100 = {"sms": 132, "schedulers": 4, "clock_ghz": 1.98, "copy_gbps": 3021.0}


def tool(name: str) -> str:
    """A binary of the Triton wheel's NVIDIA backend (ptxas, nvdisasm, cuobjdump)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return str(Path(get_ptxas(90).path).parent / name)


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
