"""Which slice of each checkpoint tensor one rank holds: the arithmetic the parallel model (its local shapes) and the
sharded loader (its reads) share.

Tensor ranks split attention heads, dense / shared-expert intermediates, each routed expert's intermediate and the
vocabulary (uneven allowed: :func:`padded_part`); expert ranks split the routed experts (:func:`expert_owners`).
Everything else (norms, the gate, the latent projections ``q_a_proj`` / ``kv_a_proj_with_mqa``) is replicated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moecloud.engine.model_config import ModelConfig
from moecloud.engine.parallel.comm import padded_part
from moecloud.engine.parallel.layout import ParallelLayout, expert_owners

_ROWS = re.compile(r"\.(q_proj|q_b_proj|kv_b_proj|gate_proj|up_proj)\.weight(_scale(_inv)?)?$")
_COLUMNS = re.compile(r"\.(o_proj|down_proj)\.weight(_scale_inv)?$")
_EXPERT = re.compile(r"\.mlp\.experts\.(\d+)\.")


@dataclass(frozen=True)
class Slice:
    """``dim`` 0 (rows) or 1 (columns) ``[start, stop)`` of a checkpoint tensor; ``zero``: this rank holds zeros
    (a row-parallel bias, added by tensor rank 0 only)."""

    dim: int
    start: int
    stop: int
    zero: bool = False


def _even(total: int, parts: int, index: int, what: str) -> tuple[int, int]:
    if total % parts:
        raise ValueError(f"tensor_parallel_size {parts} does not divide the model's {what} ({total})")
    per = total // parts
    return index * per, (index + 1) * per


@dataclass(frozen=True)
class ModelShard:
    """One rank's part of a model: ranges in the checkpoint's coordinates (tensor rank ``tp_rank`` of ``tp``,
    expert rank ``ep_rank`` of ``ep``). ``ModelShard.whole(config)`` is the single-device model."""

    config: ModelConfig
    layout: ParallelLayout
    ep_rank: int
    tp_rank: int

    @classmethod
    def whole(cls, config: ModelConfig) -> ModelShard:
        return cls(config, ParallelLayout(), 0, 0)

    def __post_init__(self) -> None:
        c, tp = self.config, self.layout.tp  # what must divide, checked before anything is built
        _even(c.num_attention_heads, tp, 0, "num_attention_heads")
        _even(c.intermediate_size, tp, 0, "intermediate_size")
        if c.n_routed_experts:
            _even(c.moe_intermediate_size, tp, 0, "moe_intermediate_size")
            expert_owners(c.n_routed_experts, self.layout.ep)
        elif self.layout.ep > 1:
            raise ValueError(f"expert_parallel_size {self.layout.ep} needs routed experts; the model has none")

    @property
    def parallel(self) -> bool:
        return self.layout.world > 1

    @property
    def heads(self) -> tuple[int, int]:
        return _even(self.config.num_attention_heads, self.layout.tp, self.tp_rank, "num_attention_heads")

    @property
    def vocab(self) -> tuple[int, int]:
        return padded_part(self.config.vocab_size, self.layout.tp, self.tp_rank)

    @property
    def vocab_per_rank(self) -> int:
        """The padded width each tensor rank's logits are gathered at."""
        return -(-self.config.vocab_size // self.layout.tp)

    def intermediate(self, total: int) -> tuple[int, int]:
        return _even(total, self.layout.tp, self.tp_rank, "intermediate size")

    @property
    def experts(self) -> tuple[int, int]:
        """This rank's routed experts, ``[first, stop)``."""
        owners = expert_owners(self.config.n_routed_experts or 1, self.layout.ep)
        mine = [e for e, r in enumerate(owners) if r == self.ep_rank]
        return mine[0], mine[-1] + 1

    def expert_ranges(self) -> list[tuple[int, int]]:
        """Every expert rank's ``[first, stop)``, in rank order."""
        owners = expert_owners(self.config.n_routed_experts or 1, self.layout.ep)
        return [(owners.index(r), len(owners) - owners[::-1].index(r)) for r in range(self.layout.ep)]

    def holds_expert(self, expert: int) -> bool:
        first, stop = self.experts
        return first <= expert < stop

    def slice_of(self, name: str, shape: tuple[int, ...]) -> Slice | None:
        """The part of checkpoint tensor ``name`` (of ``shape``) this rank holds; None: all of it."""
        if self.layout.tp == 1:
            return None
        c = self.config
        if name.removesuffix("_scale") in ("model.embed_tokens.weight", "lm_head.weight"):  # int8: row scales too
            return Slice(0, *self.vocab)
        if re.search(r"\.o_proj\.bias$", name):
            return Slice(0, 0, shape[0], zero=self.tp_rank != 0)
        if _ROWS.search(name):
            start, stop = self._range(name, c)
            if name.endswith("_scale_inv"):  # FP8 block scales: the blocks of those rows
                block = c.quantization.block_size[0] if c.quantization else 128
                return Slice(0, start // block, -(-stop // block))
            return Slice(0, start, stop)
        if _COLUMNS.search(name):
            start, stop = self._range(name, c)
            if name.endswith("_scale_inv"):
                block = c.quantization.block_size[1] if c.quantization else 128
                return Slice(1, start // block, -(-stop // block))
            return Slice(1, start, stop)
        return None

    def _range(self, name: str, c: ModelConfig) -> tuple[int, int]:
        """The rows (column-parallel) or columns (row-parallel) of this rank in the weight ``name``."""
        h0, h1 = self.heads
        if ".q_proj." in name or ".q_b_proj." in name:
            return h0 * c.qk_head_dim, h1 * c.qk_head_dim
        if ".kv_b_proj." in name:
            return h0 * (c.qk_nope_head_dim + c.v_head_dim), h1 * (c.qk_nope_head_dim + c.v_head_dim)
        if ".o_proj." in name:
            return h0 * c.v_head_dim, h1 * c.v_head_dim
        if _EXPERT.search(name):
            return self.intermediate(c.moe_intermediate_size)
        if ".shared_experts." in name:
            return self.intermediate(c.moe_intermediate_size * c.n_shared_experts)
        return self.intermediate(c.intermediate_size)
