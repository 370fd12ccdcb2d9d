"""402 when credit cannot cover a hold, no overspend under concurrency, and 429s with OpenAI's headers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import openai
import pytest
from harness import MODEL, PRICES, Gateway

from moecloud.gateway.metering import PriceSheet, measure_prompt


def hold_for(content: str, max_tokens: int) -> Decimal:
    """The documented worst case: prompt bytes (1 byte/token) + 8 per message, plus max_tokens."""
    prompt = measure_prompt({"messages": [{"role": "user", "content": content}]}).tokens(1.0, 8)
    return PriceSheet(**PRICES).worst_case(prompt, max_tokens)


def test_402_when_balance_cannot_cover_the_hold(gateway: Gateway) -> None:
    gateway.tenant("acme", credit=str(hold_for("hi", 100) - Decimal("0.000000001")))
    client = gateway.client(gateway.key("acme"))
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    assert refused.value.status_code == 402
    assert refused.value.body["code"] == "insufficient_credit"  # type: ignore[index]
    assert "credit" in refused.value.message
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=99)


def test_concurrent_requests_never_overspend(gateway: Gateway) -> None:
    hold = hold_for("SLOW go", 1000)
    covered, attempts = 3, 10
    gateway.tenant("acme", credit=str(hold * covered + hold // 2))
    key = gateway.key("acme")

    def call(_: int) -> int:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "SLOW go"}], "max_tokens": 1000}
        return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {key}"}).status_code

    with ThreadPoolExecutor(attempts) as pool:
        statuses = sorted(pool.map(call, range(attempts)))
    assert statuses == [200] * covered + [402] * (attempts - covered)
    balance = gateway.balance("acme")
    assert Decimal(0) <= balance < hold
    rows = gateway.wait_for_usage("acme", covered)
    assert sum(r["requests"] for r in rows) == covered


def test_requests_per_minute_per_key(gateway: Gateway) -> None:
    gateway.tenant("acme")
    client = gateway.client(gateway.key("acme", rpm=2))
    for _ in range(2):
        client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    other = gateway.client(gateway.key("acme", name="second"))
    other.completions.create(model=MODEL, prompt="x", max_tokens=1)  # the limit was the key's, not the tenant's


def test_tokens_per_minute_per_tenant(gateway: Gateway) -> None:
    gateway.tenant("acme", tpm=100)
    first, second = gateway.client(gateway.key("acme")), gateway.client(gateway.key("acme", name="b"))
    first.completions.create(model=MODEL, prompt="x", max_tokens=60)
    with pytest.raises(openai.RateLimitError, match="tokens per minute on this tenant"):
        second.completions.create(model=MODEL, prompt="x", max_tokens=60)


def test_concurrency_per_key(gateway: Gateway) -> None:
    gateway.tenant("acme")
    key = gateway.key("acme", max_concurrency=2)

    def call(_: int) -> int:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "SLOW"}], "max_tokens": 1}
        return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {key}"}).status_code

    with ThreadPoolExecutor(5) as pool:
        statuses = sorted(pool.map(call, range(5)))
    assert statuses == [200, 200, 429, 429, 429]
