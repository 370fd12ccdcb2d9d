"""The DeepSeek-V2/V3 decoder: embedding, ``Block`` x N (MLA + dense MLP or MoE), final norm, LM head.

Module names mirror the Hugging Face checkpoints so the loader maps tensors by name. With a :class:`Comm` the model
is one rank's shard (``moecloud.engine.parallel.shard``): every block ends in one all-reduce over its tensor-parallel
group, the MoE layers exchange tokens over the expert-parallel group. Such a model runs eagerly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from moecloud.engine.model.attention import MLA, ForwardBatch
from moecloud.engine.model.layers import Linear, RMSNorm, RotaryEmbedding
from moecloud.engine.model.moe import MLP, MoE
from moecloud.engine.model_config import ModelConfig
from moecloud.engine.parallel.comm import Comm
from moecloud.engine.parallel.shard import ModelShard


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, rotary: RotaryEmbedding, shard: ModelShard | None = None,
                 comm: Comm | None = None) -> None:
        super().__init__()
        self.comm = comm
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLA(config, rotary, shard, comm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.is_moe_layer(layer):
            self.mlp: MLP | MoE = MoE(config, shard, comm)
        else:
            first, stop = (shard or ModelShard.whole(config)).intermediate(config.intermediate_size)
            self.mlp = MLP(config.hidden_size, stop - first)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), batch, cache)
        if isinstance(self.mlp, MoE):
            return x + self.mlp(self.post_attention_layernorm(x), batch.counted)
        out = self.mlp(self.post_attention_layernorm(x))
        return x + (out if self.comm is None else self.comm.tp_all_reduce(out))


class VocabEmbedding(nn.Module):
    """This tensor rank's rows ``[first, stop)`` of the embedding: other ids give zero rows, and the sum over the
    TP group is every token's row."""

    def __init__(self, first: int, stop: int, hidden: int, comm: Comm) -> None:
        super().__init__()
        self.first, self.comm = first, comm
        self.weight = nn.Parameter(torch.empty(stop - first, hidden), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.first
        outside = (local < 0) | (local >= self.weight.shape[0])
        rows = F.embedding(local.clamp(0, max(0, self.weight.shape[0] - 1)), self.weight)
        return self.comm.tp_all_reduce(rows.masked_fill(outside[:, None], 0))


class DeepseekModel(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int, shard: ModelShard | None = None,
                 comm: Comm | None = None) -> None:
        super().__init__()
        if comm is None or comm.layout.tp == 1:
            self.embed_tokens: nn.Embedding | VocabEmbedding = nn.Embedding(config.vocab_size, config.hidden_size)
            self.embed_tokens.weight.requires_grad_(False)
        else:
            assert shard is not None
            self.embed_tokens = VocabEmbedding(*shard.vocab, config.hidden_size, comm)
        self.rotary = RotaryEmbedding(config.qk_rope_head_dim, config.rope, max_positions)
        self.layers = nn.ModuleList(
            Block(config, i, self.rotary, shard, comm) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DeepseekForCausalLM(nn.Module):
    """``comm`` None: the whole model on one device. Else this rank's shard (:class:`ModelShard`, validated here:
    a size that does not divide is a ValueError naming the setting)."""

    def __init__(self, config: ModelConfig, max_positions: int, comm: Comm | None = None) -> None:
        super().__init__()
        self.config = config
        self.comm = comm
        self.shard = ModelShard.whole(config) if comm is None else ModelShard(config, comm.layout, comm.ep_rank,
                                                                               comm.tp_rank)
        self.model = DeepseekModel(config, max_positions, self.shard, comm)
        first, stop = self.shard.vocab
        self.lm_head = Linear(config.hidden_size, stop - first)
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
        return hidden, self.logits(hidden)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, vocab] fp32. With a comm a TP collective: every rank of the group passes the same rows and gets
        every logit (each rank's vocabulary rows, gathered)."""
        return self.logits(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        local = self.lm_head(hidden).float()
        if self.comm is None or self.comm.layout.tp == 1:
            return local
        padded = F.pad(local, (0, self.shard.vocab_per_rank - local.shape[1]))  # the last shards may be short
        return self.comm.tp_all_gather(padded, dim=1)[:, : self.config.vocab_size]

    def moe_layers(self) -> dict[int, MoE]:
        return {i: block.mlp for i, block in enumerate(self.model.layers) if isinstance(block.mlp, MoE)}

    def quantize_int8(self) -> None:
        """Weight-only int8 for every projection except ``kv_b_proj`` (absorbed into attention)."""
        for name, module in self.named_modules():
            if name.endswith("kv_b_proj") or module is self.lm_head and self.config.tie_word_embeddings:
                continue
            if hasattr(module, "quantize_int8") and module is not self:
                module.quantize_int8()
