"""POST /v1/responses over the chat pipeline's structured output, tool calls and reasoning, through the openai SDK:
`text.format` (json_schema, json_object, `responses.parse`), function tools (required, named, streamed, a round
trip with tool results) and the reasoning item of an R1-style checkpoint. A random checkpoint produces valid JSON
or a valid call only when decoding is really constrained, so these can fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, RunConfig, Runner, function_tool
from pydantic import BaseModel, Field
from workers import worker_on

from moecloud.serving.worker import RunningWorker

MODEL = "tiny"
LONGER = {"max_model_len": 1024}  # room for tools and schemas in the prompt
SEEDS = [1, 2, 3]
BUDGET = 300  # max_output_tokens: room for a bounded object; one cut short fails the test instead of hanging it


class Forecast(BaseModel):
    city: str = Field(max_length=12)
    unit: Literal["c", "f"]
    days: list[Literal["mon", "tue", "wed"]] = Field(max_length=3)


WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.", "strict": True,
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                          "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}}}}
TIME = {"type": "function", "name": "get_time", "strict": True,
        "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                       "properties": {"zone": {"enum": ["utc", "cet"]}}}}


def sdk(worker: RunningWorker) -> openai.OpenAI:
    return openai.OpenAI(base_url=worker.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tools_worker(make_checkpoint: Callable[..., Path]) -> Iterator[RunningWorker]:
    with worker_on(make_checkpoint("v2-lite", chat_template="deepseek-tools"), MODEL, engine=LONGER) as running:
        yield running


@pytest.fixture(scope="module")
def tools_client(tools_worker: RunningWorker) -> openai.OpenAI:
    return sdk(tools_worker)


@pytest.fixture(scope="module")
def r1_client(make_checkpoint: Callable[..., Path]) -> Iterator[openai.OpenAI]:
    with worker_on(make_checkpoint("v2-lite", chat_template="r1"), MODEL, engine=LONGER) as running:
        yield sdk(running)


@pytest.mark.parametrize("seed", SEEDS)
def test_parse_returns_the_pydantic_model(client: openai.OpenAI, seed: int) -> None:
    response = client.responses.parse(model=MODEL, input="The forecast, please", text_format=Forecast,
                                      temperature=1.0, max_output_tokens=BUDGET, extra_body={"seed": seed})
    assert response.status == "completed" and isinstance(response.output_parsed, Forecast)
    assert Forecast.model_validate_json(response.output_text) == response.output_parsed


def test_json_object_format_is_chats_json_object(client: openai.OpenAI) -> None:
    """An object of any size: the random model may not close it within the budget, but it is chat's answer."""
    response = client.responses.create(model=MODEL, input="Some JSON", text={"format": {"type": "json_object"}},
                                       temperature=1.0, max_output_tokens=48, extra_body={"seed": 4})
    reference = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Some JSON"}],
                                               response_format={"type": "json_object"}, temperature=1.0,
                                               max_tokens=48, seed=4)
    assert response.output_text == reference.choices[0].message.content and response.output_text.startswith("{")
    if response.status == "completed":
        assert isinstance(json.loads(response.output_text), dict)
    assert response.text.format.type == "json_object"


def test_stream_helper_parses_the_streamed_schema(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Stream a forecast", text_format=Forecast, temperature=1.0,
                                 max_output_tokens=BUDGET, extra_body={"seed": 5}) as stream:
        deltas = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, Forecast) and Forecast.model_validate_json(deltas) == final.output_parsed


def test_an_invalid_schema_names_text_format(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="x", text={"format": {"type": "json_schema", "name": "bad",
                                                                         "schema": {"type": "frobnicate"}}})
    assert str(caught.value.param).startswith("text.format")


def calls(response: Any) -> list[Any]:
    return [item for item in response.output if item.type == "function_call"]


@pytest.mark.parametrize("seed", SEEDS)
def test_required_tool_choice_calls_a_tool_with_valid_arguments(tools_client: openai.OpenAI, seed: int) -> None:
    response = tools_client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER, TIME],
                                             tool_choice="required", temperature=1.0, max_output_tokens=BUDGET,
                                             extra_body={"seed": seed})
    assert response.status == "completed" and calls(response)
    for call in calls(response):
        arguments = json.loads(call.arguments)
        assert call.call_id and call.id.startswith("fc_") and call.name in ("get_weather", "get_time")
        if call.name == "get_weather":
            assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("c", "f")
        else:
            assert arguments == {"zone": arguments["zone"]} and arguments["zone"] in ("utc", "cet")


