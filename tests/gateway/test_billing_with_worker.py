"""Billing what the engine produced, through the gateway in front of a real engine worker: however the client
hangs up, the completion tokens billed equal the tokens the worker's engine generated (its own counter, which
counts aborted requests too)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from harness import PRICES, Gateway
from sqlalchemy import select

from moecloud.config import EngineSettings, ServingSettings, load_settings
from moecloud.pricing import PriceSheet, TokenUsage
from moecloud.serving.worker import RunningWorker, background_worker
from moecloud.store.tables import UsageRecord

TINY = "tiny"
LONG = 1900  # tokens a request may generate: far more than the hang-ups below let it finish (the slow reader
# pauses 0.6 s in all: at 400 tokens the engine-core process sometimes finished the request within them)


@pytest.fixture(scope="module")
def worker(tiny_checkpoint: Path) -> Iterator[RunningWorker]:
    settings = load_settings(
        engine=EngineSettings(dtype="float32", device="cpu", compile=False, max_model_len=2048,
                              kv_cache_tokens=16384),
        serving=ServingSettings(shutdown_grace_seconds=1.0),
    )
    with background_worker(tiny_checkpoint, settings, served_model_name=TINY) as running:
        yield running


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway], worker: RunningWorker) -> Gateway:
    gateway = make_gateway()
    gateway.call("POST", "/admin/deployments", json={"name": "tiny-1", "model": TINY,
                                                       "base_url": worker.base_url + "/v1"})
    gateway.call("PUT", f"/admin/prices/{TINY}", json={k: str(v) for k, v in PRICES.items()})
    return gateway


def generated(worker: RunningWorker) -> float:
    for line in httpx.get(worker.base_url + "/metrics").text.splitlines():
        if line.startswith("moecloud_generation_tokens_total "):
            return float(line.split()[1])
    return 0.0


def body(**extra: object) -> dict[str, object]:
    return {"model": TINY, "prompt": "count with me", "max_tokens": LONG, "ignore_eos": True, **extra}


def read_then_hang_up(gateway: Gateway, key: str, chunks: int, pause: float = 0.0) -> None:
    with httpx.stream("POST", gateway.url + "/v1/completions", json=body(stream=True), timeout=30,
                      headers={"authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data:"):
                seen += 1
                time.sleep(pause)  # a slow reader: the worker merges tokens into bigger deltas meanwhile
            if seen >= chunks:
                return


def hang_up_while_waiting(gateway: Gateway, key: str, worker: RunningWorker) -> None:
    """A non-streamed request whose client goes away once the engine is generating it."""
    url = urlsplit(gateway.url)
    payload = json.dumps(body()).encode()
    with socket.create_connection((url.hostname, url.port)) as connection:
        connection.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {key}\r\ncontent-length: {len(payload)}\r\n\r\n".encode() + payload
        )
        deadline = time.monotonic() + 30
        while worker.client.num_active() == 0:
            assert time.monotonic() < deadline, "the worker never started the request"
            time.sleep(0.01)


HANG_UPS: dict[str, Callable[[Gateway, str, RunningWorker], None]] = {
    "after the first chunk": lambda g, k, w: read_then_hang_up(g, k, 1),
    "after five chunks": lambda g, k, w: read_then_hang_up(g, k, 5),
    "slow reader, after three chunks": lambda g, k, w: read_then_hang_up(g, k, 3, pause=0.2),
    "not streamed, while generating": hang_up_while_waiting,
}


@pytest.mark.parametrize("hang_up", list(HANG_UPS))
def test_a_client_that_hangs_up_is_billed_what_the_engine_generated(
    gateway: Gateway, worker: RunningWorker, hang_up: str
) -> None:
    gateway.tenant("acme", credit="1")
    key = gateway.key("acme", max_concurrency=1)
    before = generated(worker)
    HANG_UPS[hang_up](gateway, key, worker)
    [row] = gateway.wait_for_usage("acme", 1, timeout=30)
    produced = generated(worker) - before
    print(f"{hang_up}: billed {row['completion_tokens']} of {produced:.0f} generated "
          f"(ratio {row['completion_tokens'] / produced:.2f})")
    assert 0 < produced < LONG  # the request was cut short, and the engine stopped generating it
    # what the worker's engine produced for this very request (its counter may also hold a request of the test
    # before, whose aborted stream settled after ``before`` was read)
    with gateway.database.read() as session:
        (request_id,) = session.scalars(select(UsageRecord.request_id)).all()
    report = httpx.post(f"{worker.base_url}/v1/requests/{request_id}/abort").json()["usage"]
    assert row["completion_tokens"] == report["completion_tokens"] <= produced
    credits = gateway.call("GET", "/admin/credits/acme")
    assert Decimal(credits["held"]) == 0
    assert Decimal(credits["balance"]) == Decimal(1) - Decimal(row["cost"])
    assert worker.client.num_active() == 0


def test_prompt_scoring_with_max_tokens_0_is_billed_as_input_only(gateway: Gateway) -> None:
    """lm-evaluation-harness's log-likelihood: echo the prompt with its logprobs, generate nothing."""
    gateway.tenant("acme", credit="1")
    client = gateway.client(gateway.key("acme"))
    answer = client.completions.create(model=TINY, prompt="the cat sat", max_tokens=0, echo=True, logprobs=1)
    assert answer.choices[0].text == "the cat sat"
    assert answer.choices[0].logprobs is not None and len(answer.choices[0].logprobs.token_logprobs) > 0
    assert answer.usage is not None and answer.usage.completion_tokens == 0
    [row] = gateway.wait_for_usage("acme", 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (answer.usage.prompt_tokens, 0)
    cached = answer.usage.prompt_tokens_details.cached_tokens or 0  # type: ignore[union-attr]
    expected = PriceSheet(**PRICES).cost(TokenUsage(answer.usage.prompt_tokens, cached, 0))
    assert Decimal(row["cost"]) == expected > 0
    with pytest.raises(Exception, match="max_tokens"):  # without echo, 0 tokens is still refused
        client.completions.create(model=TINY, prompt="the cat sat", max_tokens=0)
