"""Waiting in tests: poll a condition until it holds or the test's own timeout passes."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable

import httpx

from moecloud.web import net


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached in {timeout} s"
        time.sleep(interval)


def read_stream(url: str, body: dict[str, object], into: list[str], timeout: float = 120) -> None:
    """The non-empty SSE lines of a streamed POST, appended to ``into`` as they arrive (readable mid-stream)."""
    with httpx.stream("POST", url, json=body, timeout=timeout) as response:
        into.extend(line for line in response.iter_lines() if line)


def wait_healthy(url: str, timeout: float, process: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None
                 ) -> None:
    """`moecloud.web.net.wait_healthy` from synchronous code; gives up once ``process`` (the server) has exited."""

    def exited() -> str | None:
        code = None if process is None else process.poll()
        return None if code is None else f"the process exited with status {code}"

    asyncio.run(net.wait_healthy(url, timeout, exited))
