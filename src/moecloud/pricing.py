"""Token counting and pricing: the arithmetic of billing, with no I/O.

Costs are exact Decimal products of tokens and per-million prices, rounded half-up to the money quantum
(1e-9) once per request. Holds round up, so a hold always covers the cost it bounds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

from moecloud.config import BillingSettings

# The smallest amount of money anything holds (the store keeps money as integer counts of it).
MONEY_QUANTUM = Decimal("0.000000001")
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Any) -> TokenUsage | None:
        """Read an OpenAI ``usage`` object; None when it is absent or malformed."""
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
        if not all(isinstance(n, int) and n >= 0 for n in (prompt, completion, cached)):
            return None
        return cls(prompt_tokens=prompt, cached_tokens=min(cached or 0, prompt), completion_tokens=completion)

    @classmethod
    def from_responses(cls, usage: Any) -> TokenUsage | None:
        """Read a Responses API ``usage`` object (its reasoning tokens are part of ``output_tokens``)."""
        if not isinstance(usage, dict):
            return None
        details = usage.get("input_tokens_details")
        return cls.from_openai({"prompt_tokens": usage.get("input_tokens"),
                                "completion_tokens": usage.get("output_tokens"),
                                "prompt_tokens_details": details if isinstance(details, dict) else {}})


@dataclass(frozen=True)
class PriceSheet:
    """Prices per million tokens for one model."""

    input_miss: Decimal
    input_hit: Decimal
    output: Decimal

    @classmethod
    def default(cls, billing: BillingSettings) -> PriceSheet:
        """What a model without a price of its own costs."""
        return cls(billing.default_input_miss_price, billing.default_input_hit_price, billing.default_output_price)

    def cost(self, usage: TokenUsage) -> Decimal:
        misses = usage.prompt_tokens - usage.cached_tokens
        exact = (
            misses * self.input_miss + usage.cached_tokens * self.input_hit + usage.completion_tokens * self.output
        ) / _MILLION
        return exact.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)

    def worst_case(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        exact = (prompt_tokens * max(self.input_miss, self.input_hit) + completion_tokens * self.output) / _MILLION
        return exact.quantize(MONEY_QUANTUM, rounding=ROUND_CEILING)


@dataclass(frozen=True)
class PromptSize:
    """What can be known about a prompt without its tokenizer."""

    text_bytes: int  # UTF-8 bytes of text that will be tokenized
    known_tokens: int  # prompts given as token ids count exactly
    messages: int
    prompts: int = 1  # a completions request may send several; each gets ``n`` choices

    def tokens(self, bytes_per_token: float, overhead_per_message: int) -> int:
        from_text = math.ceil(self.text_bytes / bytes_per_token) if self.text_bytes else 0
        return self.known_tokens + from_text + self.messages * overhead_per_message


def measure_prompt(body: dict[str, Any]) -> PromptSize:
    """Size the prompt of a chat or completions request (tools and schemas count as text)."""
    text_bytes, known_tokens, messages = 0, 0, 0
    for extra in ("tools", "functions", "response_format"):
        if body.get(extra) is not None:
            text_bytes += _json_bytes(body[extra])
    if isinstance(body.get("messages"), list):
        for message in body["messages"]:
            messages += 1
            if isinstance(message, dict):
                text_bytes += sum(_json_bytes(v) for k, v in message.items() if k != "role")
    prompt = body.get("prompt")
    items = prompt if isinstance(prompt, list) else [prompt] if prompt is not None else []
    for item in items:
        if isinstance(item, str):
            text_bytes += len(item.encode())
        elif isinstance(item, int):
            known_tokens += 1
        elif isinstance(item, list):
            known_tokens += len(item)
    return PromptSize(text_bytes=text_bytes, known_tokens=known_tokens, messages=messages, prompts=_count(items))


def measure_input(body: dict[str, Any]) -> PromptSize:
    """Size the prompt of a Responses API request: ``instructions`` and each ``input`` item are a message;
    tools and ``text.format`` count as text."""
    text_bytes, messages = 0, 0
    text = body.get("text")
    for extra in (body.get("tools"), text.get("format") if isinstance(text, dict) else None):
        if extra is not None:
            text_bytes += _json_bytes(extra)
    given = body.get("input")
    items = [body.get("instructions"), *(given if isinstance(given, list) else [given])]
    for item in items:
        if isinstance(item, dict):
            text_bytes += sum(_json_bytes(v) for k, v in item.items() if k not in ("role", "type"))
        elif item is not None:
            text_bytes += _json_bytes(item)
        messages += item is not None
    return PromptSize(text_bytes=text_bytes, known_tokens=0, messages=messages)


def _count(prompts: list[Any]) -> int:
    """Prompts in a completions ``prompt``: a list of token ids is one prompt, a list of strings or of token
    lists is several."""
    if not prompts or all(isinstance(item, int) and not isinstance(item, bool) for item in prompts):
        return 1
    return len(prompts)


def _json_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    return len(json.dumps(value, ensure_ascii=False).encode())
