"""Requests to the gateway from a background event loop: bounded concurrency, a per-model request rate,
429s with ``Retry-After`` waited out, and cancellation of whatever is in flight."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from moecloud.toolkit.evaluate import Retry, error_reason, retry_after
from moecloud.web.aiohttp_transport import pooled_client


class Cancelled(RuntimeError):
    """The query was cancelled (Ctrl+C or ``cancel()``) while its requests were in flight."""


@dataclass(frozen=True)
class Call:
    """One request a row needs: ``path`` under the API base URL, its JSON body, and how to read the answer."""

    path: str
    body: dict[str, Any]
    read: Callable[[dict[str, Any]], Any]

    @property
    def model(self) -> str:
        return str(self.body.get("model"))


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: str | None = None
    usage: dict[str, Any] | None = None


KEEPALIVE_SECONDS = 4.0  # idle connections to the gateway closed before its server's own 5 s keep-alive does


class Sender:
    """An ``httpx.AsyncClient`` (on aiohttp's pool) on an event loop of its own thread; ``send`` blocks the
    caller, not the loop."""

    def __init__(self, base_url: str, api_key: str, *, max_concurrency: int = 16,
                 requests_per_second: float | None = None, timeout: float = 300.0, retry: Retry = Retry()) -> None:
        self.base_url, self.api_key, self.timeout, self.retry = base_url.rstrip("/") + "/", api_key, timeout, retry
        self.max_concurrency, self.requests_per_second = max_concurrency, requests_per_second
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="moecloud-sql", daemon=True)
        self._thread.start()
        self._client: httpx.AsyncClient | None = None
        self._next_start: dict[str, float] = {}
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()

    def send(self, calls: Sequence[Call], done: Callable[[], None] = lambda: None) -> list[Outcome]:
        """Send ``calls`` concurrently; their outcomes in the same order. Ctrl+C or ``cancel()`` cancels what is
        in flight and raises ``Cancelled``."""
        future = asyncio.run_coroutine_threadsafe(self._send_all(calls, done), self._loop)
        with self._lock:
            self._in_flight.add(future)
        try:
            while True:
                try:
                    return future.result(0.1)
                except concurrent.futures.TimeoutError:
                    continue
                except concurrent.futures.CancelledError:
                    raise Cancelled(f"cancelled with {len(calls)} requests in flight") from None
        except KeyboardInterrupt:
            future.cancel()
            self._wait_cancelled(future)
            raise
        finally:
            with self._lock:
                self._in_flight.discard(future)

    def cancel(self) -> None:
        """Cancel every request in flight (from any thread); the waiting ``send`` raises ``Cancelled``."""
        with self._lock:
            futures = list(self._in_flight)
        for future in futures:
            future.cancel()

    def close(self) -> None:
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @staticmethod
    def _wait_cancelled(future: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(Exception):  # cancelled, or not done within 5 s: either way, gone
            future.result(5)

    async def _send_all(self, calls: Sequence[Call], done: Callable[[], None]) -> list[Outcome]:
        if self._client is None:
            self._client = pooled_client(
                base_url=self.base_url, headers={"authorization": f"Bearer {self.api_key}"}, timeout=self.timeout,
                max_connections=self.max_concurrency, keepalive_seconds=KEEPALIVE_SECONDS)
        slots = asyncio.Semaphore(self.max_concurrency)

        async def one(call: Call) -> Outcome:
            async with slots:
                outcome = await self._send_one(call)
            done()
            return outcome

        return list(await asyncio.gather(*(one(call) for call in calls)))

    async def _send_one(self, call: Call) -> Outcome:
        assert self._client is not None
        for attempt in range(self.retry.attempts + 1):
            await self._pace(call.model)
            try:
                response = await self._client.post(call.path, json=call.body)
            except httpx.HTTPError as error:
                return Outcome(error=f"{type(error).__name__}: {error}")
            wait = retry_after(response)
            if wait is None or attempt == self.retry.attempts:
                break
            await asyncio.sleep(min(wait, self.retry.max_wait))
        if not response.is_success:
            return Outcome(error=error_reason(response))
        try:
            data = response.json()
            usage = data.get("usage") if isinstance(data, dict) else None
            return Outcome(value=call.read(data), usage=usage)
        except (ValueError, LookupError, TypeError, AttributeError) as error:
            return Outcome(error=str(error) or f"HTTP {response.status_code}: an answer not of the expected shape",
                           usage=data.get("usage") if isinstance(data, dict) else None)

    async def _pace(self, model: str) -> None:
        """At most ``requests_per_second`` request starts per model (spaced evenly)."""
        if not self.requests_per_second:
            return
        now = time.monotonic()
        start = max(now, self._next_start.get(model, now))
        self._next_start[model] = start + 1 / self.requests_per_second
        if start > now:
            await asyncio.sleep(start - now)
