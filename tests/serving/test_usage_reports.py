"""The worker's final usage of each request, by the caller's ``x-request-id``: what the gateway bills a request
cut short from. Asking aborts a request that still runs; aborted requests count in the worker's own metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from polling import wait_for

from moecloud.serving.worker import RunningWorker

MODEL = "tiny"
LONG = {"model": MODEL, "prompt": "go on", "max_tokens": 400, "ignore_eos": True}


def test_a_finished_request_reports_its_usage(worker: RunningWorker) -> None:
    reply = httpx.post(worker.base_url + "/v1/completions", headers={"x-request-id": "req_done"},
                       json={"model": MODEL, "prompt": "hello", "max_tokens": 5, "ignore_eos": True}, timeout=30)
    report = httpx.post(worker.base_url + "/v1/requests/req_done/abort", timeout=30)
    assert report.status_code == 200
    assert report.json() == {"request_id": "req_done", "usage": reply.json()["usage"]}


def test_asking_aborts_a_running_request_and_reports_what_it_generated(
    worker: RunningWorker, metric: Callable[..., float]
) -> None:
    generated_before = metric(worker, "moecloud_generation_tokens_total")
    chunks: list[str] = []

    def read() -> None:
        with httpx.stream("POST", worker.base_url + "/v1/completions", json={**LONG, "stream": True},
                          headers={"x-request-id": "req_cut"}, timeout=60) as response:
            chunks.extend(line for line in response.iter_lines() if line.startswith("data:"))

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: len(chunks) > 0 or worker.client.num_active() > 0, 30, interval=0.01)
    report = httpx.post(worker.base_url + "/v1/requests/req_cut/abort", timeout=30).json()
    reader.join(30)
    completion = report["usage"]["completion_tokens"]
    assert 0 < completion < LONG["max_tokens"]  # stopped at the engine, mid-way
    assert worker.client.num_active() == 0
    # the worker's own counter includes the aborted request, exactly as reported
    assert metric(worker, "moecloud_generation_tokens_total") - generated_before == completion


def test_a_disconnected_stream_counts_in_the_generation_metric(
    worker: RunningWorker, metric: Callable[..., float]
) -> None:
    generated_before = metric(worker, "moecloud_generation_tokens_total")
    with httpx.stream("POST", worker.base_url + "/v1/completions", json={**LONG, "stream": True},
                      headers={"x-request-id": "req_gone"}, timeout=60) as response:
        next(line for line in response.iter_lines() if line.startswith("data:"))
    report = httpx.post(worker.base_url + "/v1/requests/req_gone/abort", timeout=30).json()
    assert report["usage"]["completion_tokens"] > 0
    assert metric(worker, "moecloud_generation_tokens_total") - generated_before == report["usage"][
        "completion_tokens"]


def test_an_unknown_request_is_404(worker: RunningWorker) -> None:
    reply = httpx.post(worker.base_url + "/v1/requests/req_never/abort", timeout=30)
    assert reply.status_code == 404
    assert reply.json()["error"]["param"] == "request_id"
