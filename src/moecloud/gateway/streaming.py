"""Relaying an upstream SSE stream while counting what it delivers, then settling once it ends.

The gateway always asks the upstream for ``stream_options.include_usage``; the usage chunk is passed on only
when the client asked for it. If the stream ends without usage (client hung up, upstream died), the bill is
the prompt estimate plus one token per content chunk relayed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from moecloud.gateway.billing import MeteredRequest
from moecloud.gateway.catalog import Route
from moecloud.gateway.metering import TokenUsage
from moecloud.openai_errors import error_body


class StreamRelay:
    """``on_close(status)`` runs once the stream is over (the replica's slot is given back there)."""

    def __init__(self, upstream: httpx.Response, meter: MeteredRequest, route: Route, *, client_wants_usage: bool,
                 on_close: Callable[[str], None]) -> None:
        self._upstream = upstream
        self._meter = meter
        self._route = route
        self._client_wants_usage = client_wants_usage
        self._on_close = on_close
        self._rename = route.upstream_model != route.model
        self.usage: TokenUsage | None = None
        self.content_chunks = 0
        self.status = "cancelled"

    async def events(self) -> AsyncIterator[bytes]:
        try:
            async for line in self._upstream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                out = self._relay(line[5:].strip())
                if out is not None:
                    yield b"data: " + out + b"\n\n"
            if self.status == "cancelled":
                self.status = "ok"
        except httpx.HTTPError:
            self.status = "error"
            message = f"deployment {self._route.deployment!r} dropped the stream"
            yield b"data: " + json.dumps(error_body(message, "api_error", code="upstream_error")).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

    def _relay(self, data: str) -> bytes | None:
        if data == "[DONE]":
            return b"[DONE]"
        try:
            chunk: Any = json.loads(data)
        except ValueError:
            return data.encode()
        if not isinstance(chunk, dict):
            return data.encode()
        if "error" in chunk:
            self.status = "error"
            return data.encode()
        usage = TokenUsage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices") or []
        self.content_chunks += sum(1 for choice in choices if _has_content(choice))
        if usage is not None and not choices and not self._client_wants_usage:
            return None
        if self._rename:
            chunk["model"] = self._route.model
            return json.dumps(chunk).encode()
        return data.encode()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._upstream.aclose()
            self._on_close(self.status)
            usage = self.usage or self._meter.estimated_usage(self.content_chunks)
            await self._meter.finish(usage, self.status)


def _has_content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"))
    return bool(choice.get("text"))


class MeteredStreamingResponse(StreamingResponse):
    """Streams the relay, stops as soon as the client disconnects (even while the upstream is silent),
    and always settles the bill on the way out."""

    def __init__(self, relay: StreamRelay, headers: dict[str, str]) -> None:
        super().__init__(relay.events(), media_type="text/event-stream", headers=headers)
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-send
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            await self._relay.close()
