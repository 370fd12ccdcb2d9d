"""Ports and health waits: how a process that starts an HTTP server (the gateway starting workers, the
launcher, the tests and benchmarks) finds a free port for it and waits until it answers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx


class NotHealthy(RuntimeError):
    """The server did not answer its health check in time, or waiting for it became pointless."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_healthy(url: str, timeout: float, failed: Callable[[], str | None] = lambda: None) -> None:
    """Poll ``url`` until it answers 200; ``failed`` says why waiting is pointless (e.g. the process exited),
    or None. Raises `NotHealthy`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while loop.time() < deadline:
            if (reason := failed()) is not None:
                raise NotHealthy(reason)
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    raise NotHealthy(f"{url} was not healthy within {timeout:.0f}s")
