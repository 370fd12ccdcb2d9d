"""Multi-head Latent Attention over the paged latent KV cache.

Per token and layer the cache holds ``kv_lora_rank`` normalised latent values plus the shared
``qk_rope_head_dim`` rotated key: never per-head K/V. Queries are absorbed into the latent space
(``q_nope @ W_UK``) so attention reads the latent directly, and the per-head values come out of
``W_UV`` only after the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moecloud.engine.model.layers import Linear, RMSNorm, RotaryEmbedding
from moecloud.engine.model_config import ModelConfig
from moecloud.engine.parallel.comm import Comm
from moecloud.engine.parallel.shard import ModelShard

SCORES_BUDGET = 1 << 26  # the most attention scores (fp32: 256 MiB) one slice of queries computes at once


@dataclass
class AttentionGroup:
    """Sequences attended together: each has ``q_len`` new tokens at the end of its context."""

    token_index: torch.Tensor  # [B, Q] rows of the flat token batch
    block_tables: torch.Tensor  # [B, max_blocks] cache block ids (padding rows point at any block)
    masked: torch.Tensor  # [B, Q, 1, L] True where a query may not see a key (future or padding)
    in_order: bool = False  # token_index covers the whole batch as 0..T-1


@dataclass
class ForwardBatch:
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T] flat cache slot each new token's latent is written to
    groups: list[AttentionGroup]
    rope: torch.Tensor | None = None  # per-token rotation, set once per forward (RotaryEmbedding.table)
    counted: torch.Tensor | None = None  # [T] 1 for a real token, 0 for a CUDA graph's padding (expert load)


def attention_mask(context_lens: torch.Tensor, q_len: int, num_keys: int) -> torch.Tensor:
    """[B, Q, 1, num_keys] True where a query may not see a key: the ``q_len`` queries of a sequence are its last
    tokens (query i sits at position ``context_len - q_len + i``) and see the keys up to their own position.
    Built on ``context_lens``' device from the lengths alone, so a CUDA graph builds it inside itself."""
    device = context_lens.device
    last_visible = context_lens[:, None] - q_len + torch.arange(q_len, device=device)[None, :]
    return (torch.arange(num_keys, device=device)[None, None, :] > last_visible[:, :, None])[:, :, None]


