"""POST /v1/responses through the openai SDK over real HTTP: text and messages input, instructions, the
incomplete status, the typed stream, usage equal to the chat endpoint's for the same tokens, refusals by name.
Random weights: the checks compare mechanics and the chat endpoint's answer, never the text itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, RunConfig, Runner
from polling import wait_for

from moecloud.serving.worker import RunningWorker

MODEL = "tiny"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta"]
CLOSING_EVENTS = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def chat(client: openai.OpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=messages, **kwargs)


def assert_usage_matches_chat(usage: Any, chat_usage: Any) -> None:
    assert usage.input_tokens == chat_usage.prompt_tokens and usage.output_tokens == chat_usage.completion_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert isinstance(usage.input_tokens_details.cached_tokens, int)
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_text_input_is_the_chat_answer_to_one_user_message(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Hello there", max_output_tokens=6, **GREEDY)
    reference = chat(client, [{"role": "user", "content": "Hello there"}], max_tokens=6, **GREEDY)
    assert response.object == "response" and response.id.startswith("resp_") and response.model == MODEL
    assert [item.type for item in response.output] == ["message"]
    message = response.output[0]
    assert message.role == "assistant" and message.id.startswith("msg_") and message.content[0].type == "output_text"
    assert response.output_text == reference.choices[0].message.content
    assert_usage_matches_chat(response.usage, reference.usage)


def test_messages_and_instructions_render_like_chat_messages(client: openai.OpenAI) -> None:
    conversation = [{"role": "developer", "content": "Answer in one word."},
                    {"role": "user", "content": [{"type": "input_text", "text": "Hi "},
                                                 {"type": "input_text", "text": "you"}]},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
                    {"role": "user", "content": "Again"}]
    response = client.responses.create(model=MODEL, instructions="Be brief.", input=conversation, temperature=1.0,
                                       top_p=0.9, max_output_tokens=8, extra_body={"seed": 11})
    reference = chat(client, [{"role": "system", "content": "Be brief."},
                              {"role": "system", "content": "Answer in one word."},
                              {"role": "user", "content": "Hi you"}, {"role": "assistant", "content": "Hello."},
                              {"role": "user", "content": "Again"}],
                     seed=11, temperature=1.0, top_p=0.9, max_tokens=8)
    assert response.output_text == reference.choices[0].message.content
    assert_usage_matches_chat(response.usage, reference.usage)
    assert reference.usage.prompt_tokens_details.cached_tokens > 0  # the very prompt the response left cached
    assert response.instructions == "Be brief." and response.temperature == 1.0 and response.top_p == 0.9


def test_max_output_tokens_makes_the_response_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Count", max_output_tokens=5, **GREEDY)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5 and response.output[0].status == "incomplete"


def stop_inside(client: openai.OpenAI, prompt: str, **kwargs: Any) -> tuple[str, str]:
    """(the greedy text of `prompt` up to a stop string, that stop string) from the greedy free run."""
    free = client.responses.create(model=MODEL, input=prompt, max_output_tokens=30, **GREEDY, **kwargs).output_text
    stop = free[4:7]
    return free[:free.index(stop)], stop


def test_a_stop_completes_the_response(client: openai.OpenAI) -> None:
    text, stop = stop_inside(client, "Say something")
    response = client.responses.create(model=MODEL, input="Say something", max_output_tokens=30, temperature=0,
                                       extra_body={"ignore_eos": True, "stop": [stop]},
                                       metadata={"run": "test"}, user="alice", store=False)
    assert response.status == "completed" and response.incomplete_details is None
    assert response.output_text == text and response.output[0].status == "completed"
    assert response.metadata == {"run": "test"} and response.user == "alice"


def event_types(events: list[Any]) -> list[str]:
    """The event types with runs of deltas collapsed to one."""
    types: list[str] = []
    for event in events:
        if not (types and event.type == types[-1] and event.type.endswith(".delta")):
            types.append(event.type)
    return types


def test_stream_sends_typed_events_in_openai_order(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=MODEL, input="Stream me", max_output_tokens=7, **GREEDY)
    events = list(client.responses.create(model=MODEL, input="Stream me", max_output_tokens=7, stream=True,
                                          **GREEDY))
    assert event_types(events) == [*TEXT_EVENTS, *CLOSING_EVENTS, "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert deltas == whole.output_text and item_ids == {events[-2].item.id}
    assert events[-2].item.content[0].text == deltas and events[-2].item.status == "incomplete"
    final = events[-1].response
    assert final.id == events[0].response.id and final.status == "incomplete"
    assert final.output_text == deltas and final.usage.output_tokens == whole.usage.output_tokens == 7
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_sdk_stream_helper_returns_the_final_response(client: openai.OpenAI) -> None:
    text, stop = stop_inside(client, "Stream helper")
    with client.responses.stream(model=MODEL, input="Stream helper", max_output_tokens=30, temperature=0,
                                 extra_body={"ignore_eos": True, "stop": [stop]}) as stream:
        deltas = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == text and final.output_text == text and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens >= 1


def test_openai_agents_sdk_runs_an_agent_plain_and_streamed(worker: RunningWorker, client: openai.OpenAI) -> None:
    """The Agents SDK's default model path (OpenAIResponsesModel) sends what it always sends (`include: []`, the
    instructions, the input as message items) and needs a completed response."""
    text, stop = stop_inside(client, "Hello", instructions="Be brief.")
    settings = ModelSettings(max_tokens=30, temperature=0, extra_body={"ignore_eos": True, "stop": [stop]})
    run_config = RunConfig(tracing_disabled=True)

    async def run() -> tuple[Any, Any]:
        async with openai.AsyncOpenAI(base_url=worker.base_url + "/v1", api_key="unused", max_retries=0) as sdk:
            agent = Agent(name="brief", instructions="Be brief.", model_settings=settings,
                          model=OpenAIResponsesModel(model=MODEL, openai_client=sdk))
            plain = await Runner.run(agent, "Hello", run_config=run_config)
            streamed = Runner.run_streamed(agent, "Hello", run_config=run_config)
            async for _ in streamed.stream_events():
                pass
            return plain, streamed

    plain, streamed = asyncio.run(run())
    assert plain.final_output == streamed.final_output == text
    assert plain.raw_responses[0].usage.output_tokens == streamed.raw_responses[0].usage.output_tokens > 0


def test_stream_frames_events_as_openai_does(worker: RunningWorker) -> None:
    body = {"model": MODEL, "input": "frames", "max_output_tokens": 2, "stream": True}
    with httpx.stream("POST", worker.base_url + "/v1/responses", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines[0::2]]
    assert all(line.startswith("event: ") for line in lines[0::2]) and names[0] == "response.created"
    assert all(f'"type":"{name}"' in data for name, data in zip(names, lines[1::2], strict=True))
    assert "data: [DONE]" not in lines


def test_a_stream_left_early_is_aborted_and_reported(worker: RunningWorker, metric) -> None:  # type: ignore[no-untyped-def]
    aborted = metric(worker, "moecloud_requests_aborted_total")
    body = {"model": MODEL, "input": "never read to the end", "max_output_tokens": 400, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", worker.base_url + "/v1/responses", json=body, headers={"x-request-id": "r-left"},
                      timeout=30) as response:
        next(response.iter_lines())
    wait_for(lambda: metric(worker, "moecloud_requests_aborted_total") == aborted + 1)
    report = httpx.post(worker.base_url + "/v1/requests/r-left/abort", timeout=30).json()
    assert report["usage"]["completion_tokens"] < 400  # the gateway bills what the engine produced


@pytest.fixture(scope="module")
def faulty(start_worker) -> Iterator[RunningWorker]:  # type: ignore[no-untyped-def]
    with start_worker(serving={"fault_injection": True}) as running:
        yield running


def test_a_failure_mid_stream_is_an_error_event_then_response_failed(faulty: RunningWorker) -> None:
    client = openai.OpenAI(base_url=faulty.base_url + "/v1", api_key="unused", max_retries=0, timeout=30)
    stream = client.responses.create(model=MODEL, input="fail me", max_output_tokens=4, stream=True,
                                     extra_headers={"x-moecloud-fault": "sample"})
    events = list(stream)
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-2].code == "request_failed" and events[-1].response.status == "failed"
    assert events[-1].response.error.code == "request_failed"
    plain = httpx.post(faulty.base_url + "/v1/responses", json={"model": MODEL, "input": "fail me"},
                       headers={"x-moecloud-fault": "forward"}, timeout=30)
    assert plain.status_code == 500 and plain.json()["error"]["code"] == "request_failed"


@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
    ({"truncation": "auto"}, "truncation"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"max_tool_calls": 2}, "max_tool_calls"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
     "input[0].content[0].type"),
])
def test_stateful_and_hosted_features_are_refused_by_name(client: openai.OpenAI, extra: dict[str, Any],
                                                          param: str) -> None:
    body = {"input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input=body.pop("input"), extra_body=body)
    assert caught.value.param == param and caught.value.code == "unsupported_parameter"


def test_accepted_defaults_the_frameworks_send(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi", max_output_tokens=2, store=False, include=[],
                                       truncation="disabled", tool_choice="auto", parallel_tool_calls=True,
                                       reasoning={}, text={"format": {"type": "text"}, "verbosity": "medium"},
                                       stream_options=None, prompt_cache_key="k", safety_identifier="u")
    assert response.usage.output_tokens == 2 and response.tool_choice == "auto" and response.tools == []


@pytest.mark.parametrize("call", ["retrieve", "delete", "cancel"])
def test_responses_are_not_stored(client: openai.OpenAI, call: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        getattr(client.responses, call)("resp_123")
    assert caught.value.code == "not_found" and "not store" in caught.value.message


def bad(worker: RunningWorker, **fields: Any) -> dict[str, Any]:
    response = httpx.post(worker.base_url + "/v1/responses", json={"model": MODEL, "input": "x", **fields},
                          timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(("fields", "param"), [
    ({"model": 5}, "model"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"role": "user"}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
    ({"instructions": 5}, "instructions"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": "many"}, "max_output_tokens"),
    ({"max_output_tokens": 1.5}, "max_output_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"text": "json"}, "text"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"tools": "f"}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"metadata": {"k": 5}}, "metadata.k"),
    ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"user": 5}, "user"),
    ({"stream": "yes"}, "stream"),
    ({"store": "no"}, "store"),
    ({"seed": "x"}, "seed"),
    ({"stop": [""]}, "stop[0]"),
])
def test_wrong_types_are_400_naming_the_field(worker: RunningWorker, fields: dict[str, Any], param: str) -> None:
    assert bad(worker, **fields)["param"] == param


def test_a_lone_surrogate_is_400(worker: RunningWorker) -> None:
    response = httpx.post(worker.base_url + "/v1/responses", content=b'{"model": "tiny", "input": "a\\ud800b"}',
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"


def test_context_overflow_names_the_responses_fields(worker: RunningWorker) -> None:
    too_long = bad(worker, max_output_tokens=10**6)
    assert too_long["code"] == "context_length_exceeded" and too_long["param"] == "max_output_tokens"
    assert "max_output_tokens" in too_long["message"]
    prompt = bad(worker, input="word " * worker.client.max_model_len)
    assert prompt["code"] == "context_length_exceeded" and prompt["param"] == "input"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="nope", input="x")
    assert caught.value.code == "model_not_found"
