"""DeepSeekMoE: the gate (every routing variant), routed experts run only on their tokens, shared experts."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from moecloud.engine.model.layers import FP8, Linear, dequantize_fp8_blocks, fp8_linear, int8_matmul, quantize_rows_int8
from moecloud.engine.model_config import ModelConfig
from moecloud.engine.parallel.comm import Comm, padded_part
from moecloud.engine.parallel.shard import ModelShard

# Off the CPU, without a grouped GEMM kernel: the most tokens the every-expert form runs on (a decode batch);
# a larger step (a prefill chunk) loops over the experts, reading their token counts on the host.
SYNC_FREE_MAX_TOKENS = 256


def _by_expert(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (token, slot) pairs of ``indices`` [T, top_k] sorted by expert: (their experts flat, the sorting
    order, the token row of each sorted pair)."""
    flat = indices.flatten()
    order = flat.argsort(stable=True)
    return flat, order, order // indices.shape[1]


def _combine(x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor, order: torch.Tensor,
             token_of: torch.Tensor) -> torch.Tensor:
    """The sorted pairs' expert outputs ``out``, weighted by their routing weights and summed back per token."""
    weighted = out * weights.flatten()[order].to(x.dtype)[:, None]
    return torch.zeros_like(x).index_add_(0, token_of, weighted)


