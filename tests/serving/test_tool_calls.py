"""Tools and reasoning through a real worker and the openai SDK. Random weights: a call only forms when decoding is
really constrained, so `required` and named choices are checked against their schemas at temperature 1."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from workers import worker_on

from moecloud.engine.chat_prompt import ChatFormat
from moecloud.engine.tokenizer import Tokenizer
from moecloud.serving.tool_use import AssistantOutput, ToolPlan
from moecloud.serving.worker import RunningWorker

MODEL = "tiny"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 6}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def worker_for(checkpoint: Path) -> Any:
    return worker_on(checkpoint, MODEL, engine={"max_model_len": 2048})


def sdk(worker: RunningWorker) -> openai.OpenAI:
    return openai.OpenAI(base_url=worker.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def fallback_client(tiny_checkpoint: Path) -> Iterator[openai.OpenAI]:
    """The default template knows no tools: the fallback renders them (its prompts outgrow the shared worker's)."""
    with worker_for(tiny_checkpoint) as worker:
        yield sdk(worker)


@pytest.fixture(scope="module")
def deepseek_client(make_checkpoint: Callable[..., Path]) -> Iterator[openai.OpenAI]:
    with worker_for(make_checkpoint("v2-lite", chat_template="deepseek-tools")) as worker:
        yield sdk(worker)


@pytest.fixture(scope="module")
def r1_client(make_checkpoint: Callable[..., Path]) -> Iterator[openai.OpenAI]:
    with worker_for(make_checkpoint("v2-lite", chat_template="r1")) as worker:
        yield sdk(worker)


def reassemble(chunks: Any) -> dict[int, dict[str, Any]]:
    """Join a stream's deltas per choice as the openai docs do, checking each tool-call delta's shape."""
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            out = choices.setdefault(choice.index, {"content": "", "reasoning": "", "calls": {}, "finish": None})
            delta = choice.delta
            out["content"] += delta.content or ""
            out["reasoning"] += (delta.model_extra or {}).get("reasoning_content") or ""
            for call in delta.tool_calls or []:
                if call.index not in out["calls"]:  # the first delta: index, id, type, name, empty arguments
                    assert call.id.startswith("call_") and call.type == "function"
                    assert call.function.name and call.function.arguments == ""
                    out["calls"][call.index] = {"id": call.id, "name": call.function.name, "arguments": ""}
                else:  # then only index and argument fragments
                    assert call.id is None and call.type is None and call.function.name is None
                    out["calls"][call.index]["arguments"] += call.function.arguments
            out["finish"] = choice.finish_reason or out["finish"]
    return choices


def calls_of(message: Any) -> list[dict[str, Any]]:
    return [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]


def without_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in call.items() if k != "id"} for call in calls]


def test_auto_without_tools_is_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tool_choice="auto", max_tokens=4)
    assert reply.choices[0].message.tool_calls is None and isinstance(reply.choices[0].message.content, str)


def test_auto_answer_after_thinking_becomes_calls_as_openai_streams_them() -> None:
    """What the model writes freely (`auto`) on a reasoning model: no random model writes this, so it is fed here."""
    text = ('plan it</think>\nOK <tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}'
            '</tool_call> <tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>')
    fmt = ChatFormat("json", renders_tools=False, thinking=True)
    for parallel in (True, False):
        whole = AssistantOutput(ToolPlan("auto", TOOLS, parallel=parallel), fmt, separate_reasoning=True)
        whole.feed(text, final=True)
        message = whole.message()
        assert message["reasoning_content"] == "plan it" and message["content"] == "OK "
        names = [call["function"]["name"] for call in message["tool_calls"]]
        assert names == (["get_weather", "get_time"] if parallel else ["get_weather"])
        assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Rome", "days": 2}
        assert whole.finish_reason("stop") == "tool_calls" and whole.finish_reason("length") == "length"
        streamed = AssistantOutput(ToolPlan("auto", TOOLS, parallel=parallel), fmt, separate_reasoning=True)
        deltas = [d for i, char in enumerate(text) for d in streamed.feed(char, final=i == len(text) - 1)]
        assert all(len(d) == 1 for d in deltas)  # one field per chunk
        assert "".join(d.get("reasoning_content", "") for d in deltas) == "plan it"
        assert "".join(d.get("content", "") for d in deltas) == "OK "
        calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
        starts = [c for c in calls if "id" in c]
        assert [c["function"]["name"] for c in starts] == names
        assert all(c["function"]["arguments"] == "" for c in starts)
        for index, call in enumerate(message["tool_calls"]):
            fragments = [c["function"]["arguments"] for c in calls if c["index"] == index and "id" not in c]
            assert set(next(c for c in calls if c["index"] == index and "id" not in c)) == {"index", "function"}
            assert "".join(fragments) == call["function"]["arguments"]


