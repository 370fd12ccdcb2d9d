"""Shared fixtures: tiny random checkpoints in the real Hugging Face layout, written once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from checkpoints import write_random_checkpoint


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_checkpoint(variant, **options)`` -> directory; identical arguments share one checkpoint."""
    made: dict[str, Path] = {}

    def make(variant: str = "v2-lite", **options: Any) -> Path:
        key = f"{variant}-{sorted(options.items())}"
        if key not in made:
            made[key] = write_random_checkpoint(tmp_path_factory.mktemp(variant), variant, **options)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(make_checkpoint: Callable[..., Path]) -> Path:
    return make_checkpoint("v2-lite")


@pytest.fixture(scope="session")
def long_context_checkpoint(make_checkpoint: Callable[..., Path]) -> Path:
    """A 32k-context checkpoint whose attention is one head in one layer: prefill is quadratic in the prompt, so
    this keeps an 18k-token prompt to seconds on a CPU while it still runs every engine stage (MoE included)."""
    return make_checkpoint(
        "v2-lite",
        max_position_embeddings=32768,
        num_hidden_layers=1,
        first_k_dense_replace=0,
        num_attention_heads=1,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
    )
