"""Head-to-head: AutoRound's AutoScheme and ModelOpt's auto_quantize, each run by its own library.

Each tool gets the same model, the same calibration text and an average-bits target; its own
pipeline chooses per-layer formats and quantizes. The result is then measured by allocator's
evaluation on the same held-out windows as ``allocator run`` (perplexity, and mean KL against
the unmodified fp32 model), and its real size is counted the way allocator counts it: over the
linear layers of the transformer blocks, ``b + 16/g`` bits per weight for a symmetric b-bit
format with one fp16 scale per group of g (``b + 32/g`` with an fp16 zero too), 16 for a layer
left unquantized; ModelOpt's AWQ pre-quantization scale (one fp16 per input channel of a layer)
is added as well. Wall time and peak RSS cover the tool's pipeline only (load, search,
quantize), not the evaluation. One tool run per process:

    nice -n 19 python benchmarks/peers.py autoround --budget 3.5
    nice -n 19 python benchmarks/peers.py modelopt --budget 3.5 --formats builtin
    nice -n 19 python benchmarks/peers.py modelopt --budget 3.5 --formats custom
    python benchmarks/peers.py table          # results/peers.md from results/peers/*.json

A failure (the tool refuses the target, cannot run on CPU, ...) is recorded with its exact
error instead of numbers. ``--model`` also takes a Hugging Face folder (a tiny model for a smoke
test, with ``--seq-len 64 --eval-windows 4 --out /tmp/x``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "peers"
MODEL_RESULTS = ROOT / "results" / "models"
# calibration text, held-out evaluation text and evaluation windows per model, as
# benchmarks/models.py runs ``allocator run`` on them (another folder: SmolLM2's texts)
TEXTS = {
    "smollm2": ("austen-calib", "austen-eval", 32),
    "gemma3-270m": ("pydoc-calib", "pydoc-eval", 16),
}


def texts(model: str) -> tuple[str, str, int]:
    """By the model's name or its folder's name (``/models/gemma3-270m``)."""
    return TEXTS.get(model, TEXTS.get(Path(model).name, TEXTS["smollm2"]))


app = typer.Typer(add_completion=False)


# ---------------------------------------------------------------- shared helpers


def model_folder(spec: str) -> Path:
    """The Hugging Face folder allocator loads for ``spec`` (SmolLM2: its safetensors cache)."""
    from allocator.models.corpus import cache_dir
    from allocator.models.loader import _file_fingerprint, load_model, resolve_model_source

    folder, gguf = resolve_model_source(spec)
    if gguf is None:
        return folder
    cached = cache_dir() / "models" / _file_fingerprint(folder / gguf)
    if not (cached / "config.json").is_file():
        load_model(spec)  # builds the cache once
    return cached


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of any child it waited for, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def block_linears(model: Any) -> dict[str, Any]:
    """The nn.Linear layers inside the decoder blocks (what allocator allocates)."""
    import torch

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    }


def layer_bits(
    shape: tuple[int, int], bits: int | None, group: int | None, symmetric: bool
) -> float:
    """Bits of one (out, in) layer: allocator's size model (``allocator.schema.size``) written out."""
    out_features, in_features = shape
    numel = out_features * in_features
    if bits is None or bits >= 16:
        return 16.0 * numel
    g = in_features if group is None or group <= 0 else group
    groups = out_features * math.ceil(in_features / g)
    return numel * bits + groups * (16 + (0 if symmetric else 16))


def text_windows(tokenizer: Any, name: str, seq_len: int, n: int) -> Any:
    from allocator.models.corpus import read_texts
    from allocator.models.windows import token_windows

    return token_windows(tokenizer, read_texts([name]), seq_len=seq_len, n_windows=n,
                         contiguous=True)  # fmt: skip


