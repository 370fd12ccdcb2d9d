"""An 18k-token prompt sent twice to a long-context worker over HTTP: the second is served from the prefix cache.

Before block keys were fixed-size hashes, the second request's cache lookup compared ~1,100-deep nested tuples,
raised RecursionError inside the engine loop and left the worker answering 503 to everyone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from moecloud.config import EngineSettings, ServingSettings, load_settings
from moecloud.serving.worker import RunningWorker, background_worker

LONG = 18_000
BLOCK = 16


@pytest.fixture(scope="module")
def long_worker(long_context_checkpoint: Path) -> Iterator[RunningWorker]:
    settings = load_settings(
        engine=EngineSettings(dtype="float32", device="cpu", compile=False, block_size=BLOCK, kv_cache_tokens=2 * LONG),
        serving=ServingSettings(shutdown_grace_seconds=5.0),
    )
    with background_worker(long_context_checkpoint, settings, served_model_name="long") as running:
        yield running


def test_the_same_18k_prompt_twice_reports_its_cached_tokens(long_worker: RunningWorker) -> None:
    prompt = [(i * 7919) % 500 + 2 for i in range(LONG)]
    body = {"model": "long", "prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=long_worker.base_url, timeout=300) as http:
        first, second = (http.post("/v1/completions", json=body) for _ in range(2))
        assert first.status_code == second.status_code == 200, second.text
        usage = [reply.json()["usage"] for reply in (first, second)]
        assert [u["prompt_tokens"] for u in usage] == [LONG, LONG]
        assert [u["prompt_tokens_details"]["cached_tokens"] for u in usage] == [0, (LONG - 1) // BLOCK * BLOCK]
        assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]
        assert http.get("/health").status_code == 200  # the engine loop lives on
