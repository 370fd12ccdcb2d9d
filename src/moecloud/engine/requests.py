"""A request inside the engine: its samples (one sequence each), their progress, and the output they show."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from moecloud.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from moecloud.engine.sampling_params import SamplingParams
from moecloud.engine.sequence import Sequence
from moecloud.engine.stop import StopChecker
from moecloud.engine.structured import Constraint
from moecloud.engine.tokenizer import IncrementalDetokenizer


@dataclass
class SampleState:
    index: int
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    stop: StopChecker
    generator: torch.Generator | None
    logprobs: list[dict[int, Logprob]] | None
    constraint: Constraint | None = None  # its own matcher when the request is constrained
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass(eq=False)
class RequestState:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    metrics: RequestMetrics
    samples: list[SampleState] = field(default_factory=list)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    error: str | None = None  # set when the engine failed this request alone

    @property
    def finished(self) -> bool:
        return all(s.finish_reason for s in self.samples)

    def output(self) -> RequestOutput:
        """The cumulative output so far (callers diff outputs for streaming)."""
        outputs = [
            CompletionOutput(
                index=s.index,
                text=s.stop.visible_text(s.finish_reason is not None),
                token_ids=s.seq.token_ids[s.seq.num_prompt_tokens :],
                logprobs=list(s.logprobs) if s.logprobs is not None else None,
                cumulative_logprob=s.cumulative_logprob,
                finish_reason=s.finish_reason,
                stop_reason=s.stop_reason,
            )
            for s in self.samples
        ]
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_ids,
            outputs=outputs,
            finished=self.finished,
            num_cached_tokens=self.samples[0].seq.num_cached_tokens,
            prompt_logprobs=list(self.prompt_logprobs) if self.prompt_logprobs is not None else None,
            metrics=self.metrics,
            error=self.error,
        )
