"""Through the real worker over HTTP: one bad request fails alone, a dead engine fails /health, and a worker
process whose engine died exits instead of living on as a 503 shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from polling import read_stream, wait_for, wait_healthy

from moecloud.serving.worker import ENGINE_FAILED_EXIT_STATUS, RunningWorker
from moecloud.web.net import free_port

MODEL = "tiny"  # the served name conftest gives the worker
FAULT = "x-moecloud-fault"
LONG = {"model": MODEL, "prompt": "keep going", "max_tokens": 480, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True}}


@pytest.fixture(scope="module")
def faulty(start_worker) -> Iterator[RunningWorker]:
    with start_worker(serving={"fault_injection": True}) as running:
        yield running


def events(lines: list[str]) -> list[dict]:
    return [json.loads(line.removeprefix("data: ")) for line in lines if line != "data: [DONE]"]


def start_long_stream(base_url: str) -> tuple[threading.Thread, list[str]]:
    """A stream that outlives what the test does meanwhile (it waits for its first chunk)."""
    lines: list[str] = []
    reader = threading.Thread(target=read_stream, args=(base_url + "/v1/completions", LONG, lines))
    reader.start()
    wait_for(lambda: len(lines) > 0, 30)
    return reader, lines


def assert_error_shape(error: dict[str, object], code: str) -> None:
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["code"] == code


@pytest.mark.parametrize("stage", ["sample", "forward"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_failing_request_fails_alone_while_another_streams(faulty: RunningWorker, stage: str, path: str) -> None:
    reader, bystander = start_long_stream(faulty.base_url)
    body = {"model": MODEL, "max_tokens": 8,
            **({"prompt": "fail me"} if path == "/v1/completions" else
               {"messages": [{"role": "user", "content": "fail me"}]})}
    plain = httpx.post(faulty.base_url + path, json=body, headers={FAULT: stage}, timeout=60)
    assert plain.status_code == 500, plain.text
    assert_error_shape(plain.json()["error"], "request_failed")
    with httpx.stream("POST", faulty.base_url + path, json={**body, "stream": True}, headers={FAULT: stage},
                      timeout=60) as streamed:
        lines = [line for line in streamed.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert_error_shape(events(lines)[-1]["error"], "request_failed")
    assert httpx.get(faulty.base_url + "/health").status_code == 200
    reader.join(timeout=120)
    assert bystander[-1] == "data: [DONE]"
    last = events(bystander)
    assert last[-1]["usage"]["completion_tokens"] == LONG["max_tokens"]
    assert [e["choices"][0]["finish_reason"] for e in last if e["choices"]][-1] == "length"


def test_a_failing_prompt_of_several_fails_its_request_only(faulty: RunningWorker) -> None:
    body = {"model": MODEL, "prompt": ["one", "two"], "max_tokens": 4}
    failed = httpx.post(faulty.base_url + "/v1/completions", json=body, headers={FAULT: "sample"}, timeout=60)
    assert failed.status_code == 500
    served = httpx.post(faulty.base_url + "/v1/completions", json=body, timeout=60)
    assert served.status_code == 200 and len(served.json()["choices"]) == 2


def test_an_unknown_fault_is_refused_by_name(faulty: RunningWorker) -> None:
    response = httpx.post(faulty.base_url + "/v1/completions", json={"model": MODEL, "prompt": "x"},
                          headers={FAULT: "meteor"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == FAULT


def test_without_the_setting_the_fault_header_means_nothing(worker: RunningWorker) -> None:
    for stage in ("sample", "forward", "fatal"):
        response = httpx.post(worker.base_url + "/v1/completions", json={"model": MODEL, "prompt": "x",
                                                                         "max_tokens": 2},
                              headers={FAULT: stage}, timeout=30)
        assert response.status_code == 200, response.text
    assert httpx.get(worker.base_url + "/health").status_code == 200


@pytest.mark.parametrize(("extra", "param"), [
    ({"stop_token_ids": [10**9], "min_tokens": 1}, "stop_token_ids"),
    ({"stop_token_ids": [-385], "min_tokens": 1}, "stop_token_ids"),
    ({"temperature": 1e-45}, "temperature"),
    ({"top_p": 5e-324}, "top_p"),
    ({"repetition_penalty": 1e-45}, "repetition_penalty"),
    ({"temperature": 1e-45, "logprobs": 3}, "temperature"),
])
def test_the_killers_of_issue_12_leave_the_engine_serving(worker: RunningWorker, extra: dict[str, object],
                                                          param: str) -> None:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 4, **extra}
    response = httpx.post(worker.base_url + "/v1/completions", json=body, timeout=60)
    assert response.status_code in (200, 400), response.text  # served (a tiny temperature is greedy) or refused
    if response.status_code == 400:
        error = response.json()["error"]
        assert_error_shape(error, error["code"])
        assert str(error["param"]).startswith(param)
    assert httpx.get(worker.base_url + "/health").status_code == 200
    normal = httpx.post(worker.base_url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert normal.status_code == 200


def test_a_dead_engine_fails_health_and_every_request(start_worker) -> None:
    with start_worker(serving={"fault_injection": True}) as worker:
        reader, bystander = start_long_stream(worker.base_url)
        killed = httpx.post(worker.base_url + "/v1/completions", json={"model": MODEL, "prompt": "x"},
                            headers={FAULT: "fatal"}, timeout=60)
        assert killed.status_code == 503 and killed.json()["error"]["code"] == "engine_dead"
        reader.join(timeout=60)
        assert bystander[-1] == "data: [DONE]"
        assert_error_shape(events(bystander)[-1]["error"], "engine_dead")
        health = httpx.get(worker.base_url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "engine_dead"
        later = httpx.post(worker.base_url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=30)
        assert later.status_code == 503 and later.json()["error"]["code"] == "engine_dead"


def test_a_worker_process_whose_engine_dies_exits(tiny_checkpoint: Path) -> None:
    port, grace = free_port(), 2.0
    env = {**os.environ, "MOECLOUD_SERVING__FAULT_INJECTION": "true", "MOECLOUD_ENGINE__DEVICE": "cpu",
           "MOECLOUD_ENGINE__COMPILE": "false", "MOECLOUD_ENGINE__MAX_MODEL_LEN": "512",
           "MOECLOUD_SERVING__ENGINE_FAILURE_GRACE_SECONDS": str(grace)}
    process = subprocess.Popen([sys.executable, "-m", "moecloud.cli", "worker", "--model", str(tiny_checkpoint),
                                "--port", str(port), "--served-model-name", MODEL], env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url + "/health", 120, process)
        reader, bystander = start_long_stream(base_url)
        killed = httpx.post(base_url + "/v1/completions", json={"model": MODEL, "prompt": "x"},
                            headers={FAULT: "fatal"}, timeout=60)
        assert killed.status_code == 503
        died = time.monotonic()
        # the grace bounds the wait for open responses; the rest is the interpreter's own exit
        assert process.wait(timeout=grace + 10) == ENGINE_FAILED_EXIT_STATUS
        assert time.monotonic() - died < grace + 10
        reader.join(timeout=10)
        assert bystander[-1] == "data: [DONE]"
        assert_error_shape(events(bystander)[-1]["error"], "engine_dead")
    finally:
        if process.poll() is None:
            process.kill()