def evaluate_result(model: Any, spec: str, seq_len: int, n_windows: int | None) -> dict[str, Any]:
    """Perplexity and KL of ``model`` vs the unmodified fp32 model, as ``allocator run`` does."""
    from allocator.evaluate import evaluate_many
    from allocator.models.loader import load_model

    loaded = load_model(spec)
    _, held_out, default_windows = texts(spec)
    windows = text_windows(loaded.tokenizer, held_out, seq_len, n_windows or default_windows)
    began = time.perf_counter()
    both = evaluate_many({"tool": model}, windows, loaded.model, reference_name="unmodified",
                         progress=False)  # fmt: skip
    result, reference = both["tool"], both["unmodified"]
    return {
        "perplexity": result.perplexity,
        "kl": result.kl,
        "reference_perplexity": reference.perplexity,
        "eval_windows": int(windows.shape[0]),
        "seq_len": int(windows.shape[1]),
        "eval_seconds": round(time.perf_counter() - began, 1),
    }


def write(record: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model = "" if record["model"] == "smollm2" else f"{Path(record['model']).name}_"
    path = out / f"{model}{record['tool']}@{record['budget']}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return path


def base_record(tool: str, package: str, budget: float, model: str, label: str) -> dict[str, Any]:
    import torch

    return {
        "tool": label,
        "package": f"{package} {version(package)}",
        "torch": torch.__version__,
        "budget": budget,
        "model": model,
        "calib": texts(model)[0],
        "eval": texts(model)[1],
        "command": "python " + " ".join(sys.argv),
        "status": "ok",
        "library": tool,
    }


def fail(record: dict[str, Any], exc: BaseException, began: float) -> dict[str, Any]:
    record.update(
        status="error",
        error=f"{type(exc).__name__}: {exc}",
        traceback=traceback.format_exc(limit=12),
        wall_seconds=round(time.perf_counter() - began, 1),
        peak_rss_mb=peak_rss_mb(),
    )
    return record


# ---------------------------------------------------------------- AutoRound AutoScheme

AUTOROUND_OPTIONS = "W2A16G64,W4A16,W8A16"  # the option list of the AutoScheme API example


@app.command()
def autoround(
    budget: float = typer.Option(3.5, help="AutoScheme avg_bits target"),
    model: str = typer.Option("smollm2"),
    options: str = typer.Option(AUTOROUND_OPTIONS, help="AutoScheme candidate schemes"),
    iters: int = typer.Option(0, help="0: (optimized) RTN, as in the AutoScheme doc example"),
    nsamples: int = typer.Option(4, help="calibration samples of --calib-seqlen tokens"),
    calib_seqlen: int = typer.Option(2048, help="AutoRound seqlen (its default 2048)"),
    seq_len: int = typer.Option(512, help="evaluation window length"),
    eval_windows: int | None = typer.Option(None, help="default: the model's, as in models.py"),
    out: str = typer.Option(str(RESULTS)),
) -> None:
    """AutoRound AutoScheme (mixed W2/W4/W8 under avg_bits) on CPU, its own pipeline end to end."""
    record = base_record("autoround", "auto-round", budget, model, "autoround-autoscheme")
    settings = {"options": options, "iters": iters, "nsamples": nsamples,
                "seqlen": calib_seqlen, "device_map": "cpu", "enable_torch_compile": False,
                "dataset": f"{record['calib']} as a local JSON list of 16000-character strings"}  # fmt: skip
    record["settings"] = settings
    # AutoScheme caches its per-option scores under ~/.cache/auto_round: a fresh folder, so the
    # measured time is a cold run.
    os.environ["AR_AUTO_SCHEME_CACHE"] = tempfile.mkdtemp(prefix="ar-scheme-")
    from allocator.models.corpus import read_texts

    text = read_texts([record["calib"]])
    calib = Path(tempfile.mkdtemp(prefix="ar-calib-")) / "calib.json"
    # AutoScheme only takes a dataset name or file (no list of strings); the local-file loader
    # drops samples shorter than seqlen tokens, so give long chunks.
    calib.write_text(json.dumps([text[i : i + 16000] for i in range(0, len(text), 16000)]))
    folder = model_folder(model)
    began = time.perf_counter()
    try:
        from auto_round import AutoRound, AutoScheme

        scheme = AutoScheme(avg_bits=budget, options=options)
        ar = AutoRound(
            model=str(folder), scheme=scheme, iters=iters, nsamples=nsamples,
            seqlen=calib_seqlen, dataset=str(calib), device_map="cpu",
            enable_torch_compile=False,
        )  # fmt: skip
        quantized, layer_config = ar.quantize()
    except Exception as exc:
        write(fail(record, exc, began), Path(out))
        raise typer.Exit(1) from exc
    record["wall_seconds"] = round(time.perf_counter() - began, 1)
    record["peak_rss_mb"] = peak_rss_mb()
    record["model_dtype_during_quantization"] = str(next(quantized.parameters()).dtype)
    quantized = quantized.float()  # bf16 fake-quantized values are exact in fp32
    layers = block_linears(quantized)
    total_bits = total_weights = 0.0
    choices: dict[str, int] = {}
    for name, module in layers.items():
        cfg = layer_config.get(name, {})
        bits = cfg.get("bits", 16)
        key = f"W{bits}G{cfg.get('group_size')}{'' if cfg.get('sym', True) else 'asym'}"
        choices[key] = choices.get(key, 0) + 1
        total_bits += layer_bits(tuple(module.weight.shape), bits, cfg.get("group_size"),
                                 bool(cfg.get("sym", True)))  # fmt: skip
        total_weights += module.weight.numel()
    record["real_avg_bits"] = total_bits / total_weights
    record["layer_choices"] = choices
    record["layers"] = len(layers)
    record.update(evaluate_result(quantized.eval(), model, seq_len, eval_windows))
    write(record, Path(out))


# ---------------------------------------------------------------- ModelOpt auto_quantize


def _custom_int_cfg(bits: int, block: int) -> dict[str, Any]:
    """ModelOpt's INT4 blockwise weight-only preset with another bit width (a custom format,
    which auto_quantize documents as experimental)."""
    import copy

    import modelopt.torch.quantization as mtq

    cfg = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    for entry in cfg["quant_cfg"]:
        if entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"] = {"num_bits": bits, "block_sizes": {-1: block, "type": "static"}}
    return cfg


def _modelopt_formats(which: str) -> tuple[list[Any], list[str]]:
    builtin = ["INT4_AWQ_CFG", "INT8_WEIGHT_ONLY_CFG"]
    if which == "builtin":
        return builtin, builtin
    if which == "custom":
        return [_custom_int_cfg(2, 64), _custom_int_cfg(3, 128), *builtin], [
            "INT2 block 64 (custom)", "INT3 block 128 (custom)", *builtin
        ]  # fmt: skip
    raise typer.BadParameter(f"--formats {which}: builtin or custom")


def _quantizer_format(module: Any) -> tuple[int | None, int | None]:
    """(bits, group) of a quantized linear's enabled weight quantizer; (None, None) if off."""
    quantizer = getattr(module, "weight_quantizer", None)
    if quantizer is None or not quantizer.is_enabled:
        return None, None
    bits = quantizer.num_bits
    if not isinstance(bits, int):
        raise ValueError(f"non-integer format {bits!r}")
    blocks = getattr(quantizer, "block_sizes", None)
    if blocks:
        return bits, int(blocks.get(-1) or blocks.get(1))
    if quantizer.axis is None:  # one scale for the whole tensor
        return bits, module.weight.numel()
    return bits, None  # per output channel: one group per row


@app.command()
def modelopt(
    budget: float = typer.Option(3.5, help="real bits target (block linears, overhead counted)"),
    model: str = typer.Option("smollm2"),
    formats: str = typer.Option(
        "builtin", help="builtin: INT4_AWQ + INT8 weight-only; custom: + INT2/INT3 blockwise"
    ),
    effective_bits: float | None = typer.Option(
        None, help="ModelOpt's effective_bits (scales not counted); default budget - 0.14"
    ),
    calib_windows: int = typer.Option(16, help="calibration/score batches of one window"),
    seq_len: int = typer.Option(512),
    eval_windows: int | None = typer.Option(None, help="default: the model's, as in models.py"),
    out: str = typer.Option(str(RESULTS)),
) -> None:
    """ModelOpt mtq.auto_quantize (gradient search, integer weight-only formats) on CPU."""
    label = "modelopt-autoquantize" + ("" if formats == "builtin" else f"-{formats}")
    record = base_record("modelopt", "nvidia-modelopt", budget, model, label)
    # ModelOpt's effective bits count 4 for INT4 block 128 (no scales); allocator counts the
    # fp16 scales: 4 + 5 * 16 / 576 = 4.139 on a 576-input layer. Aim below by that much.
    target = budget - 0.14 if effective_bits is None else effective_bits
    fmt_objects, fmt_names = _modelopt_formats(formats)
    record["settings"] = {"quantization_formats": fmt_names, "effective_bits": target,
                          "method": "gradient", "num_calib_steps": calib_windows,
                          "num_score_steps": calib_windows, "batch": f"1 x {seq_len} tokens",
                          "disabled_layers": "*lm_head*",
                          "cost": "excluded_module_name_patterns=['*lm_head*']"}  # fmt: skip
    began = time.perf_counter()
    try:
        import modelopt.torch.quantization as mtq

        from allocator.models.loader import load_model

        loaded = load_model(model)
        windows = text_windows(loaded.tokenizer, record["calib"], seq_len, calib_windows)
        batches = [windows[i : i + 1] for i in range(windows.shape[0])]

        def forward_step(net: Any, batch: Any) -> Any:
            return net(input_ids=batch, labels=batch, use_cache=False)

        def loss_func(output: Any, batch: Any) -> Any:
            return output.loss

        quantized, state = mtq.auto_quantize(
            loaded.model,
            constraints={"effective_bits": target,
                         "cost": {"excluded_module_name_patterns": ["*lm_head*"]}},
            quantization_formats=fmt_objects, data_loader=batches,
            forward_step=forward_step, loss_func=loss_func, disabled_layers=["*lm_head*"],
            num_calib_steps=len(batches), num_score_steps=len(batches), method="gradient",
        )  # fmt: skip
    except Exception as exc:
        write(fail(record, exc, began), Path(out))
        raise typer.Exit(1) from exc
    record["wall_seconds"] = round(time.perf_counter() - began, 1)
    record["peak_rss_mb"] = peak_rss_mb()
    best = state.get("best", {}) if isinstance(state, dict) else {}
    record["tool_effective_bits"] = best.get("constraints", {}).get("effective_bits")
    layers = block_linears(quantized)
    total_bits = total_weights = awq_bits = 0.0
    choices: dict[str, int] = {}
    for module in layers.values():
        bits, group = _quantizer_format(module)
        key = "fp16" if bits is None else f"INT{bits}" + (f"G{group}" if group else "-channel")
        choices[key] = choices.get(key, 0) + 1
        total_bits += layer_bits(tuple(module.weight.shape), bits, group, True)
        total_weights += module.weight.numel()
        pre = getattr(getattr(module, "input_quantizer", None), "pre_quant_scale", None)
        if bits is not None and pre is not None:
            awq_bits += 16.0 * pre.numel()
    record["real_avg_bits_without_awq_scale"] = total_bits / total_weights
    record["real_avg_bits"] = (total_bits + awq_bits) / total_weights
    record["layer_choices"] = choices
    record["layers"] = len(layers)
    record.update(evaluate_result(quantized.eval(), model, seq_len, eval_windows))
    write(record, Path(out))


# ---------------------------------------------------------------- table


@app.command()
def table(model: str = typer.Option("smollm2"), out: str = typer.Option(str(RESULTS))) -> None:
    """Collect results/peers/*.json (and allocator's results/models rows) into results/peers.md."""
    from peers_report import write_table

    print(f"wrote {write_table(Path(out), MODEL_RESULTS, model, texts(model)[1])}")


if __name__ == "__main__":
    app()
