"""Random DeepSeek checkpoints in the real Hugging Face layout, for tests, benchmarks and the set-up default.

Nothing is downloaded: a small byte-level BPE tokenizer is trained here on built-in text, and weights are
drawn from a seeded generator. The files are exactly what a hub checkpoint holds (config.json,
safetensors shards with an index, tokenizer.json, tokenizer_config.json with a chat template), so they go
through the real loader.
"""

from __future__ import annotations

import json
import math
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
# DeepSeek-R1's shape: the generation prompt opens the thinking block; past answers are shown without theirs.
R1_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(
    "message['content'] + eos_token", "message['content'].split('</think>')[-1] + eos_token"
).replace("{{ '<｜Assistant｜>' }}{% endif %}", "{{ '<｜Assistant｜><think>\\n' }}{% endif %}")
# DeepSeek-V3's tool-call tokens as its template writes them (tools listed up front, as vLLM's template does).
TOOLS_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for tool in tools or [] %}"
    "{{ tool['function']['name'] + ': ' + (tool | tojson) + '\\n' }}{% endfor %}"
    "{% set ns = namespace(tool=false) %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{ '<｜Assistant｜>' + (message['content'] or '') + '<｜tool▁calls▁begin｜>' }}"
    "{% for call in message['tool_calls'] %}{{ '\\n' if not loop.first else '' }}"
    "{{ '<｜tool▁call▁begin｜>function<｜tool▁sep｜>' + call['function']['name'] + '\\n```json\\n' }}"
    "{{ call['function']['arguments'] + '\\n```<｜tool▁call▁end｜>' }}"
    "{% endfor %}{{ '<｜tool▁calls▁end｜>' + eos_token }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ('<｜tool▁outputs▁end｜>' if ns.tool else '<｜Assistant｜>') + message['content'] + eos_token }}"
    "{% set ns.tool = false %}"
    "{% elif message['role'] == 'tool' %}{{ '\\n' if ns.tool else '<｜tool▁outputs▁begin｜>' }}"
    "{{ '<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>' }}{% set ns.tool = true %}"
    "{% endif %}{% endfor %}"
    "{% if ns.tool %}{{ '<｜tool▁outputs▁end｜>' }}{% elif add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)
CHAT_TEMPLATES = {"default": CHAT_TEMPLATE, "r1": R1_CHAT_TEMPLATE, "deepseek-tools": TOOLS_CHAT_TEMPLATE}
# Ordinary (not special) added tokens, as in DeepSeek's tokenizer: decoding keeps them in the text.
_TEMPLATE_TOKENS = {
    "r1": ["<think>", "</think>"],
    "deepseek-tools": [f"<｜tool▁{name}｜>" for name in ("calls▁begin", "calls▁end", "call▁begin", "call▁end", "sep",
                                                       "outputs▁begin", "outputs▁end", "output▁begin", "output▁end")],
}

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
                    chat_template: str = "default") -> int:
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
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in _TEMPLATE_TOKENS.get(chat_template, [])])
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
                "chat_template": CHAT_TEMPLATES[chat_template],
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


