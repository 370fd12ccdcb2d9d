"""Trainable DeepSeek-V3 models (transformers' implementation) and the published checkpoint layout.

Training runs through ``transformers.DeepseekV3ForCausalLM``; the engine's model is inference-only.
transformers keeps routed experts fused in memory (``experts.gate_up_proj`` [E, 2I, H] and
``experts.down_proj`` [E, H, I]); checkpoints are written per expert
(``experts.E.{gate,up,down}_proj.weight``) exactly as DeepSeek publishes them, so the moecloud engine,
transformers and other tools all load them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from moecloud.toolkit.checkpoint_files import make_config, save_checkpoint

# Shapes of the models this toolkit trains; any field can be overridden from a JSON file.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=2, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
                 qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, num_experts_per_tok=2),
    "demo": dict(hidden_size=160, intermediate_size=480, moe_intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32,
                 qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8, num_experts_per_tok=2),
    "demo-small": dict(hidden_size=96, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16,
                       qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=1),
    "demo-dense": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                       first_k_dense_replace=2),
}

_FUSED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def model_config(vocab_size: int, preset: str = "demo", **overrides: Any) -> dict[str, Any]:
    """A DeepSeek-V3 ``config.json`` dict: sigmoid gate, noaux_tc routing with correction bias, MLA."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    shape = {**PRESETS[preset], **overrides}
    # Normalising one expert's weight makes it 1. transformers (which trains) does so; DeepSeek's reference
    # code and the engine (which serve) keep the raw score. Only false means the same model in both, and
    # only then does the loss reach a top-1 router at all.
    top_one = shape.get("num_experts_per_tok") == 1
    defaults = dict(n_group=1, topk_group=1, rope_scaling=None, routed_scaling_factor=1.0, n_shared_experts=1,
                    first_k_dense_replace=1, max_position_embeddings=512, norm_topk_prob=not top_one)
    return make_config("v3", vocab_size=vocab_size, **{**defaults, **shape})


def build_model(config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    return DeepseekV3ForCausalLM(DeepseekV3Config(**config))


def load_model(path: str | Path) -> torch.nn.Module:
    """A checkpoint in the published layout, as a trainable transformers model (fp32)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def read_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())


def published_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """transformers' fused experts -> one gate/up/down weight per expert, every other name unchanged."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        match = _FUSED.match(name)
        if match is None:
            out[name] = tensor.detach().clone()
            continue
        prefix, kind = match.groups()
        for expert, weight in enumerate(tensor.detach()):
            if kind == "down_proj":
                out[f"{prefix}.{expert}.down_proj.weight"] = weight.clone()
            else:
                gate, up = weight.chunk(2, dim=0)  # transformers: gate rows first, then up
                out[f"{prefix}.{expert}.gate_proj.weight"] = gate.clone()
                out[f"{prefix}.{expert}.up_proj.weight"] = up.clone()
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def save_model(model: torch.nn.Module, config: dict[str, Any], out_dir: str | Path, tokenizer_dir: str | Path,
               dtype: torch.dtype = torch.float32) -> Path:
    """Write config.json, model.safetensors (published layout) and the tokenizer files into ``out_dir``."""
    out = Path(out_dir)
    # The correction bias stays fp32, as DeepSeek ships it: its steps are finer than bf16 resolves.
    tensors = {n: t.to(dtype) if not n.endswith("e_score_correction_bias") else t.float()
               for n, t in published_state_dict(model).items()}
    save_checkpoint(out, {**config, "torch_dtype": str(dtype).removeprefix("torch.")}, tensors)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if Path(tokenizer_dir).resolve() != out.resolve():
            shutil.copyfile(Path(tokenizer_dir) / name, out / name)
    return out


def parameter_counts(config: dict[str, Any]) -> tuple[int, int]:
    """(total, active per token) parameters, counting embeddings; active counts top-k routed experts."""
    model = build_model(config)
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    experts = config.get("n_routed_experts") or 1
    active = total - routed + routed * (config.get("num_experts_per_tok") or 0) // experts
    return total, active
