"""Models larger than memory: in-memory vs ``--offload`` on a synthetic ~1B Llama, and a projection.

``synth`` writes a Llama-architecture model of about 1.0B parameters with random weights
(hidden 2048, MLP 5632, 20 layers, GQA 32/8 heads, SmolLM2's tokenizer and 49k vocabulary) as
sharded bf16 safetensors (generated here, never committed). ``measure`` runs each command as
its own ``allocator`` process, in memory and with ``--offload``, and records its peak RSS
(``/usr/bin/time -v``) and wall time; the outputs of the two modes are compared (tables entry by
entry, checkpoints file by file). ``project`` turns the measured per-block times into the
projected wall time of a 70B Llama's tables on GPUs, with the cost model printed next to it.

    python benchmarks/scale.py synth                 # ~2.2 GB under $ALLOCATOR_CACHE/synth-1b
    python benchmarks/scale.py measure               # results/scale.json
    python benchmarks/scale.py ray-workers           # results/scale_ray.json: 1 vs 2 Ray workers
    python benchmarks/scale.py project               # results/scale.md from results/scale.json
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
app = typer.Typer(add_completion=False)

SYNTH = {  # about 1.0B parameters: 20 blocks of 45.1M linear weights, 0.1B embeddings
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 20,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
LLAMA_70B = {"hidden": 8192, "intermediate": 28672, "layers": 80, "heads": 64, "kv_heads": 8}


def synth_folder() -> Path:
    from allocator.models.corpus import cache_dir

    return cache_dir() / "synth-1b"


def block_shapes(
    hidden: int, intermediate: int, heads: int, kv_heads: int
) -> list[tuple[int, int]]:
    """(out, in) of one Llama block's linear layers (q, k, v, o, gate, up, down)."""
    kv = kv_heads * (hidden // heads)
    return [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden),
            (intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]  # fmt: skip


def block_params(hidden: int, intermediate: int, heads: int, kv_heads: int) -> int:
    """Weights of one Llama block's linear layers."""
    return sum(o * i for o, i in block_shapes(hidden, intermediate, heads, kv_heads))


def sweep_flops(hidden: int, intermediate: int, heads: int, kv_heads: int) -> int:
    """FLOPs of tr(dW H dW^T) for one option over one block's layers (2 out in^2 each)."""
    return sum(2 * o * i * i for o, i in block_shapes(hidden, intermediate, heads, kv_heads))


def count_options(grid: str) -> int:
    """Options in a grid such as 'bits=2,3,4 group=128'."""
    n = 1
    for part in grid.split():
        n *= len(part.split("=", 1)[1].split(","))
    return n


@app.command()
def synth(seed: int = 0) -> None:
    """Write the synthetic ~1B Llama (random weights, sharded bf16 safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from allocator.models.loader import load_model

    out = synth_folder()
    if (out / "config.json").is_file():
        print(f"{out} exists")
        return
    tokenizer = load_model("smollm2").tokenizer  # the SmolLM2 tokenizer: real text, 49k vocabulary
    config = LlamaConfig(vocab_size=len(tokenizer), **SYNTH)
    torch.manual_seed(seed)
    with torch.no_grad():
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    partial = out.with_name(out.name + ".partial")
    model.save_pretrained(partial, max_shard_size="500MB")
    tokenizer.save_pretrained(partial)
    partial.rename(out)
    print(f"wrote {out}: {params / 1e9:.3f} B parameters")


def timed(cmd: list[str]) -> dict[str, Any]:
    """Run one command under ``/usr/bin/time -v``: peak RSS (GB) and wall seconds."""
    began = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return {"cmd": " ".join(cmd), "peak_rss_gb": rss_kb / 2**20, "wall_s": round(wall, 1)}


def table_difference(a: Path, b: Path) -> float:
    """Largest relative difference between two tables' losses."""
    from allocator.schema.io import load_table

    ta, tb = load_table(a), load_table(b)
    worst = 0.0
    for unit, losses in ta.losses.items():
        for key, value in losses.items():
            other = tb.losses[unit][key]
            worst = max(worst, abs(value - other) / max(abs(value), abs(other), 1e-30))
    return worst


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@app.command()
def measure(
    windows: int = typer.Option(4, help="calibration windows per profile"),
    seq_len: int = typer.Option(256),
    options: str = typer.Option("bits=4 group=128", help="option grid of the profiles"),
    work: str = typer.Option("/tmp/scale-bench", help="folder for tables and checkpoints"),
    stages: str = typer.Option("hessian,fisher,rtn", help="rows to (re)run; others are kept"),
) -> None:
    """Profile (hessian, fisher) and RTN apply, in memory and offloaded; results/scale.json."""
    from transformers import AutoConfig

    from allocator.quant.apply import uniform_plan
    from allocator.schema.io import save_plan

    model = synth_folder()
    if not (model / "config.json").is_file():
        raise SystemExit("run 'python benchmarks/scale.py synth' first")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "allocator"]
    config = AutoConfig.from_pretrained(model)
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    save_plan(uniform_plan(skeleton, "b4-g128"), work / "plan.json")
    rows: list[dict[str, Any]] = []
    common = ["--model", str(model), "--windows", str(windows), "--seq-len", str(seq_len)]
    chosen = [stage.strip() for stage in stages.split(",")]
    unknown = set(chosen) - {"hessian", "fisher", "rtn"}
    if unknown:
        raise SystemExit(f"--stages: unknown {sorted(unknown)}; choose from hessian,fisher,rtn")
    if set(chosen) != {"hessian", "fisher", "rtn"} and (RESULTS / "scale.json").is_file():
        old = json.loads((RESULTS / "scale.json").read_text())
        if (old["windows"], old["seq_len"], old["options"]) != (windows, seq_len, options):
            raise SystemExit("--stages: results/scale.json was measured with other --windows, "
                             "--seq-len or --options; rerun every stage with those")  # fmt: skip
    for estimator in [e for e in ("hessian", "fisher") if e in chosen]:
        outs = {}
        for mode, extra in (("in memory", []), ("offload", ["--offload"])):
            out = work / f"{estimator}-{mode.replace(' ', '-')}.json"
            for old in (out, *work.glob(f"{out.name}.journal.jsonl*")):
                old.unlink(missing_ok=True)
            cmd = [*exe, "profile", *common, "--estimator", estimator, "--options",
                   options, "--quiet", "--out", str(out), *extra]  # fmt: skip
            rows.append({"stage": f"profile {estimator}", "mode": mode, **timed(cmd)})
            print(rows[-1], flush=True)
            outs[mode] = out
        rows[-1]["max_rel_difference"] = table_difference(outs["in memory"], outs["offload"])
    digests = {}
    for mode, extra in (("in memory", []), ("offload", ["--offload"])) if "rtn" in chosen else ():
        out = work / f"rtn-{mode.replace(' ', '-')}"
        cmd = [*exe, "apply", "--plan", str(work / "plan.json"), "--model", str(model),
               "--method", "rtn", "--quiet", "--out", str(out), *extra]  # fmt: skip
        rows.append({"stage": "apply rtn b4-g128", "mode": mode, **timed(cmd)})
        print(rows[-1], flush=True)
        digests[mode] = folder_digest(out)
    if digests:
        rows[-1]["identical_checkpoint"] = digests["in memory"] == digests["offload"]
    path = RESULTS / "scale.json"
    kept = json.loads(path.read_text())["rows"] if path.is_file() else []
    ran = {r["stage"] for r in rows}
    rows = sorted([r for r in kept if r["stage"] not in ran] + rows,
                  key=lambda r: ("hessian" not in r["stage"], "apply" in r["stage"]))  # fmt: skip
    params = block_params(SYNTH["hidden_size"], SYNTH["intermediate_size"],
                          SYNTH["num_attention_heads"], SYNTH["num_key_value_heads"])  # fmt: skip
    record = {"model": "synthetic Llama", "config": SYNTH, "vocab": config.vocab_size,
              "block_params": params, "windows": windows, "seq_len": seq_len, "options": options,
              "rows": rows}  # fmt: skip
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


