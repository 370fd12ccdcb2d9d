"""Relaying an upstream SSE stream to the client while telling the request's meter what it delivers.

The gateway always asks the upstream for ``stream_options.include_usage``; the usage chunk is passed on only
when the client asked for it. A stream that ends without usage (the client hung up, the upstream died) is billed
from the worker's own report of what its engine produced (see ``MeteredRequest``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from moecloud.gateway.fleet.catalog import Route
from moecloud.gateway.traffic.screening import StreamScreen
from moecloud.pricing import TokenUsage
from moecloud.web.errors import error_body


class StreamMeter(Protocol):
    """What the relay tells the request's meter (``tenancy.metering.MeteredRequest``)."""

    status: str | None
    usage: TokenUsage | None
    counted_tokens: int

    async def end(self, status: str) -> None: ...


class StreamRelay:
    """Owns the upstream response: ``close`` ends it (which aborts the request at a worker that still runs it)."""

    def __init__(self, upstream: httpx.Response, meter: StreamMeter, route: Route, *,
                 client_wants_usage: bool, screen: StreamScreen | None = None) -> None:
        self._upstream = upstream
        self._meter = meter
        self._route = route
        self._client_wants_usage = client_wants_usage
        self._rename = route.upstream_model != route.model
        self._screen = screen  # output screening; None: off
        self._last: dict[str, Any] = {}  # the last chunk's id, object, created and model (for a flushed chunk)
        self._before = b""  # frames to send ahead of the current chunk's (text released by screening)
        meter.status = "cancelled"  # until the stream ends by itself

    async def events(self) -> AsyncIterator[bytes]:
        try:
            async for line in self._upstream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                out, final = self._relay(line[5:].strip())
                if final and self._meter.status != "error":
                    await self._meter.end("ok")  # billed before the client can see it complete
                if out is not None:
                    yield out
            if self._meter.status == "cancelled":
                self._meter.status = "ok"
        except httpx.HTTPError:
            self._meter.status = "error"
            yield self._dropped(f"deployment {self._route.deployment!r} dropped the stream")

    def _dropped(self, message: str) -> bytes:
        """What the client is sent when the upstream's stream breaks."""
        error = json.dumps(error_body(message, "api_error", code="upstream_error")).encode()
        return b"data: " + error + b"\n\ndata: [DONE]\n\n"

    def _relay(self, data: str) -> tuple[bytes | None, bool]:
        """One ``data:`` payload -> (what the client is sent, or None; whether it is the stream's last)."""
        if data == "[DONE]":
            return self._flushed() + b"data: [DONE]\n\n", True
        out = _framed(self._chunk(data))
        before, self._before = self._before, b""
        return (before + out if out else before) or None, False

    def _chunk(self, data: str) -> str | None:
        try:
            chunk: Any = json.loads(data)
        except ValueError:
            return data
        if not isinstance(chunk, dict):
            return data
        if "error" in chunk:
            self._meter.status = "error"
            return data
        usage = TokenUsage.from_openai(chunk.get("usage"))
        if usage is not None:
            self._meter.usage = usage
        choices = chunk.get("choices")
        choices = choices if isinstance(choices, list) else []
        self._meter.counted_tokens += sum(1 for choice in choices if _has_content(choice))
        if self._screen is not None:
            self._last = {name: chunk[name] for name in ("id", "object", "created", "model") if name in chunk}
            if choices:
                chunk["choices"] = self._screened(choices)
                if not chunk["choices"] and usage is None:
                    return None  # all of it held back
            elif usage is not None:
                self._before = self._flushed()  # the stream ended without a finish_reason: held text goes first
        if usage is not None and not choices and not self._client_wants_usage:
            return None
        if self._rename:
            chunk["model"] = self._route.model
        return json.dumps(chunk) if self._rename or self._screen is not None else data

    def _screened(self, choices: list[Any]) -> list[Any]:
        """The choices with their content screened: held back, released (redacted), or cut with a final
        ``finish_reason: content_filter``; a blocked choice sends nothing more."""
        assert self._screen is not None
        out = []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index") if isinstance(choice.get("index"), int) else 0
            delta = choice.get("delta")
            holder, key = (delta, "content") if isinstance(delta, dict) else (choice, "text")
            text = holder.get(key)
            released, blocked = self._screen.feed(index, text) if isinstance(text, str) and text else ("", False)
            if not blocked and choice.get("finish_reason") is not None:
                rest, blocked = self._screen.flush(index)
                released += rest
            if blocked:
                if self._screen.is_cut(index):
                    continue  # its final chunk was sent
                self._screen.cut(index)
                out.append(_cut_choice(index, chat=isinstance(delta, dict)))
                continue
            if isinstance(text, str) or released:
                holder[key] = released
            if released or choice.get("finish_reason") is not None or _carries_more(choice, holder, key):
                out.append(choice)
        return out

    def _flushed(self) -> bytes:
        """Chunks releasing what is still held (screened), one per choice, or cutting a choice blocked now."""
        if self._screen is None:
            return b""
        frames = []
        for index in self._screen.held():
            released, blocked = self._screen.flush(index)
            chat = self._last.get("object") != "text_completion"
            if blocked:
                self._screen.cut(index)
                choice = _cut_choice(index, chat=chat)
            else:
                choice = {"index": index, **({"delta": {"content": released}} if chat else {"text": released}),
                          "finish_reason": None}
            frames.append(_framed(json.dumps({**self._last, "choices": [choice]})) or b"")
        return b"".join(frames)

    async def respond(self, headers: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
        """Stream to the client until the upstream ends or the client disconnects (even while the upstream is
        silent); the upstream is closed on the way out, whatever happened."""
        try:
            await _DisconnectAwareStream(self.events(), headers)(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._upstream.aclose()


class ResponsesRelay(StreamRelay):
    """The Responses API's typed stream (``event: <type>`` then its ``data:``, no ``[DONE]``), passed on
    unchanged but for the model's name. The usage is in the final event (``response.completed`` or
    ``response.incomplete``), which is billed before the client sees it; each text, reasoning or tool-call
    argument delta counts as one token of the output estimate."""

    _DELTAS = ("response.output_text.delta", "response.reasoning_text.delta",
               "response.function_call_arguments.delta")
    _FINAL = ("response.completed", "response.incomplete")

    _sequence = 0  # one past the last event's sequence_number: where an error event of the gateway's goes

    def _relay(self, data: str) -> tuple[bytes | None, bool]:
        event = self._typed(data)
        if event is None:
            return _framed(data), False
        self._sequence = max(self._sequence, _int(event.get("sequence_number")) + 1)
        final = event.get("type") in self._FINAL
        if self._screen is not None:
            return self._screened_event(event, final), final
        return _typed_event(event, None if self._rename else data), final

    def _screened_event(self, event: dict[str, Any], final: bool) -> bytes | None:
        """Output text deltas held back and released screened; the events that repeat the whole text (``.done``
        events, the final response) carry what was released instead; a blocked part sends nothing more, and
        the response ends ``incomplete`` with ``incomplete_details.reason: content_filter``."""
        screen = self._screen
        assert screen is not None
        kind = event.get("type")
        part = (_int(event.get("output_index")), _int(event.get("content_index")))
        if kind == "response.output_text.delta":
            text = event.get("delta")
            released, blocked = screen.feed(part, text) if isinstance(text, str) else ("", False)
            if not released:
                return None
            event["delta"] = released
            return _typed_event(event)
        frames = b""
        if kind == "response.output_text.done":
            frames = self._released_delta(event, part)
            event["text"] = screen.released(part)
        elif kind == "response.content_part.done" and isinstance(event.get("part"), dict):
            if event["part"].get("type") == "output_text" and part in screen.seen():
                event["part"]["text"] = screen.released(part)
        elif kind == "response.output_item.done":
            self._released_texts([event.get("item")], _int(event.get("output_index")))
        elif final:
            frames = b"".join(self._released_delta(event, held) for held in screen.held())
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("output"), list):
                self._released_texts(response["output"], 0)
                if screen.blocked_any():
                    event["type"] = "response.incomplete"
                    response["status"] = "incomplete"
                    response["incomplete_details"] = {"reason": "content_filter"}
        return frames + _typed_event(event)

    def _released_delta(self, event: dict[str, Any], part: tuple[int, int]) -> bytes:
        """A delta event with what is still held for ``part`` (screened), or nothing."""
        assert self._screen is not None
        released, _ = self._screen.flush(part)
        if not released:
            return b""
        return _typed_event({"type": "response.output_text.delta", "sequence_number": event.get("sequence_number"),
                             "item_id": event.get("item_id"), "output_index": part[0], "content_index": part[1],
                             "delta": released})

    def _released_texts(self, items: list[Any], first_index: int) -> None:
        """Each output_text part of ``items`` given the text released for it (items numbered from
        ``first_index``); a part whose deltas never came is screened whole."""
        assert self._screen is not None
        for i, item in enumerate(items, start=first_index):
            parts = item.get("content") if isinstance(item, dict) else None
            for j, content in enumerate(parts if isinstance(parts, list) else []):
                if not (isinstance(content, dict) and content.get("type") == "output_text"):
                    continue
                if (i, j) in self._screen.seen():
                    content["text"] = self._screen.released((i, j))
                elif isinstance(content.get("text"), str):
                    self._screen.feed((i, j), content["text"])
                    self._screen.flush((i, j))
                    content["text"] = self._screen.released((i, j))

    def _dropped(self, message: str) -> bytes:
        return _typed_event({"type": "error", "sequence_number": self._sequence, "code": "upstream_error",
                             "message": message, "param": None})

    def _typed(self, data: str) -> dict[str, Any] | None:
        try:
            event: Any = json.loads(data)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        kind, response = event.get("type"), event.get("response")
        if kind in ("error", "response.failed"):
            self._meter.status = "error"
        elif kind in self._DELTAS:
            self._meter.counted_tokens += 1
        if isinstance(response, dict):
            usage = TokenUsage.from_responses(response.get("usage"))
            if usage is not None:
                self._meter.usage = usage
            if self._rename:
                response["model"] = self._route.model
        return event


def _cut_choice(index: int, *, chat: bool) -> dict[str, Any]:
    """A choice's last chunk when screening blocks it."""
    body: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
    return {"index": index, **body, "finish_reason": "content_filter"}


def _carries_more(choice: dict[str, Any], holder: dict[str, Any], key: str) -> bool:
    """Whether a choice whose content is held back still has something else to send (a role, tool calls)."""
    rest = holder if holder is not choice else {}
    return any(value not in (None, "") for name, value in rest.items() if name != key)


def _typed_event(event: dict[str, Any], data: str | None = None) -> bytes:
    """An event as OpenAI frames it; ``data``: its JSON as received, when nothing in it changed."""
    kind = event.get("type")
    head = f"event: {kind}\n".encode() if isinstance(kind, str) and kind.isprintable() else b""
    return head + b"data: " + (data or json.dumps(event)).encode() + b"\n\n"


def _framed(data: str | None) -> bytes | None:
    return None if data is None else b"data: " + data.encode() + b"\n\n"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _has_content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"))
    return bool(choice.get("text"))


class _DisconnectAwareStream(StreamingResponse):
    """Stops as soon as the client disconnects, not only at the next write."""

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                with contextlib.suppress(OSError):  # the client went away mid-send
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()
