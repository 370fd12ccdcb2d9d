"""DeepSeek V2/V3 ``config.json`` -> a typed, validated :class:`ModelConfig`.

Every field that changes the math is read and checked. A field or value the engine does not implement
raises :class:`UnsupportedConfig` naming it, so an unknown checkpoint fails loudly instead of
producing wrong tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = {"deepseek_v2", "deepseek_v3", "kimi_k2"}
SUPPORTED_TOPK_METHODS = {"greedy", "group_limited_greedy", "noaux_tc"}
SUPPORTED_SCORING = {"softmax", "sigmoid"}
SUPPORTED_ROPE_TYPES = {None, "default", "yarn"}


class UnsupportedConfig(ValueError):
    """The checkpoint's config asks for something this engine does not implement."""


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    rope_type: str | None = None  # None/"default" | "yarn"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    interleave: bool = True  # DeepSeek rotates adjacent pairs (x0,x1),(x2,x3)...


# Weight-only int8 as `moecloud quantize --int8` writes it: each quantized projection's ``weight`` is int8
# and ``weight_scale`` [out, 1] holds one float32 scale per output row (w = weight * weight_scale).
INT8_METHOD = "moecloud-int8"
INT8_LAYOUT = {"bits": 8, "strategy": "channel", "symmetric": True}


@dataclass(frozen=True)
class QuantConfig:
    method: str  # "fp8" (DeepSeek-V3's block-scaled e4m3) or INT8_METHOD (``moecloud quantize --int8``)
    block_size: tuple[int, int] = (128, 128)


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    # MLA
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    attention_bias: bool
    rope: RopeConfig
    # MoE
    n_routed_experts: int | None
    n_shared_experts: int | None
    num_experts_per_tok: int | None
    moe_intermediate_size: int
    first_k_dense_replace: int
    moe_layer_freq: int
    scoring_func: str
    topk_method: str
    n_group: int | None
    topk_group: int | None
    norm_topk_prob: bool
    routed_scaling_factor: float
    torch_dtype: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    quantization: QuantConfig | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Values cached per token and layer: the compressed KV latent plus the shared rope key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        scale = self.qk_head_dim**-0.5
        if self.rope.rope_type == "yarn" and self.rope.mscale_all_dim:
            m = yarn_mscale(self.rope.factor, self.rope.mscale_all_dim)
            scale *= m * m
        return scale

    def is_moe_layer(self, layer: int) -> bool:
        return (
            self.n_routed_experts is not None
            and layer >= self.first_k_dense_replace
            and layer % self.moe_layer_freq == 0
        )

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)


