"""Shared fixtures: tiny random checkpoints in the real Hugging Face layout, written once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from moecloud.engine.random_checkpoint import write_random_checkpoint


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
