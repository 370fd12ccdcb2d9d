"""Score a checkpoint on suite examples through the moecloud engine: chat template, greedy decoding."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moecloud.toolkit.tasks import Example, group_accuracy, score


@dataclass
class EngineScore:
    accuracy: float
    by_group: dict[str, float] = field(default_factory=dict)  # "task/l<level>" -> accuracy
    output_tokens: int = 0
    seconds: float = 0.0
    weight_bytes: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0


def engine_score(path: str | Path, examples: Sequence[Example], max_tokens: int = 24,
                 **engine_options: Any) -> EngineScore:
    """Accuracy of the checkpoint at ``path`` (engine options such as ``quantization="int8"`` apply)."""
    from moecloud.engine import LLM, SamplingParams

    # eager unless asked: a scoring run is one short batch job, shorter than the first compile of a checkpoint
    options = {"dtype": "float32", "device": "cpu", "compile": False, **engine_options}
    llm = LLM(str(path), **options)
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    conversations = [[{"role": "user", "content": e.prompt}] for e in examples]
    started = time.perf_counter()
    outputs = llm.chat(conversations, params)
    seconds = time.perf_counter() - started
    correct = [score(e, o.outputs[0].text) for e, o in zip(examples, outputs, strict=True)]
    weight_bytes = sum(t.numel() * t.element_size() for t in llm.engine.model.state_dict().values())
    return EngineScore(
        accuracy=sum(correct) / max(len(correct), 1),
        by_group=group_accuracy(examples, correct),
        output_tokens=sum(len(o.outputs[0].token_ids) for o in outputs),
        seconds=seconds,
        weight_bytes=weight_bytes,
    )


def score_checkpoint(path: str | Path, examples: Sequence[Example]) -> dict[str, float]:
    result = engine_score(path, examples)
    return {"all": result.accuracy, **result.by_group}
