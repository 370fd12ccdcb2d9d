"""Checkpoints in the real Hugging Face layout, written by the toolkit (training, distillation, int8) and by the
test and benchmark fixtures: config.json, safetensors shards with their index, and a byte-level BPE tokenizer
(tokenizer.json, tokenizer_config.json with the DeepSeek chat template) trained on built-in text. Nothing is
downloaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)
_BASE: dict[str, Any] = {
    "vocab_size": 0,  # set from the trained tokenizer
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": None,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "n_shared_experts": 1,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "norm_topk_prob": False,
    "routed_scaling_factor": 1.0,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "float32",
}

VARIANTS: dict[str, dict[str, Any]] = {
    # DeepSeek-V2-Lite: no q compression, softmax gate, greedy top-k
    "v2-lite": {
        "model_type": "deepseek_v2",
        "architectures": ["DeepseekV2ForCausalLM"],
        "topk_method": "greedy",
        "scoring_func": "softmax",
        "n_group": 1,
        "topk_group": 1,
    },
    # DeepSeek-V2: q LoRA, group-limited greedy routing, routed scaling
    "v2": {
        "model_type": "deepseek_v2",
        "architectures": ["DeepseekV2ForCausalLM"],
        "q_lora_rank": 48,
        "topk_method": "group_limited_greedy",
        "scoring_func": "softmax",
        "n_group": 4,
        "topk_group": 2,
        "routed_scaling_factor": 2.0,
    },
    # DeepSeek-V3/R1: sigmoid gate, aux-loss-free bias, YaRN rope, first layers dense
    "v3": {
        "model_type": "deepseek_v3",
        "architectures": ["DeepseekV3ForCausalLM"],
        "q_lora_rank": 48,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "n_group": 4,
        "topk_group": 2,
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
        "first_k_dense_replace": 1,
        "rope_scaling": {
            "type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 512,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
    },
}

_CORPUS_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "by",
    "at",
    "be",
    "this",
    "from",
    "or",
    "have",
    "not",
    "are",
    "one",
    "all",
    "there",
    "their",
    "model",
    "expert",
    "token",
    "cloud",
    "serve",
    "answer",
    "question",
    "sum",
    "list",
    "sort",
    "reverse",
    "number",
    "word",
    "letter",
    "user",
    "assistant",
    "hello",
    "world",
    "mixture",
    "attention",
    "latent",
    "cache",
    "batch",
    "request",
    "price",
    "credit",
    "tenant",
    "key",
    "limit",
    "queue",
    "route",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "plus",
    "minus",
    "times",
    "equals",
    "what",
    "is",
    "the",
    "result",
    "apple",
    "banana",
    "cherry",
    "river",
    "mountain",
    "ocean",
    "forest",
    "city",
    "country",
    "language",
    "music",
    "science",
    "history",
]


def corpus(lines: int = 3000, seed: int = 0) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(lines):
        n = int(torch.randint(4, 14, (1,), generator=gen))
        idx = torch.randint(0, len(_CORPUS_WORDS), (n,), generator=gen).tolist()
        nums = torch.randint(0, 1000, (2,), generator=gen).tolist()
        out.append(" ".join(_CORPUS_WORDS[i] for i in idx) + f" {nums[0]} + {nums[1]} = {nums[0] + nums[1]}.")
    return out


def write_tokenizer(out_dir: Path, vocab_size: int = 512, texts: list[str] | None = None,
                    chat_template: str = CHAT_TEMPLATE, added_tokens: Sequence[str] = ()) -> int:
    """Train a byte-level BPE tokenizer into ``out_dir``; returns its vocabulary size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, USER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts or corpus(), trainer=trainer)
    # ordinary (not special) added tokens, as the template's markers are in DeepSeek's tokenizer: decoding keeps them
    tok.add_tokens([AddedToken(token, special=False, normalized=False) for token in added_tokens])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "model_max_length": 16384,
                "tokenizer_class": "PreTrainedTokenizerFast",
                "clean_up_tokenization_spaces": False,
                "legacy": True,
                "chat_template": chat_template,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return tok.get_vocab_size()


def make_config(variant: str = "v2-lite", **overrides: Any) -> dict[str, Any]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    config = {**_BASE, **VARIANTS[variant], **overrides}
    config["num_key_value_heads"] = overrides.get("num_key_value_heads", config["num_attention_heads"])  # MLA: unused
    config.setdefault("bos_token_id", 0)
    config.setdefault("eos_token_id", 1)
    return config


def save_checkpoint(out_dir: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], shards: int = 1) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    names = list(tensors)
    if shards <= 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {n: tensors[n].contiguous() for n in names[s * per : (s + 1) * per]}
        save_file(chunk, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
