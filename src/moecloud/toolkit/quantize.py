"""`moecloud quantize --int8`: what weight-only int8 costs and saves, measured on a suite.

The engine quantizes at load time (``LLM(path, quantization="int8")``: per-row symmetric int8 for every
projection and expert), so the checkpoint on disk stays the original; this report compares the two
engines on the same examples: accuracy, weight memory, decode tokens/s and the logits' relative error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from moecloud.toolkit.scoring import EngineScore, engine_score
from moecloud.toolkit.tasks import Example


@dataclass
class Int8Report:
    original: EngineScore
    int8: EngineScore
    logits_relative_error: float

    @property
    def accuracy_change(self) -> float:
        return self.int8.accuracy - self.original.accuracy

    @property
    def memory_ratio(self) -> float:
        return self.int8.weight_bytes / max(self.original.weight_bytes, 1)


def logits_relative_error(path: str | Path, token_ids: Sequence[int]) -> float:
    """|int8 logits - original logits| / |original logits| over one prompt's prefill."""
    from moecloud.engine import EngineConfig, LLMEngine

    def logits(quantization: str | None) -> torch.Tensor:
        config = EngineConfig(model=str(path), dtype="float32", device="cpu", quantization=quantization)
        return LLMEngine(config).compute_logits(list(token_ids))

    reference = logits(None)
    return float((logits("int8") - reference).norm() / reference.norm())


def int8_report(path: str | Path, examples: Sequence[Example]) -> Int8Report:
    original = engine_score(path, examples)
    quantized = engine_score(path, examples, quantization="int8")
    from moecloud.engine.tokenizer import Tokenizer

    probe = Tokenizer(path).encode(" ".join(e.prompt for e in examples[:8]) or "hello")
    return Int8Report(original, quantized, logits_relative_error(path, probe[:256]))
