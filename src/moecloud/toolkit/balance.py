"""DeepSeek-V3's auxiliary-loss-free load balancing.

Each MoE layer's router adds a per-expert bias (``e_score_correction_bias``) to the scores only to
choose experts. After every step the bias of each overloaded expert goes down by ``rate`` and that of
each underloaded expert goes up by ``rate`` (the sign of the load error, as in the paper), so the
load evens out with no auxiliary loss pulling on the language-model gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class RouterLoad:
    """Counts the tokens each router sends to each expert, through forward hooks on the routers."""

    def __init__(self, model: nn.Module) -> None:
        self.routers = [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]
        self.counts = [torch.zeros(r.e_score_correction_bias.shape[0]) for r in self.routers]
        self.token_mask: torch.Tensor | None = None  # [batch * seq] bool: real tokens, not padding
        self._handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]

    def _hook(self, index: int) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: tuple[torch.Tensor, ...]) -> None:
            indices = output[-1].detach()  # [tokens, top_k]
            if self.token_mask is not None and self.token_mask.numel() == indices.shape[0]:
                indices = indices[self.token_mask]
            self.counts[index] += torch.bincount(indices.flatten(), minlength=self.counts[index].shape[0])

        return record

    def reset(self) -> None:
        for c in self.counts:
            c.zero_()

    def max_violation(self) -> float:
        """MaxVio (the paper's measure): (max load - mean load) / mean load, averaged over layers."""
        vio = [float((c.max() - c.mean()) / c.mean()) for c in self.counts if c.sum() > 0]
        return sum(vio) / len(vio) if vio else 0.0

    @torch.no_grad()
    def update_bias(self, rate: float) -> None:
        """bias_i += rate * sign(mean load - load_i), from the counts since the last reset."""
        for router, counts in zip(self.routers, self.counts, strict=True):
            if counts.sum() > 0:
                router.e_score_correction_bias += rate * torch.sign(counts.mean() - counts)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
