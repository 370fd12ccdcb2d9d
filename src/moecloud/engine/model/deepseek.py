"""The DeepSeek-V2/V3 decoder: embedding, ``Block`` x N (MLA + dense MLP or MoE), final norm, LM head.

Module names mirror the Hugging Face checkpoints so the loader maps tensors by name.
"""

from __future__ import annotations

import torch
from torch import nn

from moecloud.engine.model.attention import MLA, ForwardBatch
from moecloud.engine.model.layers import Linear, RMSNorm, RotaryEmbedding
from moecloud.engine.model.moe import MLP, MoE
from moecloud.engine.model_config import ModelConfig


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLA(config, rotary)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp: MLP | MoE = (
            MoE(config) if config.is_moe_layer(layer) else MLP(config.hidden_size, config.intermediate_size)
        )

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), batch, cache)
        if isinstance(self.mlp, MoE):
            return x + self.mlp(self.post_attention_layernorm(x), batch.counted)
        return x + self.mlp(self.post_attention_layernorm(x))


class DeepseekModel(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.rotary = RotaryEmbedding(config.qk_rope_head_dim, config.rope, max_positions)
        self.layers = nn.ModuleList(Block(config, i, self.rotary) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DeepseekForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.model = DeepseekModel(config, max_positions)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, batch: ForwardBatch, caches: list[torch.Tensor]) -> torch.Tensor:
        """``input_ids`` [T] -> final hidden states [T, hidden]."""
        return self.hidden_states(input_ids, batch, caches)

    def hidden_states(self, input_ids: torch.Tensor, batch: ForwardBatch, caches: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` without its inference-mode wrapper: what ``torch.compile`` traces."""
        x = self.model.embed_tokens(input_ids)
        batch.rope = self.model.rotary.table(batch.positions)
        for layer, cache in zip(self.model.layers, caches, strict=True):
            x = layer(x, batch, cache)
        return self.model.norm(x)

    def decode_step(
        self, input_ids: torch.Tensor, batch: ForwardBatch, caches: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states and every token's fp32 logits in one graph: what the compiled decode step traces."""
        hidden = self.hidden_states(input_ids, batch, caches)
        return hidden, self.lm_head(hidden).float()

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def moe_layers(self) -> dict[int, MoE]:
        return {i: block.mlp for i, block in enumerate(self.model.layers) if isinstance(block.mlp, MoE)}

    def quantize_int8(self) -> None:
        """Weight-only int8 for every projection except ``kv_b_proj`` (absorbed into attention)."""
        for name, module in self.named_modules():
            if name.endswith("kv_b_proj") or module is self.lm_head and self.config.tie_word_embeddings:
                continue
            if hasattr(module, "quantize_int8") and module is not self:
                module.quantize_int8()
