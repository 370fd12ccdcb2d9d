"""What the engine hands back: cumulative per-request outputs (callers diff them for streaming)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    logprob: float
    rank: int  # 1 = most likely
    decoded_token: str
    token_bytes: bytes = b""  # the token's own bytes: part of a UTF-8 character for some byte-level tokens


# one position: {token_id: Logprob}, holding the chosen token plus the top alternatives
PositionLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" (see RequestOutput.error)
    stop_reason: str | int | None = None  # the stop string or token id that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    metrics: RequestMetrics | None = None
    error: str | None = None  # the engine failed this request alone (e.g. "IndexError while sampling")


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of KV blocks in use
    num_preemptions: int
    prefix_cache_hit_tokens: int
    prompt_tokens: int
    generation_tokens: int
    expert_load: dict[int, list[int]] = field(default_factory=dict)  # layer -> tokens routed per expert
    kv_cache_tokens: int = 0  # the KV cache's capacity, in tokens
    tensor_parallel_size: int = 1
    expert_parallel_size: int = 1
    comm_seconds: float = 0.0  # rank 0's time in collectives and sending step plans, since the start
