"""What an engine is built with (``EngineConfig``), and the refusal of a request that cannot fit it."""

from __future__ import annotations

import torch
from pydantic import ConfigDict

from moecloud.config import EngineSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class EngineConfig(EngineSettings):
    """An engine's settings and the checkpoint it serves. Every field and default but ``model`` and ``seed`` is
    the settings' own (``moecloud.config.EngineSettings``, ``MOECLOUD_ENGINE__*``), so ``LLM(path)`` and a worker
    on default settings build the same engine. An unknown option is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    seed: int = 0

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def context_cap(self, model_max_positions: int) -> int:
        """The longest sequence the engine holds: ``max_model_len``, at most the model's own."""
        return min(model_max_positions, self.max_model_len or 1 << 62)

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not supported (supported: auto, {', '.join(DTYPES)})")
        return DTYPES[self.dtype]


class PromptTooLong(ValueError):
    def __init__(self, prompt_tokens: int, limit: int, what: str = "the model's context length") -> None:
        super().__init__(f"the prompt has {prompt_tokens} tokens, but {what} is {limit} tokens")
        self.prompt_tokens, self.limit = prompt_tokens, limit
