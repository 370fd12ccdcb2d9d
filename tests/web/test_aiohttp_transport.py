"""The gateway's httpx client on aiohttp's pool: what its callers rely on from httpx's own transport."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from servers import serve

from moecloud.web.aiohttp_transport import pooled_client


class _Events:
    def __init__(self) -> None:
        self.disconnected = threading.Event()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, _Events]]:
    app, events = FastAPI(), _Events()

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"body": body, "auth": request.headers.get("authorization")},
                            status_code=int(request.query_params.get("status", 200)), headers={"x-seen": "yes"})

    @app.get("/endless")
    async def endless(request: Request) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"data: more\n\n"
                    await asyncio.sleep(0.01)
            finally:
                events.disconnected.set()

        return StreamingResponse(lines(), media_type="text/event-stream")

    @app.get("/slow")
    async def slow() -> JSONResponse:
        await asyncio.sleep(5)
        return JSONResponse({})

    with serve(app) as url:
        yield url, events


def _run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_a_request_and_its_answer_pass_through_unchanged(server: tuple[str, _Events]) -> None:
    url, _ = server

    async def go() -> list[httpx.Response]:
        async with pooled_client(timeout=10, max_connections=4, keepalive_seconds=4) as client:
            return list(await asyncio.gather(*(
                client.post(f"{url}/echo", params={"status": status}, json={"n": n, "text": "日本 ✓"},
                            headers={"authorization": "Bearer k"})
                for n, status in enumerate([200, 404, 200, 429, 200, 200, 200, 200]))))

    responses = _run(go())
    assert [r.status_code for r in responses] == [200, 404, 200, 429, 200, 200, 200, 200]
    assert [r.json()["body"]["n"] for r in responses] == list(range(8))
    assert all(r.json() == {"body": {"n": i, "text": "日本 ✓"}, "auth": "Bearer k"} for i, r in enumerate(responses))
    assert responses[0].headers["x-seen"] == "yes" and not responses[1].is_success


@pytest.fixture
def dying_server() -> Iterator[str]:
    """A server that sends a response head and two chunks of its body, then closes the connection at once: the
    bytes and the end reach the client together, as when a worker's process is killed mid-stream."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                               b"transfer-encoding: chunked\r\n\r\n"
                               b"b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    thread.join(5)
    listener.close()


def test_a_body_cut_short_gives_what_came_then_an_httpx_error(dying_server: str) -> None:
    async def go() -> tuple[list[str], BaseException | None]:
        lines: list[str] = []
        async with (pooled_client(timeout=10, max_connections=4, keepalive_seconds=4) as client,
                    client.stream("GET", f"{dying_server}/dies") as response):
            await asyncio.sleep(0.2)  # the whole rest, end included, has arrived before the body is read
            try:
                async for line in response.aiter_lines():
                    lines.append(line)
            except httpx.HTTPError as error:
                return lines, error
        return lines, None

    lines, error = _run(go())
    assert [line for line in lines if line] == ["data: one", "data: two"]
    assert isinstance(error, httpx.RemoteProtocolError)


def test_closing_a_stream_early_drops_its_connection(server: tuple[str, _Events]) -> None:
    url, events = server
    events.disconnected.clear()

    async def go() -> bool:
        async with pooled_client(timeout=10, max_connections=4, keepalive_seconds=4) as client:
            async with client.stream("GET", f"{url}/endless") as response:
                async for _ in response.aiter_lines():
                    break
            for _ in range(500):  # the socket closes on the loop's next turns: wait without blocking it
                if events.disconnected.is_set():
                    return True
                await asyncio.sleep(0.02)
        return False

    assert _run(go())  # the server saw the client go, as a worker must to abort the request


def test_unreachable_and_silent_servers_are_httpx_errors(server: tuple[str, _Events]) -> None:
    url, _ = server
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def go() -> tuple[BaseException, BaseException]:
        async with pooled_client(timeout=httpx.Timeout(0.2, connect=2), max_connections=4,
                                 keepalive_seconds=4) as client:
            with pytest.raises(httpx.ConnectError) as refused:
                await client.get(closed + "/x")
            with pytest.raises(httpx.ReadTimeout) as silent:
                await client.get(f"{url}/slow")
        return refused.value, silent.value

    refused, silent = _run(go())
    assert isinstance(refused, httpx.TransportError) and isinstance(silent, httpx.TimeoutException)
