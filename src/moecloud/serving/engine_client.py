"""How the API reaches an engine: the `EngineClient` interface and its in-process implementation.

A worker runs `ProcessEngineClient` (``engine_process.py``: the engine in a process of its own) unless
``serving.engine_process`` is off; this module's `ThreadEngineClient` keeps it in a thread of the API's process
(tests that reach into the engine, notebooks).

`ThreadEngineClient` gives the engine one dedicated thread, because `LLMEngine` is not thread-safe: every
`add_request`, `abort` and `step` runs there, fed by a command queue. Outputs come back to the event loop
through `call_soon_threadsafe`. Each request keeps only its latest output: outputs are cumulative, so a slow
reader just sees bigger deltas and never makes the engine wait or memory grow.

A request the engine fails alone ends its stream with `RequestFailed`; an error that stops the loop ends every
stream with `EngineDead`, refuses new work, and calls `on_fatal` (the worker process then exits).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from moecloud.engine import EngineStats, LLMEngine, RequestOutput, SamplingParams, StructuredOutput
from moecloud.engine.failures import FaultInjector
from moecloud.serving.engine_core import add_request, read_stats
from moecloud.serving.errors import EngineDead, RequestFailed
from moecloud.web.errors import APIError

log = logging.getLogger(__name__)


class RequestStream(AsyncIterator[RequestOutput]):
    """One engine request's outputs, coalesced to the latest; `close()` aborts the request if unfinished."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop, on_close: Callable[[str], None]) -> None:
        self.request_id = request_id
        self.loop = loop
        self._on_close = on_close
        self._latest: RequestOutput | None = None
        self._ended = False
        self._error: APIError | None = None
        self._ready = asyncio.Event()
        self.finished = False
        self.aborted = False
        self.last: RequestOutput | None = None  # what the engine produced so far, read or not
        self.ended = asyncio.Event()  # the engine will push nothing more: ``last`` is final

    def push(self, output: RequestOutput) -> None:
        self._latest = self.last = output
        self._ready.set()
        if output.finished:
            self.ended.set()

    def end(self, error: APIError | None = None) -> None:
        """End the stream early: with an error, or (None) as aborted; outputs already pushed are still read."""
        self._error = error
        self._ended = True
        self.aborted = error is None
        self._ready.set()
        self.ended.set()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        while self._latest is None and not self._ended:
            self._ready.clear()
            await self._ready.wait()
        if self._latest is not None:
            latest, self._latest = self._latest, None
            self.finished = latest.finished
            return latest
        self.finished = True
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._on_close(self.request_id)


