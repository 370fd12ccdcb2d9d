"""A request whose path or query string carries a NUL character (``%00``) is refused with a 400 before any route
reads it: PostgreSQL's text cannot hold NUL (a path parameter or a query filter reaching it was a 500) and no
name in moecloud has one. Bodies are checked by their schemas (``gateway.admin.schemas.StoredIn``)."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Receive, Scope, Send

from moecloud.web.errors import InvalidRequest, error_response


class RefuseNul:
    """Pure ASGI middleware: streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for part, raw in (("path", scope.get("raw_path") or scope["path"].encode()),
                              ("query", scope.get("query_string", b""))):
                if b"\x00" in unquote_to_bytes(raw):
                    response = error_response(InvalidRequest(f"the {part} contains a NUL character", param=part))
                    await response(scope, receive, send)
                    return
        await self._app(scope, receive, send)