class MLP(nn.Module):
    """The dense SwiGLU feed-forward, also used for the shared experts."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate)
        self.up_proj = Linear(hidden, intermediate)
        self.down_proj = Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Chooses ``top_k`` experts per token and their weights.

    With ``noaux_tc`` the correction bias steers the choice only; the weights come from unbiased scores.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        assert c.n_routed_experts and c.num_experts_per_tok
        self.n_experts, self.top_k = c.n_routed_experts, c.num_experts_per_tok
        self.method, self.scoring = c.topk_method, c.scoring_func
        self.n_group, self.topk_group = c.n_group or 1, c.topk_group or 1
        self.norm_topk_prob, self.scaling = c.norm_topk_prob, c.routed_scaling_factor
        # DeepSeek-V2 normalises *or* scales; V3 normalises and then scales (their reference code).
        self.scale_after_norm = c.model_type != "deepseek_v2"
        self.weight = nn.Parameter(torch.empty(self.n_experts, c.hidden_size), requires_grad=False)
        if self.method == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(torch.zeros(self.n_experts), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.weight.float())  # [T, experts]
        scores = logits.softmax(dim=-1) if self.scoring == "softmax" else logits.sigmoid()
        choice = scores
        if self.method == "noaux_tc":
            choice = scores + self.e_score_correction_bias.float()
        if self.method != "greedy":
            choice = self._limit_to_groups(choice)
        indices = choice.topk(self.top_k, dim=-1).indices  # [T, top_k]
        weights = scores.gather(1, indices)
        if self.norm_topk_prob and self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
            if self.scale_after_norm:
                weights = weights * self.scaling
        else:
            weights = weights * self.scaling
        return indices, weights

    def _limit_to_groups(self, choice: torch.Tensor) -> torch.Tensor:
        grouped = choice.view(choice.shape[0], self.n_group, self.n_experts // self.n_group)  # no -1: 0 tokens
        if self.method == "noaux_tc":
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
        else:
            group_scores = grouped.amax(dim=-1)
        keep = group_scores.topk(self.topk_group, dim=-1).indices
        mask = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
        fill = float("-inf") if self.method == "noaux_tc" else 0.0
        return grouped.masked_fill(mask.unsqueeze(-1), fill).flatten(1)


class Experts(nn.Module):
    """All routed experts as stacked tensors; each runs only on the tokens routed to it.

    ``w13_scale`` / ``w2_scale`` are what the weights' dtype needs, as in :class:`Linear`: none, int8 row scales
    [experts, rows], or FP8 128x128 block scales [experts, row blocks, column blocks]."""

    def __init__(self, n_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.w13 = nn.Parameter(torch.empty(n_experts, 2 * intermediate, hidden), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, intermediate), requires_grad=False)
        self.w13_scale: torch.Tensor | None = None
        self.w2_scale: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Dispatch by where it runs: compiled, the gathered form; on CPU, one GEMM per routed expert (its
        ``.tolist()`` of the counts is no device sync there, and it is the fastest eager form); on an accelerator a
        form with no host sync (a decode step is one graph of kernels, CUDA graphs included): torch's grouped GEMM
        where its kernel runs, else per-token gathered weights (few routed pairs) or every expert on every token
        (many), whichever reads fewer weight bytes; a step of more than ``SYNC_FREE_MAX_TOKENS`` tokens (a prefill
        chunk, never a decode step) uses the loop there too, rather than run every expert on every token."""
        if torch.compiler.is_compiling():
            return self._forward_gathered(x, indices, weights)
        if x.device.type == "cpu":
            return self._forward_looped(x, indices, weights)
        if self._grouped_mm_runs(x):
            return self._forward_grouped(x, indices, weights)
        if indices.numel() < self.w13.shape[0]:
            return self._forward_gathered_bmm(x, indices, weights)
        if x.shape[0] <= SYNC_FREE_MAX_TOKENS:
            return self._forward_dense(x, indices, weights)
        return self._forward_looped(x, indices, weights)  # a prefill chunk: the host sync is one in many FLOPs

    def _forward_looped(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One GEMM per expert over its tokens (the counts read on the host)."""
        flat, order, token_of = _by_expert(indices)
        counts = torch.bincount(flat, minlength=self.w13.shape[0]).tolist()
        routed = x[token_of]  # [T * top_k, hidden], grouped by expert
        outputs = []
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            h = self._project(routed[start : start + count], self.w13, self.w13_scale, expert)
            gate, up = h.split(self.intermediate, dim=-1)
            outputs.append(self._project(F.silu(gate) * up, self.w2, self.w2_scale, expert))
            start += count
        return _combine(x, torch.cat(outputs), weights, order, token_of)

    def _grouped_mm_runs(self, x: torch.Tensor) -> bool:
        """Whether torch's grouped GEMM has a kernel for this call: bf16 on an sm90/sm100 CUDA GPU, plain
        weights, 16-byte aligned rows. (Elsewhere torch falls back to a loop that reads the offsets on the host.)"""
        if x.device.type != "cuda" or x.dtype != torch.bfloat16 or self.w13_scale is not None:
            return False
        if torch.cuda.get_device_capability(x.device)[0] not in (9, 10):
            return False
        return x.shape[-1] % 8 == 0 and self.intermediate % 8 == 0

    def _forward_grouped(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The looped form as two grouped GEMMs over the pairs sorted by expert, the group ends on the device."""
        flat, order, token_of = _by_expert(indices)
        counts = torch.zeros(self.w13.shape[0], dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))  # bincount reads its max on the host
        ends = counts.cumsum(0, dtype=torch.int32)
        h = F.grouped_mm(x[token_of], self.w13.transpose(1, 2), offs=ends)
        gate, up = h.split(self.intermediate, dim=-1)
        out = F.grouped_mm(F.silu(gate) * up, self.w2.transpose(1, 2), offs=ends)
        return _combine(x, out, weights, order, token_of)

    def _forward_dense(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, weighted by the routing (0 for the experts a token did not choose): each
        expert's weights are read once, at E/top_k times the FLOPs of the routed form. For a decode batch whose
        pairs cover most experts anyway, on a device where the grouped GEMM has no kernel."""
        n_experts = self.w13.shape[0]
        routing = torch.zeros(x.shape[0], n_experts, dtype=x.dtype, device=x.device)
        routing.scatter_add_(1, indices, weights.to(x.dtype))  # [T, E]
        xs = x[None].expand(n_experts, -1, -1)
        h = torch.bmm(xs, self._dense(self.w13, self.w13_scale, x.dtype).transpose(1, 2))  # [E, T, 2I]
        gate, up = h.split(self.intermediate, dim=-1)
        out = torch.bmm(F.silu(gate) * up, self._dense(self.w2, self.w2_scale, x.dtype).transpose(1, 2))  # [E, T, H]
        return (out * routing.t()[..., None]).sum(0)

    @staticmethod
    def _dense(w: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Stacked expert weights [..., out, in] in ``dtype``: int8 rows times their scales, FP8 times its blocks'."""
        if scale is None:
            return w
        if w.dtype == FP8:
            return dequantize_fp8_blocks(w, scale, dtype=dtype)
        return w.to(dtype) * scale.to(dtype)[..., None]

    def _forward_gathered(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The compiled decode step's form: each (token, slot) pair reads its expert's rows straight out of the
        stacked weights. Compiled, gather, products and sums fuse into one pass over exactly the chosen experts'
        weights (nothing copied) with no data-dependent shapes. Eagerly it copies the chosen experts' rows: used so
        only where the (token, slot) pairs are fewer than the experts."""
        h = (x[:, None, None, :] * self._rows(self.w13, self.w13_scale, indices, x.dtype)).sum(-1)  # [T, k, 2I]
        gate, up = h.split(self.intermediate, dim=-1)
        act = (F.silu(gate) * up)[:, :, None, :]
        out = (act * self._rows(self.w2, self.w2_scale, indices, x.dtype)).sum(-1)  # [T, k, hidden]
        return (out * weights[..., None].to(x.dtype)).sum(1)

    def _forward_gathered_bmm(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The gathered form for eager use: the chosen experts' rows copied once, each applied by a batched
        matrix-vector product (the product-and-sum above would materialise the products)."""
        h = torch.matmul(self._rows(self.w13, self.w13_scale, indices, x.dtype), x[:, None, :, None])[..., 0]
        gate, up = h.split(self.intermediate, dim=-1)  # [T, k, I] each
        out = torch.matmul(self._rows(self.w2, self.w2_scale, indices, x.dtype), (F.silu(gate) * up)[..., None])
        return (out[..., 0] * weights[..., None].to(x.dtype)).sum(1)

    @staticmethod
    def _rows(w: torch.Tensor, scale: torch.Tensor | None, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return Experts._dense(w[indices], None if scale is None else scale[indices], dtype)

    @staticmethod
    def _project(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None, expert: int) -> torch.Tensor:
        if scale is None:
            return F.linear(x, w[expert])
        if w.dtype == FP8:
            return fp8_linear(x, w[expert], scale[expert])
        return int8_matmul(x, w[expert], scale[expert])

    def quantize_int8(self) -> None:
        for name in ("w13", "w2"):
            q, scale = quantize_rows_int8(getattr(self, name).data)
            setattr(self, name, nn.Parameter(q, requires_grad=False))
            setattr(self, f"{name}_scale", scale)


class MoE(nn.Module):
    """Gate, routed experts, shared experts. With a ``comm``: this expert rank's routed experts only and this tensor
    rank's slice of every expert's intermediate (the gate is replicated), see :meth:`_forward_parallel`."""

    comm: Comm | None = None  # the single-device layer (also one assembled without __init__)

    def __init__(self, config: ModelConfig, shard: ModelShard | None = None, comm: Comm | None = None) -> None:
        super().__init__()
        c = config
        assert c.n_routed_experts
        shard = shard or ModelShard.whole(c)
        self.shard, self.comm = shard, comm
        first, stop = shard.experts
        inter = shard.intermediate(c.moe_intermediate_size)
        self.gate = Gate(c)
        self.experts = Experts(stop - first, c.hidden_size, inter[1] - inter[0])
        shared = shard.intermediate(c.moe_intermediate_size * c.n_shared_experts) if c.n_shared_experts else None
        self.shared_experts = MLP(c.hidden_size, shared[1] - shared[0]) if shared else None
        self.register_buffer("expert_load", torch.zeros(c.n_routed_experts, dtype=torch.long), persistent=False)

    def reset_buffers(self, device: torch.device) -> None:
        """Zeroed counters on ``device`` (a model built on the meta device has none)."""
        self.expert_load = torch.zeros_like(self.expert_load, device=device)

    def forward(self, x: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        """``counted`` [T] (1 or 0 per token, default all 1): which tokens count in ``expert_load`` (a CUDA graph's
        padding rows do not)."""
        if self.comm is not None and self.shard.layout.ep > 1:
            return self._forward_parallel(x, counted, self.comm)
        indices, weights = self.gate(x)
        flat = indices.flatten()
        ones = torch.ones_like(flat) if counted is None else counted[:, None].expand_as(indices).flatten()
        self.expert_load.index_add_(0, flat, ones)
        out = self.experts(x, indices, weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out if self.comm is None else self.comm.tp_all_reduce(out)

    def _forward_parallel(self, x: torch.Tensor, counted: torch.Tensor | None, comm: Comm) -> torch.Tensor:
        """Expert parallelism: the ``N`` tokens (the same on every rank) are cut into one contiguous chunk per
        expert rank; each rank gates its chunk and sends each (token, slot) pair's row to its expert's rank by
        all-to-all (the splits from every rank's per-expert counts, gathered once, which also give the global
        expert load); the local experts run, the rows come back the same way and are combined into the chunk with
        the shared experts' part; one all-reduce over the TP group sums the intermediate slices, and the chunks are
        gathered back into ``[N, hidden]``."""
        n, ep = x.shape[0], self.shard.layout.ep
        start, stop = padded_part(n, ep, comm.ep_rank)
        chunk = x[start:stop]
        indices, weights = self.gate(chunk)
        flat, order, token_of = _by_expert(indices)
        n_experts = self.expert_load.shape[0]
        pairs = torch.bincount(flat, minlength=n_experts)
        mine = counted[start:stop, None].expand_as(indices).flatten() if counted is not None else None
        load = torch.bincount(flat, weights=mine, minlength=n_experts).long() if mine is not None else pairs
        gathered = comm.ep_all_gather(torch.stack((pairs, load))[None]).cpu()  # [ep, 2, experts]
        self.expert_load += gathered[:, 1].sum(0).to(self.expert_load.device)
        ranges = self.shard.expert_ranges()
        first, last = ranges[comm.ep_rank]
        send = [int(gathered[comm.ep_rank, 0, a:b].sum()) for a, b in ranges]
        from_each = gathered[:, 0, first:last]  # [ep, local experts]: the pairs each rank sends here
        recv = from_each.sum(1).tolist()
        rows = comm.ep_all_to_all(chunk[token_of], send, recv)  # grouped by source rank, then by expert
        if rows.shape[0]:
            local = torch.repeat_interleave(torch.arange(last - first).repeat(ep), from_each.flatten())
            local = local.to(x.device)[:, None]
            rows = self.experts(rows, local, torch.ones(local.shape, device=x.device))
        out = _combine(chunk, comm.ep_all_to_all(rows, recv, send), weights, order, token_of)
        if self.shared_experts is not None:
            out = out + self.shared_experts(chunk)
        comm.tp_all_reduce(out)
        return comm.ep_all_gather(_pad_rows(out, -(-n // ep)))[:n]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x if x.shape[0] == rows else torch.cat((x, x.new_zeros(rows - x.shape[0], *x.shape[1:])))
