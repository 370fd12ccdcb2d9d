"""Random DeepSeek checkpoints in the real Hugging Face layout, for the tests and the benchmarks.

Weights are drawn from a seeded generator and written with the toolkit's own checkpoint writer, so the files
are exactly what a hub checkpoint holds and go through the real loader.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from moecloud.engine.loader import checkpoint_files, iter_tensors
from moecloud.engine.model.layers import dequantize_fp8_blocks
from moecloud.toolkit.checkpoint_files import CHAT_TEMPLATE, make_config, save_checkpoint, write_tokenizer

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
# The template markers the tokenizer learns as added tokens.
_TEMPLATE_TOKENS = {
    "r1": ["<think>", "</think>"],
    "deepseek-tools": [f"<｜tool▁{name}｜>" for name in ("calls▁begin", "calls▁end", "call▁begin", "call▁end", "sep",
                                                       "outputs▁begin", "outputs▁end", "output▁begin", "output▁end")],
}

# DeepSeek-V2-Lite's true layer dimensions (its published config.json), for a random slice of a few layers with the
# "v2-lite" variant: 2 layers (one dense, one MoE) are 1.1B parameters, 2.2 GB in bf16.
V2_LITE_DIMS: dict[str, Any] = dict(
    hidden_size=2048,
    intermediate_size=10944,
    moe_intermediate_size=1408,
    n_routed_experts=64,
    n_shared_experts=2,
    num_experts_per_tok=6,
    num_attention_heads=16,
    num_key_value_heads=16,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    vocab_size=102400,
    first_k_dense_replace=1,
    num_hidden_layers=2,
    q_lora_rank=None,
    max_position_embeddings=4096,
    rope_scaling=None,
)


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
    vocab = write_tokenizer(out, tokenizer_vocab, chat_template=CHAT_TEMPLATES[chat_template],
                            added_tokens=_TEMPLATE_TOKENS.get(chat_template, ()))
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


def checkpoint_maker(new_dir: Callable[[str], Path]) -> Callable[..., Path]:
    """``make(variant, **options)`` -> a random checkpoint (``write_random_checkpoint``) in ``new_dir(variant)``;
    identical arguments share one checkpoint (the suite's ``make_checkpoint`` fixture, benchmarks/gpu_check.py)."""
    made: dict[str, Path] = {}

    def make(variant: str = "v2-lite", **options: Any) -> Path:
        key = f"{variant}-{sorted(options.items())}"
        if key not in made:
            made[key] = write_random_checkpoint(new_dir(variant), variant, **options)
        return made[key]

    return make


def dequantized_twin(fp8_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the fp32 checkpoint whose weights equal the FP8 checkpoint's dequantized weights."""
    src, out = Path(fp8_dir), Path(out_dir)
    config = json.loads((src / "config.json").read_text())
    block = tuple(config.pop("quantization_config")["weight_block_size"])
    tensors = dict(iter_tensors(checkpoint_files(src)))
    twin = {
        n: (dequantize_fp8_blocks(t, tensors[n + "_scale_inv"], block) if t.dtype == torch.float8_e4m3fn else t.float())
        for n, t in tensors.items()
        if not n.endswith("_scale_inv")
    }
    config["torch_dtype"] = "float32"
    save_checkpoint(out, config, twin)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((src / name).read_bytes())
    return out
