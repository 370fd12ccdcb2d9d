"""What a request asks of sampling; validated on construction so bad values fail before the engine sees them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moecloud.engine.structured import StructuredOutput

# Below this a temperature is greedy: dividing logits by less overflows float32 into inf and NaN (vLLM's epsilon).
MIN_TEMPERATURE = 1e-5
_SEEDS = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed accepts


class InvalidParameter(ValueError):
    """A request value the engine refuses; ``param`` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # below MIN_TEMPERATURE: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # top-k alternatives per sampled token (0: only the sampled one)
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    structured: StructuredOutput | None = None  # constrained decoding (engine/structured.py)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        floats = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
        for name in floats:
            if not math.isfinite(getattr(self, name)):
                raise InvalidParameter(name, f"{name} must be a finite number")
        checks = [
            ("n", self.n >= 1, "n must be >= 1"),
            ("temperature", self.temperature >= 0, "temperature must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            ("top_k", self.top_k >= 0 or self.top_k == -1, "top_k must be >= 0 (0 or -1: off)"),
            ("min_p", 0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            ("repetition_penalty", self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            ("seed", self.seed is None or _SEEDS[0] <= self.seed <= _SEEDS[1] - (self.n - 1),
             f"seed must be in [{_SEEDS[0]}, {_SEEDS[1]}] (seed + n - 1 included)"),
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 0, "max_tokens must be >= 0"),
            ("min_tokens", self.min_tokens >= 0, "min_tokens must be >= 0"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
            ("prompt_logprobs", self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
             "prompt_logprobs must be in [0, 20]"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
        ]
        for param, ok, message in checks:
            if not ok:
                raise InvalidParameter(param, message)
        if self.top_k == -1:
            self.top_k = 0

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    def check_token_ids(self, vocab_size: int) -> None:
        """Refuse token ids the model does not have (the engine calls this when the request is added)."""
        if any(not 0 <= t < vocab_size for t in self.stop_token_ids):
            raise InvalidParameter("stop_token_ids", f"stop_token_ids must be in [0, {vocab_size})")