@pytest.mark.parametrize("which", ["fallback", "deepseek"])
def test_auto_parses_the_calls_a_model_writes(which: str, fallback_client: openai.OpenAI,
                                              deepseek_client: openai.OpenAI) -> None:
    """A regex constraint makes the random model write calls in the template's format, as a trained one would."""
    arguments = r'\{"city": "(Paris|Rome)", "days": [1-7]\}'
    if which == "fallback":
        sdk_client, one = fallback_client, re.escape('<tool_call>{"name": "get_weather", "arguments": ') + arguments + (
            re.escape("}</tool_call>"))
        pattern = f"Sure\\. ({one}){{2}}"
    else:
        sdk_client = deepseek_client
        one = re.escape("<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n") + arguments + re.escape(
            "\n```<｜tool▁call▁end｜>")
        pattern = f"Sure\\. {re.escape('<｜tool▁calls▁begin｜>')}{one}\\n{one}{re.escape('<｜tool▁calls▁end｜>')}"
    args: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": TOOLS, "seed": 4, "temperature": 1.0,
                            "max_tokens": 256, "extra_body": {"structured_outputs": {"regex": pattern}}}
    reply = sdk_client.chat.completions.create(**args)
    stream = reassemble(sdk_client.chat.completions.create(**args, stream=True))
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Sure. "
        assert [c.function.name for c in choice.message.tool_calls] == ["get_weather", "get_weather"]
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        assert stream[choice.index]["content"] == "Sure. " and stream[choice.index]["finish"] == "tool_calls"
        assert without_ids(list(stream[choice.index]["calls"].values())) == without_ids(calls_of(choice.message))
    if which == "deepseek":  # the same parse; only the first call is kept
        single = sdk_client.chat.completions.create(**args, parallel_tool_calls=False)
        assert without_ids(calls_of(single.choices[0].message)) == without_ids(calls_of(reply.choices[0].message))[:1]


def test_auto_offers_the_tools_in_the_prompt(fallback_client: openai.OpenAI, deepseek_client: openai.OpenAI) -> None:
    for sdk_client in (fallback_client, deepseek_client):
        bare = sdk_client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
        offered = sdk_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=8,
                                                     temperature=0)
        assert offered.usage.prompt_tokens > bare.usage.prompt_tokens + 20
        none = sdk_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none",
                                                  max_tokens=1)
        assert none.usage.prompt_tokens == bare.usage.prompt_tokens
        assert offered.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("which", ["fallback", "deepseek"])
def test_named_choice_arguments_match_the_schema(which: str, fallback_client: openai.OpenAI,
                                                 deepseek_client: openai.OpenAI) -> None:
    sdk_client = fallback_client if which == "fallback" else deepseek_client
    reply = sdk_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED, n=6,
                                               seed=11, temperature=1.0, max_tokens=64)
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    assert len({c.message.tool_calls[0].id for c in reply.choices}) == 6
    stream = reassemble(sdk_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=NAMED,
                                                           n=6, seed=11, temperature=1.0, max_tokens=64, stream=True))
    for choice in reply.choices:
        streamed = stream[choice.index]
        assert streamed["finish"] == "tool_calls" and streamed["content"] == ""
        assert without_ids(list(streamed["calls"].values())) == without_ids(calls_of(choice.message))