class EngineClient(Protocol):
    """What the routes need from an engine, wherever it runs."""

    tokenizer: Any
    model_name: str
    max_model_len: int
    faults: FaultInjector | None  # tests only: see serving.fault_injection

    async def generate(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> RequestStream:
        """Queue a request (raising QueueFull, ContextLengthExceeded, InvalidRequest) and stream its outputs."""
        ...

    async def compile_structured(self, structured: StructuredOutput) -> None:
        """Compile a constraint into the engine's cache off its loop; raises ``InvalidParameter`` if it is invalid."""
        ...

    async def stats(self) -> EngineStats: ...

    def num_active(self) -> int: ...

    def num_aborted(self) -> int: ...

    def healthy(self) -> bool:
        """True while the engine loop runs: alive, not failed, and not stuck in one step."""
        ...

    def abort_all(self) -> None: ...

    def start(self) -> None: ...

    def shutdown(self) -> None: ...


class ThreadEngineClient:
    """`EngineClient` over an `LLMEngine` owned by one background thread in this process."""

    def __init__(self, engine: LLMEngine, max_waiting_requests: int, *, stall_seconds: float | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None) -> None:
        """``stall_seconds``: a step running longer counts as a stuck loop, not healthy (None: never);
        ``on_fatal`` is called on the engine thread once the loop has died and every stream has been ended."""
        self._engine = engine
        self._max_waiting = max_waiting_requests
        self._stall_seconds = stall_seconds
        self._on_fatal = on_fatal
        self._busy_since: float | None = None  # when the step running now began; None: idle
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}  # engine thread only
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._active = 0
        self._aborted = 0
        self._error: BaseException | None = None
        self.tokenizer = engine.tokenizer
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self.faults = engine.faults
        self._handlers: dict[str, Callable[..., None]] = {
            "add": self._add, "abort": self._abort, "abort_all": self._abort_all, "stats": self._stats,
            "failed": self._failed}

    def start(self) -> None:
        self._thread.start()
        # another rank died: the loop, perhaps waiting for work, fails as if its step had raised
        self._engine.on_failure(lambda failure: self._commands.put(("failed", failure)))

    def shutdown(self) -> None:
        if self._thread.is_alive():
            self._commands.put(("stop",))
            self._thread.join(timeout=30)

    def healthy(self) -> bool:
        busy_since, limit = self._busy_since, self._stall_seconds
        stalled = busy_since is not None and limit is not None and time.monotonic() - busy_since > limit
        return self._error is None and self._thread.is_alive() and not stalled

    def num_active(self) -> int:
        return self._active

    def num_aborted(self) -> int:
        return self._aborted

    async def generate(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> RequestStream:
        if not self.healthy():
            raise EngineDead(f"the engine is not running: {self._error!r}")
        loop = asyncio.get_running_loop()
        stream = RequestStream(request_id, loop, lambda rid: self._commands.put(("abort", rid)))
        accepted: asyncio.Future[None] = loop.create_future()
        self._commands.put(("add", stream, prompt, params, accepted))
        try:
            await accepted
        except asyncio.CancelledError:
            self._commands.put(("abort", request_id))
            raise
        return stream

    async def compile_structured(self, structured: StructuredOutput) -> None:
        await asyncio.to_thread(self._engine.structured.compile, structured)

    async def stats(self) -> EngineStats:
        if not self.healthy():
            raise EngineDead(f"the engine is not running: {self._error!r}")
        loop = asyncio.get_running_loop()
        result: asyncio.Future[EngineStats] = loop.create_future()
        self._commands.put(("stats", result))
        return await result

    def abort_all(self) -> None:
        self._commands.put(("abort_all",))

    # ---- everything below runs on the engine thread ----

    def _run(self) -> None:
        try:
            while True:
                block = not self._engine.has_unfinished_requests()
                if block:
                    self._busy_since = None  # waiting for work is not being stuck
                if not self._drain_commands(block):
                    break
                if self._engine.has_unfinished_requests():
                    self._busy_since = time.monotonic()
                    for output in self._engine.step():
                        self._deliver(output)
        except BaseException as exc:  # noqa: BLE001 - any engine failure must end every open stream
            log.exception("engine loop failed")
            self._error = exc
            for stream in list(self._streams.values()):
                self._end(stream, EngineDead(f"the engine failed: {exc!r}"))
            self._refuse_pending()
            if self._on_fatal is not None:
                self._on_fatal(exc)
        finally:
            for stream in list(self._streams.values()):
                self._end(stream, None)
            self._refuse_pending()

    def _refuse_pending(self) -> None:
        """Answer commands that arrived after the loop stopped, so no caller waits forever."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] in ("add", "stats"):
                future = command[-1]
                notify(future.get_loop(), settle, future, None, EngineDead("the engine stopped"))

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued commands (waiting for one if `block`); False once asked to stop."""
        while True:
            try:
                command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
            except queue.Empty:
                return True
            block = False
            if command[0] == "stop":
                return False
            self._handlers[command[0]](*command[1:])

    def _failed(self, failure: BaseException) -> None:
        raise failure

    def _abort_all(self) -> None:
        for request_id in list(self._streams):
            self._abort(request_id)

    def _add(self, stream: RequestStream, prompt: str | list[int], params: SamplingParams,
             accepted: asyncio.Future[None]) -> None:
        try:
            error = add_request(self._engine, stream.request_id, prompt, params, self._max_waiting)
        except BaseException as exc:  # fatal: the loop dies, this caller learns it first
            notify(stream.loop, settle, accepted, None, EngineDead(f"the engine failed: {exc!r}"))
            raise
        if error is None:
            self._streams[stream.request_id] = stream
            self._active += 1
        notify(stream.loop, settle, accepted, None, error)

    def _stats(self, future: asyncio.Future[EngineStats]) -> None:
        try:
            stats = read_stats(self._engine)
        except BaseException as exc:
            notify(future.get_loop(), settle, future, None, EngineDead(f"the engine failed: {exc!r}"))
            raise
        if isinstance(stats, APIError):
            notify(future.get_loop(), settle, future, None, stats)
        else:
            self._resolve(future, stats)

    def _abort(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            self._engine.abort(request_id)
            self._aborted += 1
            self._end(stream, None)

    def _deliver(self, output: RequestOutput) -> None:
        stream = self._streams.get(output.request_id)
        if stream is None:
            return
        if output.error is not None:
            self._end(stream, RequestFailed(output.error))
            return
        notify(stream.loop, stream.push, output)
        if output.finished:
            del self._streams[output.request_id]
            self._active -= 1

    def _end(self, stream: RequestStream, error: APIError | None) -> None:
        if self._streams.pop(stream.request_id, None) is not None:
            self._active -= 1
        notify(stream.loop, stream.end, error)

    def _resolve(self, future: asyncio.Future[Any], value: Any) -> None:
        notify(future.get_loop(), settle, future, value, None)


def notify(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Hand a result to the caller's event loop; a caller whose loop has closed no longer listens."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise


def settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
