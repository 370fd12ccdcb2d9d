"""A real worker for a test (uvicorn in a thread of the test process, real HTTP): one way to start one."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from moecloud.config import EngineSettings, ServingSettings, load_settings
from moecloud.serving.worker import RunningWorker, background_worker

KV_CACHE_TOKENS = 16384  # a test worker's KV cache (unless the test gives its own)


def worker_on(checkpoint: Path, name: str = "tiny", *, engine: dict[str, Any] | None = None,
              serving: dict[str, Any] | None = None) -> AbstractContextManager[RunningWorker]:
    """``with worker_on(checkpoint, engine={...}, serving={...}) as worker:`` on CPU in float32, eager (no
    compile: `tests/engine/test_compile.py` tests it), small and quick to stop unless the test says otherwise."""
    settings = load_settings(
        engine=EngineSettings(**{"dtype": "float32", "device": "cpu", "compile": False, "max_model_len": 512,
                                 "kv_cache_tokens": KV_CACHE_TOKENS, **(engine or {})}),
        serving=ServingSettings(**{"shutdown_grace_seconds": 5.0, "max_tokens_default": 16, **(serving or {})}),
    )
    return background_worker(checkpoint, settings, served_model_name=name)