def random_state_dict(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 tensors named and shaped as in the published DeepSeek checkpoints."""
    gen = torch.Generator().manual_seed(seed)
    h, heads = config["hidden_size"], config["num_attention_heads"]
    nope, rope, v = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    lora, q_lora = config["kv_lora_rank"], config.get("q_lora_rank")

    def linear(out: int, inp: int) -> torch.Tensor:
        return torch.randn(out, inp, generator=gen) / math.sqrt(inp)

    def norm(dim: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(dim, generator=gen)

    def mlp(prefix: str, inter: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.gate_proj.weight": linear(inter, h),
            f"{prefix}.up_proj.weight": linear(inter, h),
            f"{prefix}.down_proj.weight": linear(h, inter),
        }

    sd = {
        "model.embed_tokens.weight": torch.randn(config["vocab_size"], h, generator=gen),
        "model.norm.weight": norm(h),
    }
    if not config.get("tie_word_embeddings"):
        sd["lm_head.weight"] = linear(config["vocab_size"], h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        sd[f"{p}.input_layernorm.weight"] = norm(h)
        sd[f"{p}.post_attention_layernorm.weight"] = norm(h)
        a = f"{p}.self_attn"
        if q_lora is None:
            sd[f"{a}.q_proj.weight"] = linear(heads * (nope + rope), h)
        else:
            sd[f"{a}.q_a_proj.weight"] = linear(q_lora, h)
            sd[f"{a}.q_a_layernorm.weight"] = norm(q_lora)
            sd[f"{a}.q_b_proj.weight"] = linear(heads * (nope + rope), q_lora)
        sd[f"{a}.kv_a_proj_with_mqa.weight"] = linear(lora + rope, h)
        sd[f"{a}.kv_a_layernorm.weight"] = norm(lora)
        sd[f"{a}.kv_b_proj.weight"] = linear(heads * (nope + v), lora)
        sd[f"{a}.o_proj.weight"] = linear(h, heads * v)
        n_experts = config.get("n_routed_experts")
        is_moe = n_experts and i >= config["first_k_dense_replace"] and i % config["moe_layer_freq"] == 0
        if not is_moe:
            sd.update(mlp(f"{p}.mlp", config["intermediate_size"]))
            continue
        sd[f"{p}.mlp.gate.weight"] = torch.randn(n_experts, h, generator=gen) / math.sqrt(h)
        if config["topk_method"] == "noaux_tc":
            sd[f"{p}.mlp.gate.e_score_correction_bias"] = 0.05 * torch.randn(n_experts, generator=gen)
        for e in range(n_experts):
            sd.update(mlp(f"{p}.mlp.experts.{e}", config["moe_intermediate_size"]))
        if config.get("n_shared_experts"):
            sd.update(mlp(f"{p}.mlp.shared_experts", config["moe_intermediate_size"] * config["n_shared_experts"]))
    return sd


def quantize_fp8_blocks(weight: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 [out, in] -> (float8_e4m3fn weight, fp32 weight_scale_inv per block), as DeepSeek-V3 ships them."""
    rows, cols = weight.shape
    br, bc = math.ceil(rows / block[0]), math.ceil(cols / block[1])
    padded = torch.zeros(br * block[0], bc * block[1])
    padded[:rows, :cols] = weight
    tiles = padded.view(br, block[0], bc, block[1])
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max
    q = (tiles / scale[:, None, :, None]).to(torch.float8_e4m3fn).view(br * block[0], bc * block[1])
    return q[:rows, :cols].contiguous(), scale


def _fp8_eligible(name: str) -> bool:
    return name.endswith("proj.weight") or name.endswith("proj_with_mqa.weight")


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


def write_random_checkpoint(
    out_dir: str | Path,
    variant: str = "v2-lite",
    seed: int = 0,
    shards: int = 1,
    dtype: torch.dtype = torch.float32,
    fp8_block: tuple[int, int] | None = None,
    tokenizer_vocab: int = 512,
    chat_template: str = "default",
    **overrides: Any,
) -> Path:
    """Write a random checkpoint; with ``fp8_block`` the projections are stored FP8 block-scaled.

    Returns ``out_dir``. With fp8, the dequantized twin of each weight is what the model really holds.
    """
    out = Path(out_dir)
    vocab = write_tokenizer(out, tokenizer_vocab, chat_template=chat_template)
    config = make_config(variant, vocab_size=overrides.pop("vocab_size", vocab), **overrides)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    tensors = {n: t.to(dtype) for n, t in random_state_dict(config, seed).items()}
    if fp8_block is not None:
        config["quantization_config"] = {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": list(fp8_block),
        }
        for name in [n for n in tensors if _fp8_eligible(n)]:
            tensors[name], tensors[name + "_scale_inv"] = quantize_fp8_blocks(tensors[name].float(), fp8_block)
    save_checkpoint(out, config, tensors, shards)
    return out


def dequantized_twin(fp8_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the fp32 checkpoint whose weights equal the FP8 checkpoint's dequantized weights."""
    from moecloud.engine.loader import checkpoint_files, dequantize_fp8, iter_tensors

    src, out = Path(fp8_dir), Path(out_dir)
    config = json.loads((src / "config.json").read_text())
    block = tuple(config.pop("quantization_config")["weight_block_size"])
    tensors = dict(iter_tensors(checkpoint_files(src)))
    twin = {
        n: (dequantize_fp8(t, tensors[n + "_scale_inv"], block) if t.dtype == torch.float8_e4m3fn else t.float())
        for n, t in tensors.items()
        if not n.endswith("_scale_inv")
    }
    config["torch_dtype"] = "float32"
    save_checkpoint(out, config, twin)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((src / name).read_bytes())
    return out