@pytest.mark.parametrize("parallel", [True, False])
def test_required_calls_match_their_tools(parallel: bool, fallback_client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "n": 6,
                            "seed": 3, "temperature": 1.0, "max_tokens": 96, "parallel_tool_calls": parallel}
    reply = fallback_client.chat.completions.create(**args)
    for choice in reply.choices:
        calls = choice.message.tool_calls
        assert calls and choice.message.content is None
        assert parallel or (len(calls) == 1 and choice.finish_reason == "tool_calls")
        whole = calls if choice.finish_reason == "tool_calls" else calls[:-1]  # max_tokens may cut the last one
        assert choice.finish_reason == "tool_calls" or (parallel and choice.finish_reason == "length")
        for call in whole:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    stream = reassemble(fallback_client.chat.completions.create(**args, stream=True))
    for choice in reply.choices:
        assert without_ids(list(stream[choice.index]["calls"].values())) == without_ids(calls_of(choice.message))
        assert stream[choice.index]["finish"] == choice.finish_reason


def test_required_keeps_each_tools_definitions_apart(fallback_client: openai.OpenAI) -> None:
    place = {"type": "object", "$defs": {"city": {"type": "string", "enum": ["Oslo", "Lima"]}},
             "properties": {"at": {"$ref": "#/$defs/city"}}, "required": ["at"], "additionalProperties": False}
    other = {"type": "object", "$defs": {"city": {"type": "integer", "minimum": 5, "maximum": 9}},
             "properties": {"code": {"$ref": "#/$defs/city"}}, "required": ["code"], "additionalProperties": False}
    schemas = {"go": place, "dial": other}
    tools = [{"type": "function", "function": {"name": n, "parameters": p}} for n, p in schemas.items()]
    reply = fallback_client.chat.completions.create(model=MODEL, messages=ASK, tools=tools, tool_choice="required",
                                                    n=6, seed=2, temperature=1.0, max_tokens=48,
                                                    parallel_tool_calls=False)
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


@pytest.mark.parametrize("which", ["fallback", "deepseek"])
def test_round_trip_with_tool_results(which: str, fallback_client: openai.OpenAI,
                                      deepseek_client: openai.OpenAI) -> None:
    sdk_client = fallback_client if which == "fallback" else deepseek_client
    first = sdk_client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                               seed=1, max_tokens=160, parallel_tool_calls=False)
    message = first.choices[0].message
    [call] = message.tool_calls
    history = [*ASK, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny and 21 degrees"}]
    second = sdk_client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=4)
    shorter = sdk_client.chat.completions.create(model=MODEL, messages=[*history[:2], {**history[2], "content": "x"}],
                                                 tools=TOOLS, max_tokens=4)
    assert second.usage.prompt_tokens > shorter.usage.prompt_tokens > first.usage.prompt_tokens
    assert second.choices[0].finish_reason in ("stop", "length")