@app.command()
def ray_workers(
    windows: int = typer.Option(2, help="calibration windows per profile"),
    seq_len: int = typer.Option(128),
    options: str = typer.Option("bits=3,4 group=128"),
    work: str = typer.Option("/tmp/scale-ray"),
    estimators: str = typer.Option("kl,fisher", help="rows of results/scale_ray.json to (re)run"),
) -> None:
    """SmolLM2 tables on a local Ray cluster of 1 and of 2 one-thread workers: wall time ratio
    and table equality (results/scale_ray.json; rows of other estimators are kept)."""
    import os

    folder = Path(work)
    folder.mkdir(parents=True, exist_ok=True)
    # `ray start` (Ray >= 2.52) turns token authentication on; the driver must send the token
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_AUTH_MODE": "token"}
    ray = str(Path(sys.executable).with_name("ray"))
    rows, tables = [], {}
    chosen = [name.strip() for name in estimators.split(",")]
    if set(chosen) - {"kl", "fisher"}:
        raise SystemExit(f"--estimators: choose from kl,fisher (got {estimators})")
    for estimator in chosen:
        for workers in (1, 2):
            port = 6390 + workers
            subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
            started = subprocess.run([ray, "start", "--head", f"--port={port}",
                                      f"--num-cpus={workers}", "--include-dashboard=false",
                                      "--disable-usage-stats"], check=True, capture_output=True,
                                     text=True, env=env)  # fmt: skip
            # the head's address as Ray prints it (the node IP, which may not be 127.0.0.1)
            printed = re.search(r"--address='([^']+)'", started.stdout + started.stderr)
            address = printed.group(1) if printed else f"127.0.0.1:{port}"
            out = folder / f"{estimator}-{workers}.json"
            out.unlink(missing_ok=True)
            Path(f"{out}.journal.jsonl").unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "allocator", "profile", "--model", "smollm2",
                   "--estimator", estimator, "--windows", str(windows), "--seq-len",
                   str(seq_len), "--options", options, "--quiet", "--out", str(out),
                   "--ray", address]  # fmt: skip
            began = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - began
            subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
            tables[(estimator, workers)] = out
            rows.append({"estimator": estimator, "workers": workers, "windows": windows,
                         "seq_len": seq_len, "wall_s": round(wall, 1)})  # fmt: skip
            print(rows[-1], flush=True)
        rows[-1]["speedup_vs_1"] = round(rows[-2]["wall_s"] / rows[-1]["wall_s"], 2)
        rows[-1]["max_rel_difference"] = table_difference(
            tables[(estimator, 1)], tables[(estimator, 2)]
        )
    path = RESULTS / "scale_ray.json"
    kept = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows = [r for r in kept if r["estimator"] not in chosen] + rows
    record = {"model": "smollm2", "options": options, "cluster": "ray start --head --num-cpus "
              "1|2 on this 2-core machine, OMP_NUM_THREADS=1", "rows": rows}  # fmt: skip
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


