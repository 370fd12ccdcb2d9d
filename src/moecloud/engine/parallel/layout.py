"""Which rank holds what: the T x E grid of ranks and the balanced map of routed experts onto expert ranks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelLayout:
    """``tp`` tensor-parallel ranks times ``ep`` expert-parallel ranks. Rank ``r`` sits at expert rank
    ``r // tp`` and tensor rank ``r % tp``: the ``tp`` ranks of one expert rank split attention heads, dense MLPs,
    the vocabulary and their experts' intermediate dimension; the ``ep`` ranks of one tensor rank split the
    routed experts between them (and exchange tokens by all-to-all). Rank 0 schedules."""

    tp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        if self.tp < 1 or self.ep < 1:
            raise ValueError(f"tensor and expert parallel sizes must be at least 1, not {self.tp} and {self.ep}")

    @property
    def world(self) -> int:
        return self.tp * self.ep

    def coords(self, rank: int) -> tuple[int, int]:
        """(expert rank, tensor rank) of ``rank``."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} is outside a world of {self.world}")
        return divmod(rank, self.tp)

    def tp_ranks(self, ep_rank: int) -> list[int]:
        """The global ranks of one tensor-parallel group (same expert rank)."""
        return [ep_rank * self.tp + t for t in range(self.tp)]

    def ep_ranks(self, tp_rank: int) -> list[int]:
        """The global ranks of one expert-parallel group (same tensor rank)."""
        return [e * self.tp + tp_rank for e in range(self.ep)]


def expert_owners(n_experts: int, ep: int) -> list[int]:
    """The expert rank of each routed expert: contiguous runs, sizes differing by at most one (the first
    ``n_experts % ep`` ranks hold one more), as vLLM's linear placement."""
    if ep > n_experts:
        raise ValueError(f"expert_parallel_size {ep} is more than the model's {n_experts} routed experts")
    base, extra = divmod(n_experts, ep)
    owners: list[int] = []
    for rank in range(ep):
        owners += [rank] * (base + (rank < extra))
    return owners


def rank_load(expert_counts: list[int], ep: int) -> list[int]:
    """The tokens routed to each expert rank's experts, from the per-expert counts."""
    load = [0] * ep
    for owner, count in zip(expert_owners(len(expert_counts), ep), expert_counts, strict=True):
        load[owner] += count
    return load
