"""The request-counting middleware both HTTP edges use (the worker by endpoint, the gateway by model)."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestCounter:
    """Pure ASGI middleware (so streamed responses and disconnect handling pass through untouched): for each
    HTTP request whose path ``counted`` selects, ``first_byte(scope, seconds)`` when its response starts and
    ``finished(scope, status)`` when it ends (status 500 if no response started)."""

    def __init__(self, app: ASGIApp, *, counted: Callable[[str], bool], finished: Callable[[Scope, int], None],
                 first_byte: Callable[[Scope, float], None] | None = None) -> None:
        self._app = app
        self._counted = counted
        self._finished = finished
        self._first_byte = first_byte

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._counted(scope["path"]):
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self._first_byte is not None:
                    self._first_byte(scope, time.monotonic() - started)
            await send(message)

        try:
            await self._app(scope, receive, send_and_note)
        finally:
            self._finished(scope, status)
