"""`moecloud worker --tensor-parallel 2` as a process: it serves over real HTTP, exports each expert rank's load,
and exits non-zero once one of its ranks dies (the platform then replaces it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
from polling import wait_for, wait_healthy
from processes import alive, descendants, is_rank

from moecloud.engine import EngineConfig, LLMEngine
from moecloud.serving.engine_client import ThreadEngineClient
from moecloud.web.net import free_port

TIMEOUT = 30  # the worker's parallel_timeout_seconds, and the waits of this test


def test_worker_serves_over_two_ranks_and_exits_when_one_dies(make_checkpoint: Callable[..., Path]) -> None:
    port = free_port()
    env = {**os.environ, "MOECLOUD_ENGINE__DEVICE": "cpu", "MOECLOUD_ENGINE__COMPILE": "false",
           "MOECLOUD_ENGINE__DTYPE": "float32", "MOECLOUD_ENGINE__MAX_MODEL_LEN": "512",
           "MOECLOUD_ENGINE__KV_CACHE_TOKENS": "4096", "MOECLOUD_ENGINE__PARALLEL_TIMEOUT_SECONDS": str(TIMEOUT),
           "MOECLOUD_SERVING__ENGINE_FAILURE_GRACE_SECONDS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "moecloud.cli", "worker", "--model",
                                str(make_checkpoint("v3")), "--port", str(port), "--served-model-name", "tiny",
                                "--tensor-parallel", "2"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", 120, process)
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=TIMEOUT, json={
            "model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
        metrics = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
        assert 'moecloud_expert_rank_tokens_total{layer="1",rank="0"}' in metrics
        below = descendants(process.pid)  # the engine core (rank 0) and rank 1
        ranks = [pid for pid in below if is_rank(pid)]
        assert len(ranks) == 1 and len(below) == 2
        os.kill(ranks[0], signal.SIGKILL)
        assert process.wait(timeout=TIMEOUT) != 0
        wait_for(lambda: not any(alive(pid) for pid in below), TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_thread_client_of_an_idle_engine_ends_when_a_rank_dies(make_checkpoint: Callable[..., Path]) -> None:
    engine = LLMEngine(EngineConfig(model=str(make_checkpoint("v3")), device="cpu", compile=False,
                                    kv_cache_tokens=4096, tensor_parallel_size=2,
                                    parallel_timeout_seconds=TIMEOUT))
    fatal = threading.Event()
    client = ThreadEngineClient(engine, 8, on_fatal=lambda exc: fatal.set())
    try:
        client.start()
        assert engine.ranks is not None
        os.kill(engine.ranks.processes[0].pid, signal.SIGKILL)
        assert fatal.wait(TIMEOUT) and not client.healthy()
    finally:
        client.shutdown()
        engine.close()
