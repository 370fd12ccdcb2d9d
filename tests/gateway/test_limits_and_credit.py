"""Out of credit (429 insufficient_quota) when credit cannot cover a hold, no overspend under concurrency, and
429s with OpenAI's headers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import openai
import pytest
from harness import MODEL, PRICES, Gateway

from moecloud.pricing import PriceSheet, measure_prompt


def hold_for(content: str, max_tokens: int) -> Decimal:
    """The documented worst case: prompt bytes (1 byte/token) + 8 per message, plus max_tokens."""
    prompt = measure_prompt({"messages": [{"role": "user", "content": content}]}).tokens(1.0, 8)
    return PriceSheet(**PRICES).worst_case(prompt, max_tokens)


def test_out_of_credit_is_openais_insufficient_quota(gateway: Gateway) -> None:
    gateway.tenant("acme", credit=str(hold_for("hi", 100) - Decimal("0.000000001")))
    client = gateway.client(gateway.key("acme"))
    with pytest.raises(openai.RateLimitError) as refused:  # the typed error OpenAI's SDK raises for it
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    assert refused.value.status_code == 429
    assert refused.value.code == "insufficient_quota"
    assert refused.value.type == "insufficient_quota"  # type: ignore[attr-defined]
    assert f"up to {hold_for('hi', 100).normalize():f}" in refused.value.message
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=99)


def test_amounts_in_refusals_are_printed_as_money(gateway: Gateway) -> None:
    gateway.tenant("broke", credit="0")
    client = gateway.client(gateway.key("broke"))
    with pytest.raises(openai.RateLimitError) as refused:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert "the balance available is 0.00;" in refused.value.message
    assert "E-" not in refused.value.message


def test_the_hold_counts_every_prompt_and_every_choice(gateway: Gateway) -> None:
    """The issue's case: 64 prompts of 256 tokens from a balance that covers a few must be refused (it was
    accepted and charged 36 times the balance)."""
    credit = PriceSheet(**PRICES).worst_case(1, 256) * 4  # four such prompts
    gateway.tenant("acme", credit=str(credit))
    client = gateway.client(gateway.key("acme"))
    with pytest.raises(openai.RateLimitError, match="insufficient credit"):
        client.completions.create(model=MODEL, prompt=["a"] * 64, max_tokens=256)
    with pytest.raises(openai.RateLimitError, match="insufficient credit"):
        client.completions.create(model=MODEL, prompt=["a"] * 2, max_tokens=256, n=4)
    assert gateway.balance("acme") == credit
    client.completions.create(model=MODEL, prompt=["a"] * 2, max_tokens=256, n=2)
    assert Decimal(0) <= gateway.balance("acme") < credit


@pytest.mark.parametrize(("prompt", "prompts", "prompt_tokens"), [
    ([5, 6, 7], 1, 3),  # a list of token ids is one prompt
    ([[5, 6, 7], [8, 9]], 2, 5),  # a list of token lists is several
    (["ab", "cd", "ef"], 3, 6),
])
def test_holds_count_token_id_prompts(gateway: Gateway, prompt: list, prompts: int, prompt_tokens: int) -> None:
    worst = PriceSheet(**PRICES).worst_case(prompt_tokens, 10 * 2 * prompts)
    gateway.tenant("exact", credit=str(worst))
    gateway.tenant("short", credit=str(worst - Decimal("0.000000001")))
    with pytest.raises(openai.RateLimitError, match="insufficient credit"):
        gateway.client(gateway.key("short")).completions.create(model=MODEL, prompt=prompt, max_tokens=10, n=2)
    gateway.client(gateway.key("exact")).completions.create(model=MODEL, prompt=prompt, max_tokens=10, n=2)


def test_tokens_per_minute_count_every_prompt_and_choice(gateway: Gateway) -> None:
    gateway.tenant("acme", tpm=1000)
    client = gateway.client(gateway.key("acme"))
    with pytest.raises(openai.RateLimitError, match="needs 1601 tokens"):  # 4 prompts x 2 x 200 + 1 estimated
        client.completions.create(model=MODEL, prompt=["a", "b", "c", "d"], max_tokens=200, n=2)
    client.completions.create(model=MODEL, prompt=["a", "b", "c", "d"], max_tokens=100, n=2)


def test_concurrent_requests_never_overspend(gateway: Gateway) -> None:
    hold = hold_for("SLOW go", 1000)
    covered, attempts = 3, 10
    gateway.tenant("acme", credit=str(hold * covered + hold // 2))
    key = gateway.key("acme")

    def call(_: int) -> tuple[int, str | None]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "SLOW go"}], "max_tokens": 1000}
        reply = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30,
                           headers={"authorization": f"Bearer {key}"})
        return reply.status_code, reply.json().get("error", {}).get("code")

    with ThreadPoolExecutor(attempts) as pool:
        outcomes = sorted(pool.map(call, range(attempts)), key=str)
    assert outcomes == [(200, None)] * covered + [(429, "insufficient_quota")] * (attempts - covered)
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