def query_slices(batch: int, q_len: int, heads: int, num_keys: int) -> list[slice]:
    """The ``q_len`` queries in slices of at most ``SCORES_BUDGET`` scores (``batch x slice x heads x num_keys``)."""
    step = max(1, SCORES_BUDGET // (batch * heads * num_keys))
    if step >= q_len:  # the rule (a decode step always): one slice, and no step a compiled graph specialises on
        return [slice(None)]
    return [slice(start, start + step) for start in range(0, q_len, step)]


class MLA(nn.Module):
    """With a ``comm``, this tensor rank's heads only: their rows of ``q_proj`` / ``q_b_proj`` and ``kv_b_proj``, their
    columns of ``o_proj`` (whose outputs are summed over the TP group). The latent projections are replicated, so
    every rank's cache holds the whole latent."""

    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, shard: ModelShard | None = None,
                 comm: Comm | None = None) -> None:
        super().__init__()
        c = config
        first, stop = (shard or ModelShard.whole(c)).heads
        self.num_heads = stop - first
        self.comm = comm
        self.nope_dim, self.rope_dim, self.v_dim = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        self.kv_lora_rank = c.kv_lora_rank
        self.softmax_scale = c.softmax_scale
        q_out = self.num_heads * c.qk_head_dim
        if c.q_lora_rank is None:
            self.q_proj = Linear(c.hidden_size, q_out)
        else:
            self.q_a_proj = Linear(c.hidden_size, c.q_lora_rank, bias=c.attention_bias)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, c.rms_norm_eps)
            self.q_b_proj = Linear(c.q_lora_rank, q_out)
        self.kv_a_proj_with_mqa = Linear(c.hidden_size, c.latent_dim, bias=c.attention_bias)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, c.rms_norm_eps)
        self.kv_b_proj = Linear(c.kv_lora_rank, self.num_heads * (self.nope_dim + self.v_dim))
        self.o_proj = Linear(self.num_heads * self.v_dim, c.hidden_size, bias=c.attention_bias)
        self.rotary = rotary

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: torch.Tensor) -> torch.Tensor:
        """``x`` [T, hidden]; ``cache`` [num_blocks, block_size, kv_lora_rank + rope_dim]."""
        tokens = x.shape[0]
        q = self._query(x).view(tokens, self.num_heads, -1)
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q_pe = self.rotary.apply(q_pe, batch.rope)  # [T, heads, rope]
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)
        k_pe = self.rotary.apply(k_pe[:, None], batch.rope)[:, 0]  # [T, rope]
        cache.view(-1, cache.shape[-1]).index_copy_(0, batch.slot_mapping, torch.cat((latent, k_pe), dim=-1))

        if len(batch.groups) == 1 and batch.groups[0].in_order:  # all decodes (or one prefill): no reshuffle
            shape = batch.groups[0].token_index.shape
            out = self._attend_group(
                q_nope.view(*shape, *q_nope.shape[1:]), q_pe.view(*shape, *q_pe.shape[1:]), batch.groups[0], cache
            ).flatten(0, 1)
        else:
            out = q_nope.new_empty(tokens, self.num_heads, self.v_dim)
            for group in batch.groups:
                out[group.token_index] = self._attend_group(
                    q_nope[group.token_index], q_pe[group.token_index], group, cache
                )
        out = self.o_proj(out.reshape(tokens, -1))
        return out if self.comm is None else self.comm.tp_all_reduce(out)

    def _expands(self, q_len: int, num_keys: int) -> bool:
        """Whether ``q_len`` queries over ``num_keys`` keys cost fewer FLOPs with the latent expanded into per-head
        keys and values (``kv_b_proj`` over every key, then attention in the heads' own dimensions, as training
        computes it) than with the queries absorbed into the latent (``W_UK`` / ``W_UV`` per query, attention over
        the latent). A decode (one query) never expands; a prefill without a long cached prefix does."""
        if q_len == 1:
            return False
        n, v, k, r = self.nope_dim, self.v_dim, self.kv_lora_rank, self.rope_dim
        absorbed = q_len * k * (n + v) + q_len * num_keys * (2 * k + r)
        expanded = num_keys * k * (n + v) + q_len * num_keys * (n + r + v)
        return expanded < absorbed

    def _attend_group(
        self, q_nope: torch.Tensor, q_pe: torch.Tensor, group: AttentionGroup, cache: torch.Tensor
    ) -> torch.Tensor:
        """``q_nope`` [B, Q, heads, nope], ``q_pe`` [B, Q, heads, rope] -> [B, Q, heads, v]."""
        batch, q_len = q_nope.shape[:2]
        kv = cache[group.block_tables].flatten(1, 2)  # [B, L, kv_lora + rope]
        latent, k_pe = kv[..., : self.kv_lora_rank], kv[..., self.kv_lora_rank :]
        if self._expands(q_len, kv.shape[1]):
            return self._attend_expanded(q_nope, q_pe, group.masked, latent, k_pe)
        w = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.nope_dim], w[:, self.nope_dim :]
        q_latent = torch.bmm(q_nope.flatten(0, 1).transpose(0, 1), w_uk).transpose(0, 1)  # [B*Q, heads, kv_lora]
        out_latent = self._attend(q_latent.view(batch, q_len, *q_latent.shape[1:]), q_pe, group.masked, latent, k_pe)
        return torch.bmm(out_latent.flatten(0, 1).transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1).view(
            batch, q_len, self.num_heads, self.v_dim)

    def _attend_expanded(
        self, q_nope: torch.Tensor, q_pe: torch.Tensor, masked: torch.Tensor, latent: torch.Tensor,
        k_pe: torch.Tensor,
    ) -> torch.Tensor:
        """Attention over per-head keys ``[k_nope, k_pe]`` and values that ``kv_b_proj`` expands from the latent, by
        ``scaled_dot_product_attention`` (a fused kernel: the scores are never all in memory at once)."""
        batch, q_len, heads, _ = q_nope.shape
        num_keys = latent.shape[1]
        dtype = q_nope.dtype
        if latent.device.type == "cpu" and dtype != torch.float32:
            # fp32 on a CPU, as the absorbed form's softmax is: keys and values expanded in 16 bits put a random
            # V3-shaped model's bf16 logits ~2x further from fp32 (gpu_check's fp8 twin: rel. error 0.17 vs 0.096),
            # and the fp32 kernel is no slower there (70m in bf16, 480-token prefill: 2.9-3.3k tok/s vs 2.1-2.8k)
            q_nope, q_pe, latent, k_pe = (t.float() for t in (q_nope, q_pe, latent, k_pe))
            kv = F.linear(latent, self.kv_b_proj.weight.float())
        else:
            kv = self.kv_b_proj(latent)
        kv = kv.view(batch, num_keys, heads, self.nope_dim + self.v_dim)
        k_nope, value = kv.split([self.nope_dim, self.v_dim], dim=-1)
        key = torch.cat((k_nope, k_pe[:, :, None].expand(-1, -1, heads, -1)), dim=-1).transpose(1, 2)
        query = torch.cat((q_nope, q_pe), dim=-1).transpose(1, 2)  # [B, heads, Q, nope + rope]
        visible = ~masked.transpose(1, 2)  # [B, 1, Q, L]
        # torch's fused kernels want one head dimension for keys and values: the narrower side padded with zeros
        # (the scale is given, so zero query/key columns change no score; zero value columns are cut off after)
        width = max(query.shape[-1], self.v_dim)
        query, key = (F.pad(t, (0, width - t.shape[-1])) for t in (query, key))
        value = F.pad(value, (0, width - self.v_dim)).transpose(1, 2)
        parts = [F.scaled_dot_product_attention(query[:, :, rows], key, value, attn_mask=visible[:, :, rows],
                                                scale=self.softmax_scale)  # sliced in case torch picks its math kernel
                 for rows in query_slices(batch, q_len, heads, num_keys)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return out[..., : self.v_dim].transpose(1, 2).to(dtype)  # [B, Q, heads, v]

    def _attend(
        self, q_latent: torch.Tensor, q_pe: torch.Tensor, masked: torch.Tensor, latent: torch.Tensor,
        k_pe: torch.Tensor,
    ) -> torch.Tensor:
        """``q_latent`` [B, Q, heads, kv_lora], ``q_pe`` [B, Q, heads, rope] -> [B, Q, heads, kv_lora].

        The fp32 scores of a long prefill chunk against a long context (Q * heads * L of them) would dwarf
        everything else a step allocates, so queries go in slices of at most ``SCORES_BUDGET`` scores."""
        batch, q_len, heads, _ = q_latent.shape
        parts = [self._attend_slice(q_latent[:, rows], q_pe[:, rows], masked[:, rows], latent, k_pe)
                 for rows in query_slices(batch, q_len, heads, latent.shape[1])]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _attend_slice(
        self, q_latent: torch.Tensor, q_pe: torch.Tensor, masked: torch.Tensor, latent: torch.Tensor,
        k_pe: torch.Tensor,
    ) -> torch.Tensor:
        batch, q_len, heads, _ = q_latent.shape
        # queries of all heads side by side: [B, Q*heads, d] @ [B, d, L] -> [B, Q*heads, L]
        scores = torch.baddbmm(
            torch.bmm(q_pe.reshape(batch, q_len * heads, -1), k_pe.transpose(1, 2)),
            q_latent.reshape(batch, q_len * heads, -1),
            latent.transpose(1, 2),
        ).view(batch, q_len, heads, -1)
        scores = scores.float().mul_(self.softmax_scale).masked_fill_(masked, float("-inf"))
        probs = scores.softmax(dim=-1).to(latent.dtype).view(batch, q_len * heads, -1)
        return torch.bmm(probs, latent).view(batch, q_len, heads, -1)