@app.command()
def project(
    gpu_tflops: float = typer.Option(400.0, help="dense bf16 throughput one H100 sustains"),
    cpu_gflops: float = typer.Option(0.0, help="this machine's measured rate (0: from the run)"),
    tokens: int = typer.Option(128 * 2048, help="calibration tokens of the 70B profile"),
    options: int = typer.Option(12, help="options per unit in the kl table"),
    disk_gbps: float = typer.Option(2.0, help="GB/s each node reads bf16 weights from disk"),
) -> None:
    """results/scale.md: the measured table, and projected 70B wall times from a FLOP model."""
    rec = json.loads((RESULTS / "scale.json").read_text())
    lines = [
        "# Models larger than memory (`python benchmarks/scale.py measure`)",
        "",
        f"Synthetic Llama, {rec['config']['num_hidden_layers']} blocks of "
        f"{rec['block_params'] / 1e6:.1f}M linear weights, vocabulary {rec['vocab']}, random "
        f"bf16 weights computed in fp32; {rec['windows']} x {rec['seq_len']} calibration tokens.",
        "",
        "| stage | mode | peak RSS GB | wall s | output |",
        "|---|---|---|---|---|",
    ]
    for row in rec["rows"]:
        same = ""
        if "max_rel_difference" in row:
            same = f"max rel. difference to in memory {row['max_rel_difference']:.1e}"
        if "identical_checkpoint" in row:
            same = "checkpoint " + ("byte-identical" if row["identical_checkpoint"] else "DIFFERS")
        lines.append(
            f"| {row['stage']} | {row['mode']} | {row['peak_rss_gb']:.2f} | {row['wall_s']} "
            f"| {same} |"
        )
    # FLOP model: a forward costs 2 FLOPs per weight per token, a backward 4 more
    n_tok = rec["windows"] * rec["seq_len"]
    layers = rec["config"]["num_hidden_layers"]
    by = {(r["stage"], r["mode"]): r for r in rec["rows"]}
    hessian = by[("profile hessian", "offload")]
    synth = (rec["config"]["hidden_size"], rec["config"]["intermediate_size"],
             rec["config"]["num_attention_heads"], rec["config"]["num_key_value_heads"])  # fmt: skip
    measured = layers * (2 * rec["block_params"] * n_tok
                         + count_options(rec["options"]) * sweep_flops(*synth))  # fmt: skip
    rate = cpu_gflops * 1e9 or measured / hessian["wall_s"]
    shape70 = (LLAMA_70B["hidden"], LLAMA_70B["intermediate"], LLAMA_70B["heads"],
               LLAMA_70B["kv_heads"])  # fmt: skip
    big = block_params(*shape70)
    n_layers = LLAMA_70B["layers"]
    forward = 2 * big * n_layers * tokens
    units = 7 * n_layers
    costs = {  # FLOPs, and passes over the weights read from disk (each node reads them)
        "hessian (one forward, X^T X, then tr(dW H dW^T) per option)": (
            forward + options * n_layers * sweep_flops(*shape70), 1),
        "fisher (forward + block-wise backward)": (3 * forward, 2),
        # each unit x option: the downstream blocks run again, on average half the model
        "kl (units x options x half the blocks forward)": (units * options * forward / 2, 1),
    }  # fmt: skip
    read_s = 2 * big * n_layers / (disk_gbps * 1e9)  # bf16 weights, once per pass
    lines += [
        "",
        "## Projected: Llama 70B on 8 and 32 H100s (a FLOP model, not a measurement)",
        "",
        f"Cost model: a block forward is 2 FLOPs per linear weight per token ({big / 1e6:.0f}M "
        f"weights per 70B block, {n_layers} blocks), a backward twice that; {tokens} calibration "
        f"tokens; {options} options per unit; hessian adds 2 out in^2 FLOPs per layer and "
        f"option for tr(dW H dW^T); kl: {units} units x {options} options, each re-running half "
        f"the blocks forward. This machine did the offloaded hessian profile at {rate / 1e9:.1f} "
        "GFLOP/s "
        f"of that model (attention, hooks and disk reads included); a GPU is assumed to "
        f"sustain {gpu_tflops:.0f} TFLOP/s bf16 at the same efficiency relative to peak "
        "(not measured here); work splits evenly across GPUs (tasks per block or per unit); "
        f"each pass over the weights also reads {2 * big * n_layers / 1e9:.0f} GB of bf16 "
        f"weights at {disk_gbps:g} GB/s per node ({_duration(read_s)}), added to the GPU "
        "columns.",
        "",
        "| table | FLOPs | this CPU | 1 node, 8 H100 | 4 nodes, 32 H100 |",
        "|---|---|---|---|---|",
    ]
    efficiency = rate / 1e12  # TFLOP/s achieved here; scaled by the GPU/CPU peak ratio below
    cpu_peak = 0.1  # 2 AVX2 cores: ~0.1 TFLOP/s fp32 peak
    gpu_rate = gpu_tflops * 1e12 * min(1.0, efficiency / cpu_peak)
    for name, (flops, passes) in costs.items():
        cells = [f"{flops:.2e}", _duration(flops / rate)]
        cells += [_duration(flops / (gpu_rate * n) + passes * read_s) for n in (8, 32)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


if __name__ == "__main__":
    app()