def yarn_mscale(scale: float, mscale: float) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _rope_from(raw: dict[str, Any]) -> RopeConfig:
    scaling = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    theta = float(raw.get("rope_theta", scaling.get("rope_theta", 10000.0)))
    rope_type = scaling.get("type", scaling.get("rope_type"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedConfig(f"rope_scaling type {rope_type!r} is not supported (supported: yarn)")
    interleave = bool(raw.get("rope_interleave", True))
    if rope_type != "yarn":
        return RopeConfig(theta=theta, rope_type=None, interleave=interleave)
    return RopeConfig(
        theta=theta,
        rope_type="yarn",
        factor=float(scaling["factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        beta_fast=float(scaling.get("beta_fast", 32.0)),
        beta_slow=float(scaling.get("beta_slow", 1.0)),
        mscale=float(scaling.get("mscale", 1.0)),
        mscale_all_dim=float(scaling.get("mscale_all_dim", 0.0)),
        interleave=interleave,
    )


def _quant_from(raw: dict[str, Any]) -> QuantConfig | None:
    q = raw.get("quantization_config")
    if not q:
        return None
    method = q.get("quant_method")
    if method == INT8_METHOD:
        layout = {k: q.get(k) for k in INT8_LAYOUT}
        if layout != INT8_LAYOUT:
            raise UnsupportedConfig(f"int8 quantization_config {layout} is not supported (supported: {INT8_LAYOUT})")
        return QuantConfig(method=INT8_METHOD)
    if method != "fp8":
        raise UnsupportedConfig(
            f"quantization_config.quant_method {method!r} is not supported (supported: fp8, {INT8_METHOD})"
        )
    fmt = q.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise UnsupportedConfig(f"quantization_config.fmt {fmt!r} is not supported (supported: e4m3)")
    block = q.get("weight_block_size")
    if not block or len(block) != 2:
        raise UnsupportedConfig(
            "quantization_config.weight_block_size must be [rows, cols] (per-tensor fp8 unsupported)"
        )
    return QuantConfig(method="fp8", block_size=(int(block[0]), int(block[1])))


def parse_config(raw: dict[str, Any]) -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedConfig(
            f"model_type {model_type!r} is not supported (supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
        )
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfig(f"hidden_act {act!r} is not supported (supported: silu)")
    is_v3 = model_type != "deepseek_v2"
    scoring = raw.get("scoring_func", "sigmoid" if is_v3 else "softmax")
    if scoring not in SUPPORTED_SCORING:
        raise UnsupportedConfig(f"scoring_func {scoring!r} is not supported (supported: softmax, sigmoid)")
    topk_method = raw.get("topk_method", "noaux_tc" if is_v3 else "greedy")
    if topk_method not in SUPPORTED_TOPK_METHODS:
        raise UnsupportedConfig(
            f"topk_method {topk_method!r} is not supported (supported: {', '.join(sorted(SUPPORTED_TOPK_METHODS))})"
        )
    n_routed = raw.get("n_routed_experts")
    n_group, topk_group = raw.get("n_group"), raw.get("topk_group")
    if n_routed and topk_method in ("group_limited_greedy", "noaux_tc"):
        if not n_group or not topk_group:
            raise UnsupportedConfig(f"topk_method {topk_method!r} needs n_group and topk_group")
        if n_routed % n_group:
            raise UnsupportedConfig(f"n_routed_experts {n_routed} is not divisible by n_group {n_group}")
        if topk_group > n_group:
            raise UnsupportedConfig(f"topk_group {topk_group} exceeds n_group {n_group}")
    top_k = raw.get("num_experts_per_tok")
    if n_routed and (not top_k or top_k > n_routed):
        raise UnsupportedConfig(f"num_experts_per_tok {top_k!r} must be in [1, n_routed_experts={n_routed}]")
    moe_layer_freq = int(raw.get("moe_layer_freq", 1))
    if moe_layer_freq < 1:
        raise UnsupportedConfig(f"moe_layer_freq {moe_layer_freq} must be >= 1")
    hidden = int(raw["hidden_size"])
    try:
        cfg = ModelConfig(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            q_lora_rank=raw.get("q_lora_rank"),
            kv_lora_rank=int(raw["kv_lora_rank"]),
            qk_nope_head_dim=int(raw["qk_nope_head_dim"]),
            qk_rope_head_dim=int(raw["qk_rope_head_dim"]),
            v_head_dim=int(raw["v_head_dim"]),
            attention_bias=bool(raw.get("attention_bias", False)),
            rope=_rope_from(raw),
            n_routed_experts=n_routed,
            n_shared_experts=raw.get("n_shared_experts"),
            num_experts_per_tok=top_k,
            moe_intermediate_size=int(raw.get("moe_intermediate_size", raw["intermediate_size"])),
            first_k_dense_replace=int(raw.get("first_k_dense_replace", 0)),
            moe_layer_freq=moe_layer_freq,
            scoring_func=scoring,
            topk_method=topk_method,
            n_group=n_group,
            topk_group=topk_group,
            norm_topk_prob=bool(raw.get("norm_topk_prob", is_v3)),
            routed_scaling_factor=float(raw.get("routed_scaling_factor", 1.0)),
            torch_dtype=raw.get("torch_dtype", raw.get("dtype")),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            quantization=_quant_from(raw),
            raw=raw,
        )
    except KeyError as missing:
        raise UnsupportedConfig(f"config.json lacks required field {missing.args[0]!r}") from None
    if cfg.qk_rope_head_dim % 2:
        raise UnsupportedConfig(f"qk_rope_head_dim {cfg.qk_rope_head_dim} must be even")
    return cfg


def load_model_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {model_dir}")
    return parse_config(json.loads(path.read_text()))
