"""Health, models, metrics, client disconnects, draining on SIGTERM, and `moecloud worker` as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from polling import read_stream, wait_for, wait_healthy
from workers import KV_CACHE_TOKENS

from moecloud.serving.worker import RunningWorker
from moecloud.web.net import free_port

MODEL = "tiny"  # the served name conftest gives the worker
LONG = {"model": MODEL, "max_tokens": 400, "ignore_eos": True}


def test_health_and_models(worker: RunningWorker) -> None:
    assert httpx.get(worker.base_url + "/health").json()["status"] == "ok"
    models = httpx.get(worker.base_url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    assert models["data"][0]["max_model_len"] == worker.client.max_model_len


def test_metrics_cover_requests_tokens_latency_and_engine(worker: RunningWorker, metric) -> None:
    httpx.post(worker.base_url + "/v1/completions", json={"model": MODEL, "prompt": "count me", "max_tokens": 3})
    httpx.post(worker.base_url + "/v1/completions", json={"model": "nope", "prompt": "x"})
    text = httpx.get(worker.base_url + "/metrics").text
    assert metric(worker, "moecloud_requests_total", endpoint="/v1/completions", status="200") >= 1
    assert metric(worker, "moecloud_requests_total", endpoint="/v1/completions", status="404") >= 1
    assert metric(worker, "moecloud_generation_tokens_total") >= 3
    assert metric(worker, "moecloud_time_to_first_token_seconds_count") >= 1
    assert metric(worker, "moecloud_queue_time_seconds_count") >= 1
    assert metric(worker, "moecloud_kv_cache_capacity_tokens") == KV_CACHE_TOKENS
    for name in ("moecloud_inter_token_latency_seconds_bucket", "moecloud_requests_running",
                 "moecloud_requests_waiting", "moecloud_kv_cache_usage_ratio", "moecloud_prompt_tokens_total",
                 'moecloud_expert_tokens_total{expert="0",layer="1"}'):
        assert name in text


def test_disconnected_stream_is_aborted_in_engine(worker: RunningWorker, metric) -> None:
    aborted = metric(worker, "moecloud_requests_aborted_total")
    body = {**LONG, "prompt": "never read to the end", "stream": True}
    with httpx.stream("POST", worker.base_url + "/v1/completions", json=body) as response:
        next(response.iter_lines())
    wait_for(lambda: metric(worker, "moecloud_requests_aborted_total") == aborted + 1)
    wait_for(lambda: worker.client.num_active() == 0 and metric(worker, "moecloud_requests_running") == 0)
    assert metric(worker, "moecloud_kv_cache_usage_ratio") < 0.05  # blocks freed (prefix cache may keep some)


def test_disconnected_plain_request_is_aborted(worker: RunningWorker, metric) -> None:
    aborted = metric(worker, "moecloud_requests_aborted_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(worker.base_url + "/v1/completions", json={**LONG, "prompt": "impatient"}, timeout=0.3)
    wait_for(lambda: metric(worker, "moecloud_requests_aborted_total") == aborted + 1)


def test_drain_finishes_short_requests_and_ends_long_streams(start_worker) -> None:
    # The grace is long enough for 4 tokens on a slow, busy machine, and the long stream outlasts it on a fast one:
    # 2,000 tokens take the tiny model several times 3 s (no bound here is timed by the test itself).
    with start_worker(engine={"max_model_len": 2048}, serving={"shutdown_grace_seconds": 3.0}) as worker:
        url = worker.base_url + "/v1/completions"
        short: list[str] = []
        long_: list[str] = []
        readers = [threading.Thread(target=read_stream, args=(url, {**LONG, "prompt": "a", "stream": True,
                                                                    "max_tokens": 4}, short)),
                   threading.Thread(target=read_stream, args=(url, {**LONG, "prompt": "b", "stream": True,
                                                                    "max_tokens": 2000}, long_))]
        for reader in readers:
            reader.start()
        wait_for(lambda: bool(short and long_))
        worker.server.handle_exit(signal.SIGTERM, None)
        wait_for(lambda: worker.server.state.draining)
        refused = httpx.post(url, json={"model": MODEL, "prompt": "late"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert httpx.get(worker.base_url + "/health").status_code == 503
        for reader in readers:
            reader.join(timeout=20)
        worker.thread.join(timeout=20)
        assert not worker.thread.is_alive()
    for lines, reason in ((short, "length"), (long_, "abort")):
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == reason


def test_worker_process_exits_cleanly_on_sigterm(tiny_checkpoint: Path) -> None:
    port = free_port()
    env = {**os.environ, "MOECLOUD_SERVING__SHUTDOWN_GRACE_SECONDS": "1", "MOECLOUD_ENGINE__DEVICE": "cpu",
           "MOECLOUD_ENGINE__COMPILE": "false", "MOECLOUD_ENGINE__MAX_MODEL_LEN": "2048"}
    process = subprocess.Popen([sys.executable, "-m", "moecloud.cli", "worker", "--model", str(tiny_checkpoint),
                                "--port", str(port), "--served-model-name", MODEL], env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", 60, process)
        lines: list[str] = []
        reader = threading.Thread(target=read_stream, args=(f"http://127.0.0.1:{port}/v1/completions",
                                                            {**LONG, "prompt": "x", "stream": True,
                                                             "max_tokens": 2000}, lines))
        reader.start()
        wait_for(lambda: len(lines) > 0)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        reader.join(timeout=30)
        # ended by the 1 s grace (2,000 tokens take far longer), not by waiting for the stream to finish
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "abort"
    finally:
        if process.poll() is None:
            process.kill()


def test_stalled_readers_do_not_hold_up_others(worker: RunningWorker) -> None:
    body = {**LONG, "prompt": "nobody reads me", "stream": True, "max_tokens": 300}
    with httpx.Client(timeout=30) as stalled:
        streams = [stalled.stream("POST", worker.base_url + "/v1/completions", json=body) for _ in range(4)]
        responses = [s.__enter__() for s in streams]
        try:
            start = time.monotonic()
            reply = httpx.post(worker.base_url + "/v1/completions",
                               json={"model": MODEL, "prompt": "quick", "max_tokens": 4}, timeout=30)
            assert reply.status_code == 200 and time.monotonic() - start < 5
        finally:
            for stream, response in zip(streams, responses, strict=True):
                response.close()
                stream.__exit__(None, None, None)
