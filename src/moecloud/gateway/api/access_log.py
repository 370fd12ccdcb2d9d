"""One access line per request, written when the request has ended (a stream: once its last byte is sent).

It reads what the routes left on ``request.state`` and takes each field only when it is there: ``caller``
(tenant and key, once authenticated), ``model``, ``meter`` (request id, and usage and cost once settled).
Refusals (401, 402, 429, ...) get their line like any other request. Health checks and scrapes are DEBUG.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moecloud.logs import ACCESS_LOGGER

_QUIET_PATHS = ("/health", "/metrics")


class AccessLog:
    """Pure ASGI middleware (streamed responses pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        response: dict[str, Any] = {"status": 500, "request_id": None}

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name == b"x-request-id":
                        response["request_id"] = value.decode("latin-1")
            await send(message)

        try:
            await self._app(scope, receive, send_and_note)
        finally:
            level = logging.DEBUG if scope["path"] in _QUIET_PATHS else logging.INFO
            if self._log.isEnabledFor(level):
                fields = access_fields(scope, response["status"], response["request_id"], time.monotonic() - started)
                text = " ".join(f"{name}={value}" for name, value in fields.items() if value is not None)
                self._log.log(level, text, extra={"fields": fields})


def access_fields(scope: Scope, status: int, request_id: str | None, seconds: float) -> dict[str, Any]:
    state = scope.get("state", {})
    caller, meter = state.get("caller"), state.get("meter")
    usage = getattr(meter, "usage", None)
    cost = getattr(meter, "cost", None)
    return {
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "latency_ms": round(seconds * 1000),
        "request_id": request_id or getattr(meter, "request_id", None),
        "tenant": getattr(caller, "tenant_name", None),
        "key": getattr(caller, "key_public_id", None),
        "model": state.get("model"),
        "prompt_tokens": getattr(usage, "prompt_tokens", None),
        "cached_tokens": getattr(usage, "cached_tokens", None),
        "completion_tokens": getattr(usage, "completion_tokens", None),
        "cost": None if cost is None else str(cost),
    }