def test_named_tool_choice_calls_that_tool(tools_client: openai.OpenAI) -> None:
    response = tools_client.responses.create(model=MODEL, input="What time is it?", tools=[WEATHER, TIME],
                                             tool_choice={"type": "function", "name": "get_time"},
                                             parallel_tool_calls=False, temperature=1.0, max_output_tokens=BUDGET,
                                             extra_body={"seed": 2})
    assert [call.name for call in calls(response)] == ["get_time"]
    assert json.loads(calls(response)[0].arguments)["zone"] in ("utc", "cet")


def test_streamed_tool_call_events(tools_client: openai.OpenAI) -> None:
    events = list(tools_client.responses.create(model=MODEL, input="Weather?", tools=[WEATHER],
                                                tool_choice="required", temperature=1.0, max_output_tokens=BUDGET,
                                                stream=True, extra_body={"seed": 3}))
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert added and len(added) == len(done) and added[0].item.name == "get_weather"
    for start, end in zip(added, done, strict=True):
        fragments = [e.delta for e in events
                     if e.type == "response.function_call_arguments.delta" and e.item_id == start.item.id]
        assert "".join(fragments) == end.arguments and set(json.loads(end.arguments)) == {"city", "unit"}
    final = events[-1].response
    assert events[-1].type == "response.completed"
    assert [c.arguments for c in calls(final)] == [e.arguments for e in done]


def test_openai_agents_sdk_calls_a_function_tool(tools_worker: RunningWorker) -> None:
    """The Agents SDK reads the function_call item, runs the tool with its parsed arguments and stops there."""
    seen: list[tuple[str, str]] = []

    @function_tool
    def get_weather(city: Literal["paris", "rome"], unit: Literal["c", "f"]) -> str:
        """The weather in a city."""
        seen.append((city, unit))
        return f"18 {unit} in {city}"

    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=tools_worker.base_url + "/v1", api_key="unused",
                                      max_retries=0) as client:
            agent = Agent(name="weather", tools=[get_weather], tool_use_behavior="stop_on_first_tool",
                          model=OpenAIResponsesModel(model=MODEL, openai_client=client),
                          model_settings=ModelSettings(tool_choice="required", temperature=1.0,
                                                       max_tokens=BUDGET, extra_body={"seed": 7}))
            return await Runner.run(agent, "Weather?", run_config=RunConfig(tracing_disabled=True))

    result = asyncio.run(run())
    assert len(seen) >= 1 and result.final_output == f"18 {seen[0][1]} in {seen[0][0]}"


def test_a_round_trip_with_tool_results_renders_like_chat(tools_client: openai.OpenAI) -> None:
    arguments = '{"city": "Paris", "unit": "c"}'
    response = tools_client.responses.create(
        model=MODEL, tools=[WEATHER], max_output_tokens=4, temperature=0,
        input=[{"role": "user", "content": "Weather in Paris?"},
               {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": arguments},
               {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees"}])
    reference = tools_client.chat.completions.create(
        model=MODEL, max_tokens=4, temperature=0,
        tools=[{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}],
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                        "arguments": arguments}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"}])
    assert response.usage.input_tokens == reference.usage.prompt_tokens
    assert response.output_text == (reference.choices[0].message.content or "")


def test_reasoning_is_a_reasoning_item(r1_client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": MODEL, "temperature": 0, "extra_body": {"ignore_eos": True}}
    response = r1_client.responses.create(input="Think first", max_output_tokens=24, **args)
    reference = r1_client.chat.completions.create(messages=[{"role": "user", "content": "Think first"}],
                                                  max_tokens=24, **args)
    thinking = reference.choices[0].message.model_extra["reasoning_content"]
    reasoning = [item for item in response.output if item.type == "reasoning"]
    assert thinking and len(reasoning) == 1 and reasoning[0].content[0].text == thinking
    assert response.output_text == (reference.choices[0].message.content or "")
    details = reference.usage.completion_tokens_details
    assert response.usage.output_tokens_details.reasoning_tokens == details.reasoning_tokens > 0
    events = list(r1_client.responses.create(input="Think first", max_output_tokens=24, stream=True, **args))
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == thinking and events[-1].response.output[0].type == "reasoning"
