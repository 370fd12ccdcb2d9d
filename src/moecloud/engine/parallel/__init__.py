"""One engine over several ranks: tensor parallelism (attention, dense MLPs, vocabulary) and expert parallelism
(routed experts), through ``torch.distributed`` process groups (gloo on CPU, NCCL on CUDA)."""

from moecloud.engine.parallel.layout import ParallelLayout, expert_owners, rank_load

__all__ = ["ParallelLayout", "expert_owners", "rank_load"]
