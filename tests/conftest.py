"""Shared fixtures: tiny random checkpoints in the real Hugging Face layout, written once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from checkpoints import checkpoint_maker


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped, with the reason, on a machine without a CUDA GPU."""
    if not any(item.get_closest_marker("cuda") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); run `pytest -m cuda` on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_checkpoint(variant, **options)`` -> directory; identical arguments share one checkpoint."""
    return checkpoint_maker(tmp_path_factory.mktemp)


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
