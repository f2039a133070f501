"""Tiny random-weight models of every supported family, built with transformers (no download).

``tiny_model(family)`` returns an eval-mode model with 2-4 blocks and hidden size 64; configs
with sliding attention use a window of 8 tokens, so with the 24-token test windows the sliding
and full masks really differ.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

VOCAB = 128
SLIDING = 8

_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_COMMON))


def _qwen2() -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    layer_types = ["full_attention", "sliding_attention"] * 2
    return Qwen2ForCausalLM(
        Qwen2Config(
            **_COMMON, use_sliding_window=True, sliding_window=SLIDING, max_window_layers=2,
            layer_types=layer_types,
        )
    )  # fmt: skip


def _qwen3() -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**_COMMON, head_dim=16))


def _mistral() -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**_COMMON, sliding_window=SLIDING))


def _gemma2() -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(
        Gemma2Config(**_COMMON, head_dim=16, sliding_window=SLIDING, final_logit_softcapping=5.0)
    )


def _gemma3() -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    layer_types = ["sliding_attention", "full_attention"] * 2
    return Gemma3ForCausalLM(
        Gemma3TextConfig(
            **_COMMON, head_dim=16, sliding_window=SLIDING, layer_types=layer_types,
            rope_local_base_freq=10.0, final_logit_softcapping=5.0,
        )
    )  # fmt: skip


def _phi3() -> Any:
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(**_COMMON, pad_token_id=0))


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=128)
    )


def _gpt_neox() -> Any:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, max_position_embeddings=128,
        )
    )  # fmt: skip


def _mixtral() -> Any:
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(**_COMMON, num_local_experts=4, num_experts_per_tok=2))


def _qwen2_moe() -> Any:
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    return Qwen2MoeForCausalLM(
        Qwen2MoeConfig(
            **_COMMON, moe_intermediate_size=32, shared_expert_intermediate_size=64,
            num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
        )
    )  # fmt: skip


def _bert() -> Any:
    from transformers import BertConfig, BertModel

    return BertModel(
        BertConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, max_position_embeddings=128,
        ),
        add_pooling_layer=False,
    )  # fmt: skip


FAMILIES = {
    "llama": _llama,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "mistral": _mistral,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "bert": _bert,
}
CAUSAL_FAMILIES = [f for f in FAMILIES if f != "bert"]


def tiny_model(family: str = "llama", seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = FAMILIES[family]()
    model.config.use_cache = False
    return model.eval()


def tiny_ids(n: int = 4, seq_len: int = 24, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (n, seq_len), generator=generator)


WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "was",
    "her",
    "she",
    "he",
    "it",
    "had",
    "that",
    "with",
    "for",
    "as",
    "not",
    "be",
    "his",
    "my",
    "you",
    "on",
    "at",
    "but",
    "by",
    "this",
    "which",
    "all",
    "so",
    "have",
    "from",
    "were",
    "they",
    "no",
    "would",
    "been",
    "could",
    "very",
    "mister",
    "elinor",
    "marianne",
    "lady",
    "house",
    "sister",
    "mother",
    "time",
    "every",
    "little",
    "think",
    "know",
    "said",
    "much",
    "own",
    "more",
]


def sample_text(seed: int, n_words: int = 6000) -> str:
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < n_words:
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + ".")
    return " ".join(sentences)


def save_tiny_model(root: Path, layers: int = 4) -> dict[str, Path]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    calib = root / "calib.txt"
    calib.write_text(sample_text(1))
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([calib.read_text()], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128,
    )  # fmt: skip
    folder = root / "model"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"model": folder, "calib": calib}
