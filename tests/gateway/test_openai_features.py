"""The worker's OpenAI features through the gateway, with a tenant's key and real workers: its error codes
kept, the Responses API metered and billed like chat (whole, streamed, and cut short by its client), tool-call
and reasoning tokens billed as output, and the models with their context lengths."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from fake_upstream import create_fake_upstream
from harness import PRICES, Gateway, running_gateway, serve
from real_worker import FEATURE_MODEL_LEN, deploy
from sqlalchemy import select

from moecloud.pricing import PriceSheet, TokenUsage
from moecloud.serving.worker import RunningWorker
from moecloud.store.tables import UsageRecord

TOOLS_MODEL, R1_MODEL, ALIAS = "tools-model", "r1-model", "helper"
HEALTH_INTERVAL = 0.2  # the gateway learns each upstream's context length at its health checks
LONG = 200  # output tokens a cut-short stream may ask for: far more than it lets the engine produce
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
           "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, tools_worker: RunningWorker,
            r1_worker: RunningWorker) -> Iterator[Gateway]:
    home, fake = tmp_path_factory.mktemp("features"), create_fake_upstream()
    with serve(fake) as fake_url, running_gateway(
        f"sqlite:///{home / 'moecloud.db'}", (fake_url, fake), home,
        billing={"max_tokens_limit": 1000}, routing={"health_interval_seconds": HEALTH_INTERVAL},
    ) as gateway:
        deploy(gateway, TOOLS_MODEL, tools_worker)
        deploy(gateway, R1_MODEL, r1_worker)
        for model in (TOOLS_MODEL, R1_MODEL):
            gateway.call("PUT", f"/admin/prices/{model}", json={k: str(v) for k, v in PRICES.items()})
        gateway.call("PUT", f"/admin/aliases/{ALIAS}", json={"model": TOOLS_MODEL})
        gateway.tenant("acme", credit="1000")
        yield gateway


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.key("acme", "features")


@pytest.fixture(scope="module")
def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return gateway.client(key, timeout=60)


def record(gateway: Gateway, request_id: str, timeout: float = 30) -> UsageRecord:
    """The usage row of one request (a cut-short one settles after its client has gone: polled)."""
    deadline = time.monotonic() + timeout
    while True:
        with gateway.database.read() as session:
            row = session.scalars(select(UsageRecord).where(UsageRecord.request_id == request_id)).first()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, f"request {request_id} was never settled"
            return row
        time.sleep(0.05)


def assert_billed(row: UsageRecord, usage: TokenUsage, model: str) -> None:
    assert (row.model, row.status) == (model, "ok")
    assert (row.prompt_tokens, row.cached_tokens, row.completion_tokens) == (
        usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens)
    assert row.cost == PriceSheet(**PRICES).cost(usage) > 0


def generated(worker: RunningWorker) -> float:
    for line in httpx.get(worker.base_url + "/metrics").text.splitlines():
        if line.startswith("moecloud_generation_tokens_total "):
            return float(line.split()[1])
    return 0.0


def test_the_workers_error_codes_and_fields_reach_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=TOOLS_MODEL, max_tokens=4,
                                       messages=[{"role": "user", "content": "word " * FEATURE_MODEL_LEN}])
    assert too_long.value.status_code == 400 and too_long.value.code == "context_length_exceeded"
    assert str(FEATURE_MODEL_LEN) in too_long.value.message
    with pytest.raises(openai.BadRequestError) as stateful:
        client.responses.create(model=TOOLS_MODEL, input="hi", previous_response_id="resp_1")
    body: Any = stateful.value.body
    assert (stateful.value.code, body["param"]) == ("unsupported_parameter", "previous_response_id")
    with pytest.raises(openai.BadRequestError) as limit:  # the gateway's own limit, named as the field
        client.responses.create(model=TOOLS_MODEL, input="hi", max_output_tokens=1001)
    assert (limit.value.body or {}).get("param") == "max_output_tokens"  # type: ignore[union-attr]


def test_a_response_is_billed_its_usage(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model=ALIAS, instructions="Be brief.", input="hello",
                                                    max_output_tokens=6, temperature=1.0)
    response = raw.parse()
    assert response.model == ALIAS or response.model == TOOLS_MODEL
    assert response.usage is not None and response.usage.output_tokens > 0
    usage = TokenUsage(response.usage.input_tokens, response.usage.input_tokens_details.cached_tokens,
                       response.usage.output_tokens)
    assert_billed(record(gateway, raw.headers["x-request-id"]), usage, TOOLS_MODEL)


def test_a_streamed_response_passes_its_typed_events_and_is_billed_its_final_usage(
    gateway: Gateway, key: str
) -> None:
    body = {"model": TOOLS_MODEL, "input": [{"role": "user", "content": "hello"}], "max_output_tokens": 8,
            "stream": True, "ignore_eos": True}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}"}) as answer:
        assert answer.status_code == 200
        lines = [line for line in answer.iter_lines() if line]
        request_id = answer.headers["x-request-id"]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    events = [httpx.Response(200, content=line[6:]).json() for line in lines if line.startswith("data: ")]
    assert names == [event["type"] for event in events]  # each event named by its type, as OpenAI frames them
    assert names[0] == "response.created" and names[-1] == "response.incomplete"  # cut by max_output_tokens
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final["model"] == TOOLS_MODEL and final["usage"]["output_tokens"] == 8  # the served name, renamed
    deltas = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert deltas == final["output"][-1]["content"][0]["text"]
    usage = TokenUsage(final["usage"]["input_tokens"], final["usage"]["input_tokens_details"]["cached_tokens"], 8)
    assert_billed(record(gateway, request_id), usage, TOOLS_MODEL)


def test_a_response_stream_cut_short_is_billed_what_the_engine_generated(
    gateway: Gateway, key: str, tools_worker: RunningWorker
) -> None:
    before = generated(tools_worker)
    body = {"model": TOOLS_MODEL, "input": "count with me", "max_output_tokens": LONG, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}"}) as answer:
        request_id = answer.headers["x-request-id"]
        for line in answer.iter_lines():
            if line.startswith("data:") and "output_text.delta" in line:
                break  # the client hangs up at the first token
    row = record(gateway, request_id)
    report = httpx.post(f"{tools_worker.base_url}/v1/requests/{request_id}/abort").json()["usage"]
    assert row.status == "cancelled" and 0 < row.completion_tokens == report["completion_tokens"] < LONG
    assert generated(tools_worker) - before < LONG  # the engine stopped generating it
    assert row.cost == PriceSheet(**PRICES).cost(TokenUsage.from_openai(report))  # type: ignore[arg-type]
    held = Decimal(gateway.call("GET", "/admin/credits/acme")["held"])
    assert held == 0


def test_tool_call_and_reasoning_tokens_are_billed_as_output(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=TOOLS_MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=40, temperature=1.0)
    call = raw.parse()
    assert call.choices[0].finish_reason == "tool_calls" and call.usage is not None
    arguments = call.choices[0].message.tool_calls[0].function.arguments  # type: ignore[index,union-attr]
    assert call.usage.completion_tokens > 0 and arguments.startswith("{")
    assert_billed(record(gateway, raw.headers["x-request-id"]), TokenUsage.from_openai(call.usage.model_dump()),  # type: ignore[arg-type]
                  TOOLS_MODEL)
    raw = client.chat.completions.with_raw_response.create(
        model=R1_MODEL, messages=[{"role": "user", "content": "Think."}], max_tokens=12, temperature=1.0,
        extra_body={"ignore_eos": True})
    thought = raw.parse()
    assert thought.usage is not None and thought.usage.completion_tokens == 12
    reasoning = thought.usage.completion_tokens_details.reasoning_tokens  # type: ignore[union-attr]
    assert reasoning and 0 < reasoning <= 12  # counted in the output billed, not on top of it
    assert_billed(record(gateway, raw.headers["x-request-id"]), TokenUsage.from_openai(thought.usage.model_dump()),  # type: ignore[arg-type]
                  R1_MODEL)


def test_models_carry_their_context_length_and_one_model_can_be_retrieved(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    deadline = time.monotonic() + 30
    while "max_model_len" not in (cards := {m.id: m.model_dump() for m in client.models.list()})[TOOLS_MODEL]:
        assert time.monotonic() < deadline, "the gateway never learnt the context length"
        time.sleep(HEALTH_INTERVAL)
    assert cards[TOOLS_MODEL]["max_model_len"] == FEATURE_MODEL_LEN
    assert "max_model_len" not in cards["fake-model"]  # an upstream that does not say it
    assert cards[ALIAS]["root"] == TOOLS_MODEL and cards[ALIAS]["max_model_len"] == FEATURE_MODEL_LEN
    one = client.models.retrieve(TOOLS_MODEL).model_dump()
    assert one == cards[TOOLS_MODEL]
    assert client.models.retrieve(ALIAS).model_dump()["root"] == TOOLS_MODEL
    scoped = gateway.client(gateway.key("acme", "scoped", models=[R1_MODEL]))
    for model, who in (("no-such-model", client), (TOOLS_MODEL, scoped), (ALIAS, scoped)):
        with pytest.raises(openai.NotFoundError) as missing:
            who.models.retrieve(model)
        error: Any = missing.value.body
        assert (missing.value.code, error["param"], error["type"]) == ("model_not_found", "model",
                                                                       "invalid_request_error")
    assert [m.id for m in scoped.models.list()] == [R1_MODEL]
