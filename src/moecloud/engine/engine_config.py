"""What an engine is built with (``EngineConfig``), and the refusal of a request that cannot fit it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineConfig:
    model: str
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto
    device: str = "auto"  # cpu | cuda | auto
    quantization: str | None = None  # None | "int8" (weight-only)
    block_size: int = 16
    kv_cache_tokens: int = 16384
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    compile: bool = False  # decode steps through torch.compile (inductor); the first ones pay the compile
    compile_max_batch: int = 32  # larger decode steps stay eager: there per-expert GEMMs beat the fused reduction
    structured_cache_size: int = 256  # compiled grammars kept, by spec
    structured_lexer_fuel: int = 100_000  # llguidance's budget for building a grammar's lexer
    structured_mask_threads: int = 0  # 0: masks computed on the engine thread; N: on a pool of N threads
    max_consecutive_failures: int = 10  # failed requests with no token between them: the engine, not them, is broken

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

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
