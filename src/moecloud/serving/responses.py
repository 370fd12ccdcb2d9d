"""POST /v1/responses: a Responses request -> the chat pipeline (`ChatRun`) -> a `response` object, or its stream
of typed events (`response.created` ... `response.completed`) as OpenAI sends them.

There is one generation path: the chat run's message (or its chunks) is rewritten as output items, the same
`OutputBuilder` for both, so a streamed response ends with exactly the object a plain one returns.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from moecloud.serving.chat import ChatRun
from moecloud.serving.generation import Generation
from moecloud.serving.responses_protocol import ResponsesRequest
from moecloud.serving.sse import sse
from moecloud.serving.state import ServingState
from moecloud.web.errors import APIError, ResourceNotFound

Event = dict[str, Any]


class ResponseNotStored(ResourceNotFound):
    def __init__(self, response_id: str) -> None:
        super().__init__(f"Response with id '{response_id}' not found: this server does not store responses "
                         "(every response is as if created with store: false).", param="response_id")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class OutputBuilder:
    """Chat deltas (reasoning, text, tool-call fragments) -> Responses output items, and the typed events that
    build them. Items open as their first delta arrives and close when another kind starts or at the end."""

    def __init__(self) -> None:
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, int] = {}  # "reasoning", "message" or "call:<chat index>" -> output index

    def event(self, type_: str, **fields: Any) -> Event:
        event = {"type": type_, "sequence_number": self.sequence, **copy.deepcopy(fields)}
        self.sequence += 1
        return event

    def reasoning(self, text: str) -> list[Event]:
        return self._text("reasoning", text)

    def text(self, text: str) -> list[Event]:
        return self._text("message", text)

    def _text(self, kind: str, text: str) -> list[Event]:
        events = [] if kind in self._open else self._start_text(kind)
        index = self._open[kind]
        part = self.output[index]["content"][0]
        part["text"] += text
        delta = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        logprobs = {"logprobs": []} if kind == "message" else {}
        return [*events, self.event(delta, item_id=self.output[index]["id"], output_index=index, content_index=0,
                                    delta=text, **logprobs)]

    def _start_text(self, kind: str) -> list[Event]:
        events = self.close("completed")
        if kind == "message":
            item = {"id": _new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {"id": _new_id("rs"), "type": "reasoning", "status": "in_progress", "summary": [], "content": []}
            part = {"type": "reasoning_text", "text": ""}
        index = self._add(kind, item)
        events += [self.event("response.output_item.added", output_index=index, item=item),
                   self.event("response.content_part.added", item_id=item["id"], output_index=index,
                              content_index=0, part=part)]
        item["content"].append(part)
        return events

    def tool_call(self, delta: dict[str, Any]) -> list[Event]:
        """One chat tool-call delta: the first of a call has its id and name, later ones argument fragments."""
        key = f"call:{delta.get('index', 0)}"
        function = delta.get("function") or {}
        events = []
        if key not in self._open:
            events = self.close("completed", keep_calls=True)
            item = {"id": _new_id("fc"), "type": "function_call", "status": "in_progress",
                    "call_id": delta.get("id") or _new_id("call"), "name": function.get("name") or "",
                    "arguments": ""}
            events.append(self.event("response.output_item.added", output_index=self._add(key, item), item=item))
        index = self._open[key]
        fragment = function.get("arguments") or ""
        if fragment:
            self.output[index]["arguments"] += fragment
            events.append(self.event("response.function_call_arguments.delta", item_id=self.output[index]["id"],
                                     output_index=index, delta=fragment))
        return events

    def _add(self, key: str, item: dict[str, Any]) -> int:
        self.output.append(item)
        self._open[key] = len(self.output) - 1
        return self._open[key]

    def close(self, status: str, keep_calls: bool = False) -> list[Event]:
        """Close the open items (all, or all but the tool calls) with the given item status."""
        events = []
        for key, index in sorted(self._open.items(), key=lambda entry: entry[1]):
            if keep_calls and key.startswith("call:"):
                continue
            item = self.output[index]
            item["status"] = status
            if item["type"] == "function_call":
                events.append(self.event("response.function_call_arguments.done", item_id=item["id"],
                                         output_index=index, arguments=item["arguments"]))
            else:
                part = item["content"][0]
                done = "response.output_text.done" if item["type"] == "message" else "response.reasoning_text.done"
                logprobs = {"logprobs": []} if item["type"] == "message" else {}
                events += [self.event(done, item_id=item["id"], output_index=index, content_index=0,
                                      text=part["text"], **logprobs),
                           self.event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=part)]
            events.append(self.event("response.output_item.done", output_index=index, item=item))
            del self._open[key]
        return events

    def finish(self, status: str) -> list[Event]:
        """Close everything; a response with no output at all still has its (empty) message."""
        events = self._start_text("message") if not self.output else []
        return events + self.close(status)

    def message(self, message: dict[str, Any]) -> None:
        """A whole chat message, as if it had been streamed."""
        if message.get("reasoning_content"):
            self.reasoning(message["reasoning_content"])
        if message.get("content"):
            self.text(message["content"])
        for index, call in enumerate(message.get("tool_calls") or []):
            self.tool_call({"index": index, **call})

    def delta(self, delta: dict[str, Any]) -> list[Event]:
        events = []
        if delta.get("reasoning_content"):
            events += self.reasoning(delta["reasoning_content"])
        if delta.get("content"):
            events += self.text(delta["content"])
        for call in delta.get("tool_calls") or []:
            events += self.tool_call(call)
        return events


def _usage(chat_usage: dict[str, Any]) -> dict[str, Any]:
    details = chat_usage.get("completion_tokens_details") or {}
    return {"input_tokens": chat_usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": chat_usage["prompt_tokens_details"]["cached_tokens"]},
            "output_tokens": chat_usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": details.get("reasoning_tokens", 0)},
            "total_tokens": chat_usage["total_tokens"]}


def _status(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """(response status, incomplete_details) for the chat choice's finish_reason."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason in ("stop", "tool_calls"):
        return "completed", None
    return "incomplete", {"reason": None}  # aborted: the server shut down before the end


