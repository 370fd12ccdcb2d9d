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
                 client_wants_usage: bool) -> None:
        self._upstream = upstream
        self._meter = meter
        self._route = route
        self._client_wants_usage = client_wants_usage
        self._rename = route.upstream_model != route.model
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
            return b"data: [DONE]\n\n", True
        return _framed(self._chunk(data)), False

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
        if usage is not None and not choices and not self._client_wants_usage:
            return None
        if self._rename:
            chunk["model"] = self._route.model
            return json.dumps(chunk)
        return data

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
        return _typed_event(event, None if self._rename else data), event.get("type") in self._FINAL

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
