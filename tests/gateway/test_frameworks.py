"""The clients developers build on, used as their docs show, through the gateway with a tenant's key in front of a
real worker: the openai SDK (`parse`, `responses.create`/`parse`, a tool call), LangChain's `ChatOpenAI`
(`with_structured_output`, `bind_tools`, its context-overflow error) and litellm's `completion`. The tiny random
checkpoint forms valid JSON or a valid call only when decoding is really constrained, so each can fail.

LlamaIndex's `OpenAILike` is not among them: every llama-index-llms-openai release pins openai < 3, below the
openai this project is tested with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import openai
import pytest
from fake_upstream import create_fake_upstream
from harness import Gateway, running_gateway, serve
from langchain_core.exceptions import ContextOverflowError
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field
from real_worker import FEATURE_MODEL_LEN, deploy

from moecloud.serving.worker import RunningWorker

MODEL = "assistant"
ASK = "Describe a pet."
BUDGET = 64  # output tokens: room for a whole object of the schemas below


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    age: int = Field(ge=0, le=30)
    name: str = Field(min_length=1, max_length=4)


class GetWeather(BaseModel):
    """The weather in a city over the next days."""

    model_config = ConfigDict(extra="forbid")  # else any other argument is valid too, and may never end

    city: Literal["Paris", "Rome"]
    days: int = Field(ge=1, le=7)


WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": GetWeather.__doc__,
                "parameters": GetWeather.model_json_schema()}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, tools_worker: RunningWorker) -> Iterator[Gateway]:
    home, fake = tmp_path_factory.mktemp("frameworks"), create_fake_upstream()
    database = f"sqlite:///{home / 'moecloud.db'}"
    with serve(fake) as fake_url, running_gateway(database, (fake_url, fake), home) as gateway:
        deploy(gateway, MODEL, tools_worker)
        gateway.tenant("acme", credit="1000")
        yield gateway


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.key("acme", "frameworks", models=[MODEL])


@pytest.fixture(scope="module")
def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return gateway.client(key, timeout=60)


def chat_model(gateway: Gateway, key: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=gateway.url + "/v1", api_key=key, temperature=1.0,  # type: ignore[arg-type]
                      max_retries=0, timeout=60, **options)


def test_openai_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    for seed in (0, 1):
        reply = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": ASK}],
                                              response_format=Pet, temperature=1.0, seed=seed, max_tokens=BUDGET)
        assert isinstance(reply.choices[0].message.parsed, Pet)
        assert reply.model == MODEL


def test_openai_responses_text_structured_and_a_tool_call(client: openai.OpenAI) -> None:
    plain = client.responses.create(model=MODEL, instructions="Answer briefly.", input=ASK, max_output_tokens=6)
    assert plain.status in ("completed", "incomplete") and plain.model == MODEL
    assert plain.usage is not None and 0 < plain.usage.output_tokens <= 6
    parsed = client.responses.parse(model=MODEL, input=ASK, text_format=Pet, temperature=1.0,
                                    max_output_tokens=BUDGET)
    assert isinstance(parsed.output_parsed, Pet)
    called = client.responses.create(model=MODEL, input="Weather in Rome?", tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                     tool_choice={"type": "function", "name": "get_weather"}, temperature=1.0,
                                     max_output_tokens=BUDGET)
    [call] = [item for item in called.output if item.type == "function_call"]
    assert call.name == "get_weather"  # type: ignore[union-attr]
    GetWeather.model_validate_json(call.arguments)  # type: ignore[union-attr]


def test_openai_chat_tool_call_required(client: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {k: WEATHER_TOOL[k] for k in ("name", "description", "parameters")}}
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                           tools=[tool], tool_choice="required", temperature=1.0,  # type: ignore[list-item]
                                           max_tokens=BUDGET)
    assert reply.choices[0].finish_reason == "tool_calls"
    [call] = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["parameters"])  # type: ignore[union-attr]


def test_langchain_structured_output_and_bound_tools(gateway: Gateway, key: str) -> None:
    llm = chat_model(gateway, key, max_tokens=BUDGET)
    pet = llm.with_structured_output(Pet).invoke(ASK)
    assert isinstance(pet, Pet)
    message = llm.bind_tools([GetWeather], tool_choice="GetWeather").invoke("Weather in Paris?")
    assert isinstance(message, AIMessage)
    [call] = message.tool_calls
    assert call["name"] == "GetWeather"
    GetWeather.model_validate(call["args"])


def test_langchain_gets_the_context_overflow_code(gateway: Gateway, key: str) -> None:
    """LangChain classifies an overflow by ``context_length_exceeded`` in the error's text, which openai 3 no
    longer puts there (it keeps the body's code as ``.code``): the code must be the worker's either way."""
    with pytest.raises(openai.BadRequestError) as overflow:
        chat_model(gateway, key, max_tokens=4).invoke("word " * FEATURE_MODEL_LEN)
    assert overflow.value.code == "context_length_exceeded"
    assert isinstance(overflow.value, ContextOverflowError) == ("context_length_exceeded" in str(overflow.value))


def test_litellm_completion(gateway: Gateway, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm's own option: no fetch of its price list
    import litellm

    reply: Any = litellm.completion(model=f"openai/{MODEL}", api_base=gateway.url + "/v1", api_key=key,
                                    messages=[{"role": "user", "content": ASK}], max_tokens=BUDGET,
                                    temperature=1.0, response_format=Pet)
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens > 0
    Pet.model_validate_json(reply.choices[0].message.content)
