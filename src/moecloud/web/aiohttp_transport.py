"""An ``httpx`` client whose requests travel on aiohttp's connection pool.

httpx's own pool (httpcore) checks every pooled connection for expiry on each request, and each check asks the
socket for its peer and its readability: under 16 concurrent requests that was a tenth of the gateway's busy
time, and the whole httpx stack ~30% (py-spy, benchmarks/sql.py). aiohttp's pool takes an idle connection off a
list. The callers keep httpx's interface (``httpx.Response``, its exceptions, its timeouts); only the transport
changes, as LiteLLM's proxy does for the same reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL


def pooled_client(*, timeout: httpx.Timeout | float, max_connections: int, keepalive_seconds: float,
                  **options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on an :class:`AiohttpTransport` of at most ``max_connections`` connections, idle
    ones closed after ``keepalive_seconds`` (keep it below the server's own keep-alive, so a request never
    goes out on a connection the server is closing)."""
    transport = AiohttpTransport(max_connections=max_connections, keepalive_seconds=keepalive_seconds)
    return httpx.AsyncClient(transport=transport, timeout=timeout, **options)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx``'s transport interface over an ``aiohttp.ClientSession`` made on first use (it needs the running
    loop). Bodies are passed through as bytes, undecoded: httpx decodes them, as with its own transport."""

    def __init__(self, *, max_connections: int, keepalive_seconds: float) -> None:
        self._max_connections, self._keepalive_seconds = max_connections, keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0,
                                             keepalive_timeout=self._keepalive_seconds)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False,
                                                  cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout())
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(total=None, connect=timeouts.get("pool"),
                                        sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read"))
        body = await request.aread()
        try:
            response = await self._open_session().request(
                request.method, URL(str(request.url), encoded=True), data=body or None,
                headers=CIMultiDict(request.headers.multi_items()), allow_redirects=False, timeout=timeout,
                skip_auto_headers=("Content-Type",))
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _as_httpx(error, request) from error
        return httpx.Response(
            response.status, headers=list(response.raw_headers), stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp as it arrives. Closed before its end (a client that hung up), the
    connection is dropped, not returned to the pool: the server sees the disconnect and stops the request."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response, self._request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except (TimeoutError, aiohttp.ClientError) as error:
                # aiohttp raises a broken body's error ahead of the bytes that came before it, which httpx's
                # own transport hands over first (a relay bills the tokens it passed on): those go first here too
                with contextlib.suppress(TimeoutError):
                    if rest := content._read_nowait(-1):  # the public read_nowait raises the error first
                        yield rest
                raise _as_httpx(error, self._request) from error
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


def _as_httpx(error: BaseException, request: httpx.Request) -> httpx.TransportError:
    """aiohttp's failure as the httpx exception its callers catch (timeouts apart from unreachable hosts)."""
    message = str(error) or type(error).__name__
    kind: type[httpx.TransportError]
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(error, TimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(error, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        kind = httpx.RemoteProtocolError
    elif isinstance(error, aiohttp.ClientOSError):
        kind = httpx.ReadError
    else:
        kind = httpx.TransportError
    return kind(message, request=request)