def test_deepseek_template_renders_calls_and_results_with_its_tokens(make_checkpoint: Callable[..., Path]) -> None:
    tokenizer = Tokenizer(make_checkpoint("v2-lite", chat_template="deepseek-tools"))
    chat_format = ChatFormat.probe(tokenizer)
    assert (chat_format.dialect, chat_format.renders_tools, chat_format.thinking) == ("deepseek", True, False)
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": args}}
             for i, args in enumerate(['{"city": "Paris"}', '{"city": "Rome"}'])]
    text = chat_format.render(tokenizer, [*ASK, {"role": "assistant", "content": None, "tool_calls": calls},
                                          {"role": "tool", "tool_call_id": "call_0", "content": "sun"},
                                          {"role": "tool", "tool_call_id": "call_1", "content": "rain"}], TOOLS)
    assert ("<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
            '{"city": "Paris"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>') in text
    assert text.endswith("<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sun<｜tool▁output▁end｜>\n"
                         "<｜tool▁output▁begin｜>rain<｜tool▁output▁end｜><｜tool▁outputs▁end｜>")
    assert '"get_time"' in text  # the template lists the tools itself


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [TOOLS[0], {"type": "function", "function": {"parameters": TIME}}]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 200}
                                         for i in range(400)}}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": [[[[[[[[[[[[[[[[
        [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [TOOLS[1], {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tools[1].function.parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS * 65}, "tools"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"type": "function", "function": {
        "name": "f", "arguments": "{}"}}]}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_hostile_tools_are_400s_naming_the_field(worker: RunningWorker, body: dict[str, Any], param: str) -> None:
    reply = httpx.post(worker.base_url + "/v1/chat/completions", timeout=30,
                       json={"model": MODEL, "messages": ASK, "max_tokens": 2, **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param and reply.json()["error"]["type"] == "invalid_request_error"


def sample_until(client: openai.OpenAI, wanted: Callable[[Any], bool], attempts: int = 4, **args: Any
                 ) -> tuple[Any, list[Any]]:
    """A reply to `args` with some choices that are `wanted`, and those choices. Random weights close a thinking
    block now and then: each attempt samples other seeds."""
    for attempt in range(attempts):
        reply = client.chat.completions.create(**args, seed=1000 * attempt)
        chosen = [c for c in reply.choices if wanted(c)]
        if chosen:
            return reply, chosen
    raise AssertionError(f"no wanted choice in {attempts} attempts")


def test_reasoning_is_split_from_the_answer(r1_client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": MODEL, "messages": ASK, "n": 24, "temperature": 1.0, "max_tokens": 32,
                            "logprobs": True}
    for attempt in range(4):  # random weights close the block now and then: each attempt samples other seeds
        seed = {"seed": 1000 * attempt}
        raw = r1_client.chat.completions.create(**args, **seed,
                                                extra_body={"ignore_eos": True, "separate_reasoning": False})
        if any("</think>" in c.message.content for c in raw.choices):
            break
    split = r1_client.chat.completions.create(**args, **seed, extra_body={"ignore_eos": True})
    stream = reassemble(r1_client.chat.completions.create(**args, **seed, stream=True,
                                                          extra_body={"ignore_eos": True}))
    closed, expected_reasoning_tokens = 0, 0
    for plain, choice in zip(raw.choices, split.choices, strict=True):
        text, message = plain.message.content, choice.message
        assert (plain.message.model_extra or {}).get("reasoning_content") is None
        tokens = [t.token for t in choice.logprobs.content]
        if "</think>" in text:
            closed += 1
            thought, answer = text.split("</think>", 1)
            assert (message.model_extra["reasoning_content"], message.content) == (thought, answer.lstrip())
            expected_reasoning_tokens += tokens.index("</think>") + 1
        else:
            assert (message.model_extra["reasoning_content"], message.content) == (text, "")
            expected_reasoning_tokens += len(tokens)
        streamed = stream[choice.index]
        assert (streamed["reasoning"], streamed["content"]) == (message.model_extra["reasoning_content"],
                                                                message.content)
    assert closed >= 1  # both sides of the split are checked
    details = split.usage.completion_tokens_details
    assert details.reasoning_tokens == expected_reasoning_tokens < split.usage.completion_tokens
    assert raw.usage.completion_tokens_details.reasoning_tokens == expected_reasoning_tokens


def test_a_reasoning_model_thinks_freely_then_calls_within_the_schema(r1_client: openai.OpenAI) -> None:
    reply, called = sample_until(r1_client, lambda c: c.finish_reason == "tool_calls", model=MODEL, messages=ASK,
                                 tools=TOOLS, tool_choice=NAMED, n=24, temperature=1.0, max_tokens=48,
                                 extra_body={"separate_reasoning": False})  # calls are parsed from the answer anyway
    for choice in called:
        assert choice.message.content is None
        assert choice.message.model_extra["reasoning_content"] and "</think>" not in choice.message.model_extra[
            "reasoning_content"]
        jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), WEATHER)
    for choice in reply.choices:
        if choice not in called:  # max_tokens ran out while thinking (no call) or inside the arguments
            assert choice.finish_reason == "length"