class ResponsesRun:
    """One /v1/responses request, answered by the chat run it translates into."""

    def __init__(self, state: ServingState, body: ResponsesRequest) -> None:
        self.state = state
        self.body = body
        chat_body, self.chat_names = body.to_chat()
        self.chat = ChatRun(state, chat_body)
        self.generation: Generation = self.chat.generation
        self.id = _new_id("resp")
        self.created_at = int(time.time())

    async def start(self) -> None:
        try:
            await self.chat.start()
        except APIError as exc:
            raise self.chat_names.renamed(exc) from None

    def _response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                  incomplete: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.body
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None, "background": False,
            "error": error, "incomplete_details": incomplete, "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens, "max_tool_calls": None, "model": body.model,
            "output": output, "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": 1.0 if body.temperature is None else body.temperature, "text": body.echoed_text(),
            "tool_choice": body.echoed_tool_choice(), "tools": body.echoed_tools(),
            "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled", "usage": usage,
            "user": body.user, "metadata": body.metadata or {},
        }

    async def response(self) -> dict[str, Any]:
        completion = await self.chat.response()
        choice = completion["choices"][0]
        status, incomplete = _status(choice["finish_reason"])
        builder = OutputBuilder()
        builder.message(choice["message"])
        builder.finish("completed" if status == "completed" else "incomplete")
        return self._response(status, builder.output, _usage(completion["usage"]), incomplete)

    async def chunks(self) -> AsyncIterator[Event]:
        """The typed events; an error once the stream has begun is an `error` event, then `response.failed`."""
        builder = OutputBuilder()
        yield builder.event("response.created", response=self._response("in_progress", []))
        yield builder.event("response.in_progress", response=self._response("in_progress", []))
        finish_reason, usage = None, None
        try:
            async for chunk in self.chat.chunks():
                usage = chunk.get("usage") or usage
                for choice in chunk["choices"]:
                    for event in builder.delta(choice["delta"]):
                        yield event
                    finish_reason = choice["finish_reason"] or finish_reason
        except APIError as exc:
            self.chat_names.renamed(exc)
            yield builder.event("error", code=exc.code, message=exc.message, param=exc.param)
            for event in builder.close("incomplete"):
                yield event
            failed = self._response("failed", builder.output, error={"code": exc.code or "server_error",
                                                                     "message": exc.message})
            yield builder.event("response.failed", response=failed)
            return
        status, incomplete = _status(finish_reason)
        for event in builder.finish("completed" if status == "completed" else "incomplete"):
            yield event
        final = self._response(status, builder.output, _usage(usage) if usage else None, incomplete)
        yield builder.event("response.completed" if status == "completed" else "response.incomplete",
                            response=final)


async def typed_event_stream(events: AsyncIterator[Event], generation: Generation) -> AsyncIterator[str]:
    """Frame typed events as OpenAI does (an `event:` line naming the type, then its `data:`; no `[DONE]`). The
    engine request is aborted whenever the stream stops early, a client disconnect included."""
    try:
        async for event in events:
            yield f"event: {event['type']}\n{sse(event)}"
    finally:
        generation.close()
