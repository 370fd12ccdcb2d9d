"""Billing arithmetic, exact to the money quantum, over streamed, plain, cancelled and failed requests."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import httpx
import openai
import pytest
from harness import MODEL, PRICES, Gateway

QUANTUM = Decimal("0.000000001")


def cost(prompt: int, cached: int, completion: int) -> Decimal:
    exact = ((prompt - cached) * PRICES["input_miss"] + cached * PRICES["input_hit"]
             + completion * PRICES["output"]) / 1_000_000
    return exact.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def fake_prompt_tokens(text: str) -> int:
    return 5 + len(text.split())  # what the fake upstream reports


def estimated_prompt_tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / 4) + 8  # the documented estimate for one message


def chat(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def test_mixed_requests_are_billed_exactly(gateway: Gateway) -> None:
    gateway.tenant("acme", credit="5")
    client = gateway.client(gateway.key("acme"))
    expected = Decimal(0)

    client.chat.completions.create(model=MODEL, messages=chat("plain request"), max_tokens=7)
    expected += cost(fake_prompt_tokens("plain request"), 0, 7)

    answer = client.completions.create(model=MODEL, prompt="CACHE a b c d e f g", max_tokens=3)
    assert answer.usage is not None and answer.usage.prompt_tokens_details.cached_tokens == 6
    expected += cost(13, 6, 3)

    stream = client.chat.completions.create(
        model=MODEL, messages=chat("stream me"), max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "t0 t1 t2 t3 t4 "
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    expected += cost(fake_prompt_tokens("stream me"), 0, 5)

    quiet = list(client.chat.completions.create(model=MODEL, messages=chat("no usage asked"), max_tokens=4,
                                                stream=True))
    assert all(c.usage is None for c in quiet) and all(c.choices for c in quiet)  # usage chunk withheld
    expected += cost(fake_prompt_tokens("no usage asked"), 0, 4)

    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=MODEL, messages=chat("FAIL now"), max_tokens=9)
    assert failed.value.status_code == 502

    client.chat.completions.create(model=MODEL, messages=chat("NOUSAGE please"), max_tokens=8)
    expected += cost(estimated_prompt_tokens("NOUSAGE please"), 0, math.ceil(len("tok " * 8) / 4))

    rows = gateway.wait_for_usage("acme", 6)
    assert sum(r["requests"] for r in rows) == 6
    assert sum(Decimal(r["cost"]) for r in rows) == expected
    assert gateway.balance("acme") == Decimal(5) - expected
    credits = gateway.call("GET", "/admin/credits/acme", params={"entries": 100})
    assert Decimal(credits["held"]) == 0
    assert sum(Decimal(e["amount"]) for e in credits["entries"]) == Decimal(5) - expected


def test_cancelled_stream_is_billed_for_tokens_produced(gateway: Gateway) -> None:
    gateway.tenant("acme", credit="1")
    client = gateway.client(gateway.key("acme"), timeout=10)
    stream = client.chat.completions.create(model=MODEL, messages=chat("HANG_AFTER_3 x"), max_tokens=50,
                                            stream=True)
    received = [next(stream) for _ in range(3)]
    assert [c.choices[0].delta.content for c in received] == ["t0 ", "t1 ", "t2 "]
    stream.close()  # the client hangs up while the upstream is silent
    rows = gateway.wait_for_usage("acme", 1)
    assert [(r["completion_tokens"], r["prompt_tokens"]) for r in rows] == [
        (3, estimated_prompt_tokens("HANG_AFTER_3 x"))
    ]
    assert gateway.balance("acme") == Decimal(1) - cost(estimated_prompt_tokens("HANG_AFTER_3 x"), 0, 3)
    statuses = [r.status for r in _records(gateway)]
    assert statuses == ["cancelled"]


def test_stream_dying_midway_ends_cleanly_and_bills_what_was_sent(gateway: Gateway) -> None:
    gateway.tenant("acme", credit="1")
    key = gateway.key("acme")
    body = {"model": MODEL, "messages": chat("DIE_AFTER_2 y"), "max_tokens": 20, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {key}"}) as response:
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]" and '"upstream_error"' in events[-2]
    gateway.wait_for_usage("acme", 1)
    [record] = _records(gateway)
    assert (record.status, record.completion_tokens) == ("error", 2)


def test_failures_release_the_hold_and_cost_nothing(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway(gateway={"upstream_read_timeout_seconds": 0.5})
    gateway.tenant("acme", credit="1")
    client = gateway.client(gateway.key("acme"))
    with pytest.raises(openai.InternalServerError) as timed_out:
        client.chat.completions.create(model=MODEL, messages=chat("HANG forever"), max_tokens=5)
    assert timed_out.value.status_code == 504
    with pytest.raises(openai.RateLimitError) as busy:
        client.chat.completions.create(model=MODEL, messages=chat("BUSY"), max_tokens=5)
    assert busy.value.response.headers["retry-after"] == "7"
    gateway.call("POST", "/admin/deployments", json={"name": "dead", "model": "dead-model",
                                                       "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(openai.APIStatusError) as unreachable:
        client.chat.completions.create(model="dead-model", messages=chat("hi"), max_tokens=5)
    assert unreachable.value.status_code == 503
    assert gateway.balance("acme") == Decimal(1)
    assert {r.status for r in _records(gateway)} == {"error"}
    assert Decimal(gateway.call("GET", "/admin/credits/acme")["held"]) == 0


def test_request_id_reaches_the_upstream_and_the_usage_record(gateway: Gateway) -> None:
    gateway.tenant("acme")
    client = gateway.client(gateway.key("acme"))
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=chat("id please"), max_tokens=2)
    request_id = raw.headers["x-request-id"]
    assert gateway.upstream_app.state.received[-1]["request_id"] == request_id
    assert [r.request_id for r in _records(gateway)] == [request_id]


def _records(gateway: Gateway) -> list:  # type: ignore[type-arg]
    from sqlalchemy import select

    from moecloud.store.tables import UsageRecord

    with gateway.database.read() as session:
        return list(session.scalars(select(UsageRecord).order_by(UsageRecord.id)))


def test_responses_are_billed_their_usage_or_estimated_and_a_dying_stream_ends_with_an_error_event(
    gateway: Gateway,
) -> None:
    """The Responses API: reported usage, whole and streamed; no usage: the output by its size; a stream the
    upstream drops ends with a typed error event and is billed the deltas relayed."""
    gateway.tenant("acme", credit="1")
    key = gateway.key("acme")
    client = gateway.client(key)
    answer = client.responses.create(model=MODEL, input="plain response", instructions="be brief",
                                     max_output_tokens=6)
    assert answer.usage is not None and answer.usage.output_tokens == 6
    streamed = list(client.responses.create(model=MODEL, input="stream me", max_output_tokens=4, stream=True))
    assert [event.type for event in streamed][-1] == "response.completed"
    client.responses.create(model=MODEL, input="NOUSAGE please", max_output_tokens=8)
    body = {"model": MODEL, "input": "DIE_AFTER_2 y", "max_output_tokens": 20, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body,
                      headers={"authorization": f"Bearer {key}"}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-2] == "event: error" and '"upstream_error"' in lines[-1]
    gateway.wait_for_usage("acme", 4)
    records = {record.status + str(record.completion_tokens): record for record in _records(gateway)}
    assert set(records) == {"ok6", "ok4", "ok8", "error2"}
    assert records["ok6"].prompt_tokens == fake_prompt_tokens("plain response")
    assert records["ok4"].prompt_tokens == fake_prompt_tokens("stream me")
    # "tok " x 8: 32 bytes at 4 a token; the prompt by the documented estimate
    assert records["ok8"].prompt_tokens == estimated_prompt_tokens("NOUSAGE please")
    assert records["error2"].prompt_tokens == estimated_prompt_tokens("DIE_AFTER_2 y")
    assert Decimal(gateway.call("GET", "/admin/credits/acme")["held"]) == 0
