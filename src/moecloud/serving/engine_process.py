"""`ProcessEngineClient`: the `EngineClient` whose engine runs in an engine-core process (``engine_core.py``).

This process keeps the event loop, the tokenizer (chat templates, tool parsing, prompt encoding) and every
request's stream; the core owns the `LLMEngine`. Two threads move messages: a sender writes commands to the
core (so a large prompt never blocks the event loop on a full pipe), a reader takes the core's batches, one
per engine step, rebuilds each changed request's cumulative output from its delta and hands the whole batch to
the event loop in one callback. Semantics are `ThreadEngineClient`'s: outputs coalesce to the latest per
request, ``close()`` aborts, a request the engine fails alone ends with `RequestFailed`, and a core that fails
or dies (killed, out of memory) ends every stream with `EngineDead`, refuses new work and calls ``on_fatal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from moecloud.config import Settings, settings_for_child
from moecloud.engine import EngineStats, SamplingParams, StructuredOutput
from moecloud.engine.failures import FAULT_STAGES, EngineFailed
from moecloud.engine.tokenizer import Tokenizer
from moecloud.serving.engine_client import RequestStream, notify, settle
from moecloud.serving.engine_core import BusyClock, OutputBuilder, RequestDelta, core_command, unpack_error
from moecloud.serving.errors import EngineDead, RequestFailed
from moecloud.web.errors import APIError, InvalidRequest

log = logging.getLogger(__name__)
_STOP_TIMEOUT = 30.0


class RemoteFaults:
    """The core's `FaultInjector`, armed from here (tests only: see serving.fault_injection)."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        self._send = send

    def arm(self, request_id: str, stage: str) -> None:
        if stage not in FAULT_STAGES:
            raise ValueError(f"the fault stage must be one of {', '.join(FAULT_STAGES)}, not {stage!r}")
        self._send(("arm", request_id, stage))  # sent before the request it arms: the pipe keeps the order


class ProcessEngineClient:
    """`EngineClient` over an `LLMEngine` in a child process started by `start()` (``engine_core.py``)."""

    def __init__(self, model: str | Path, settings: Settings, *, on_fatal: Callable[[BaseException], None] | None
                 = None) -> None:
        """``on_fatal`` is called (on the reader thread) once the core has failed or died and every stream has
        been ended; a stall is a step running longer than ``serving.health_stall_seconds``."""
        self._model = str(model)
        self._settings = settings
        self._stall_seconds = settings.serving.health_stall_seconds
        self._on_fatal = on_fatal
        self._busy_since = BusyClock()  # written by the core each step, read by healthy()
        self._process: subprocess.Popen[bytes] | None = None
        self._commands: Connection | None = None
        self._batches: Connection | None = None
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the maps below: the event loop adds, the reader settles
        self._streams: dict[str, tuple[RequestStream, OutputBuilder]] = {}
        self._pending: dict[str, tuple[RequestStream, OutputBuilder, asyncio.Future[None]]] = {}
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._tokens = itertools.count()
        self._aborted = 0
        self._error: BaseException | None = None
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.batches_received = 0  # one per engine step that changed a request (plus answers to commands)
        self.deltas_received = 0
        self.tokenizer: Any = None
        self.model_name = ""
        self.max_model_len = 0
        self.vocab_size = 0
        self.eos_token_ids: list[int] = []
        self.core_pid: int | None = None
        self.faults = RemoteFaults(self._send) if settings.serving.fault_injection else None

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the core, load the tokenizer meanwhile, and return once the engine is loaded and warmed up."""
        commands_out, commands_in = os.pipe()
        batches_out, batches_in = os.pipe()
        child_fds = (commands_out, batches_in, self._busy_since.fd)
        try:
            process = subprocess.Popen(core_command(*child_fds), pass_fds=child_fds)
        finally:
            os.close(commands_out)  # only the core holds these ends: its death closes the pipe we read
            os.close(batches_in)
        self._process = process
        self._commands = Connection(commands_in, readable=False)
        self._batches = Connection(batches_out, writable=False)
        self.core_pid = process.pid
        try:
            self._commands.send((self._model, settings_for_child(self._settings), os.getpid()))
            self.tokenizer = Tokenizer(self._model)
            message = self._batches.recv()
        except BaseException as exc:
            self.shutdown()
            if isinstance(exc, EOFError):
                raise RuntimeError(f"the engine core exited while starting (status {process.returncode})") from None
            raise
        if message[0] == "failed":
            self.shutdown()
            raise unpack_error(message[1])
        info = message[1]
        self.model_name, self.max_model_len = info["model_name"], info["max_model_len"]
        self.vocab_size, self.eos_token_ids = info["vocab_size"], info["eos_token_ids"]
        for target, name in ((self._read, "engine-core-reader"), (self._write, "engine-core-sender")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self) -> None:
        """Stop the core (it finishes nothing: drain first) and end whatever is still open."""
        process = self._process
        if process is None or self._stopping:
            return
        self._stopping = True
        if self._threads:
            self._send(("stop",))
            self._outbox.put(None)
        else:  # stopped while starting: no sender yet
            with contextlib.suppress(OSError, ValueError):
                self._commands.send(("stop",))  # type: ignore[union-attr]
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("the engine core did not stop in %.0fs: killing it", _STOP_TIMEOUT)
            process.kill()
            process.wait()
        for connection in (self._commands, self._batches):
            if connection is not None:
                connection.close()
        self._end_everything(None, EngineDead("the engine stopped"))

    # ---- the EngineClient interface ----------------------------------------------------------------------

    def healthy(self) -> bool:
        busy_since, limit = self._busy_since.value, self._stall_seconds
        stalled = busy_since > 0 and limit is not None and time.monotonic() - busy_since > limit
        process = self._process
        return (self._error is None and not self._stopping and process is not None and process.poll() is None
                and not stalled)

    def num_active(self) -> int:
        return len(self._streams)

    def num_aborted(self) -> int:
        return self._aborted

    async def generate(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> RequestStream:
        self._refuse_if_dead()
        loop = asyncio.get_running_loop()
        stream = RequestStream(request_id, loop, lambda rid: self._send(("abort", rid)))
        accepted: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._error is not None or self._stopping:  # ended since the check above: nobody would answer
                raise EngineDead(f"the engine is not running: {self._error!r}")
            if request_id in self._pending or request_id in self._streams:
                raise InvalidRequest(f"request id {request_id!r} is already in use")
            self._pending[request_id] = (stream, OutputBuilder(request_id, prompt, params), accepted)
        self._send(("add", request_id, prompt, params))
        try:
            await accepted
        except asyncio.CancelledError:
            self._send(("abort", request_id))
            raise
        return stream

    async def compile_structured(self, structured: StructuredOutput) -> None:
        await self._ask("compile", structured)

    async def stats(self) -> EngineStats:
        return await self._ask("stats")

    def abort_all(self) -> None:
        self._send(("abort_all",))

    # ---- this side's plumbing ----------------------------------------------------------------------------

    def _refuse_if_dead(self) -> None:
        if not self.healthy():
            raise EngineDead(f"the engine is not running: {self._error!r}")

    async def _ask(self, kind: str, *args: Any) -> Any:
        self._refuse_if_dead()
        token = next(self._tokens)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._error is not None or self._stopping:
                raise EngineDead(f"the engine is not running: {self._error!r}")
            self._replies[token] = answer
        self._send((kind, token, *args))
        return await answer

    def _send(self, command: tuple[Any, ...]) -> None:
        self._outbox.put(command)

    def _write(self) -> None:
        """The sender thread: commands to the core, in order."""
        while (command := self._outbox.get()) is not None:
            try:
                self._commands.send(command)  # type: ignore[union-attr]
            except (OSError, ValueError):  # the core is gone: the reader ends everything
                return

    def _read(self) -> None:
        """The reader thread: the core's batches until it stops or dies."""
        try:
            while True:
                message = self._batches.recv()  # type: ignore[union-attr]
                if message[0] == "fatal":
                    self._die(EngineFailed(message[1]), f"the engine failed: {message[1]}")
                    return
                self._apply(*message[1:])
        except (EOFError, OSError):
            if self._stopping:
                return
            status = self._exit_status()
            self._die(EngineFailed(f"the engine core process exited (status {status})"),
                      f"the engine core process exited (status {status})")

    def _exit_status(self) -> int | None:
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def _apply(self, added: list[tuple[str, Any]], deltas: list[RequestDelta], ended: list[tuple[str, Any]],
               replies: list[tuple[int, Any, Any]]) -> None:
        """One batch: every resulting call is handed to its event loop at once (one wake-up per batch)."""
        self.batches_received += 1
        self.deltas_received += len(deltas)
        calls: dict[asyncio.AbstractEventLoop, list[tuple[Callable[..., None], tuple[Any, ...]]]] = defaultdict(list)
        with self._lock:
            for request_id, error in added:
                stream, builder, accepted = self._pending.pop(request_id)
                if error is None:
                    self._streams[request_id] = (stream, builder)
                calls[stream.loop].append((settle, (accepted, None, None if error is None else unpack_error(error))))
            for delta in deltas:
                entry = self._streams.get(delta[0])
                if entry is None:
                    continue
                stream, builder = entry
                output = builder.apply(delta)
                if output.error is not None:
                    del self._streams[delta[0]]
                    calls[stream.loop].append((stream.end, (RequestFailed(output.error),)))
                    continue
                calls[stream.loop].append((stream.push, (output,)))
                if output.finished:
                    del self._streams[delta[0]]
            for request_id, error in ended:
                entry = self._streams.pop(request_id, None)
                if entry is not None:
                    self._aborted += error is None
                    calls[entry[0].loop].append((entry[0].end, (None if error is None else unpack_error(error),)))
            for token, value, error in replies:
                answer = self._replies.pop(token, None)
                if answer is not None:
                    calls[answer.get_loop()].append(
                        (settle, (answer, value, None if error is None else unpack_error(error))))
        for loop, batch in calls.items():
            notify(loop, _run_calls, batch)

    def _die(self, cause: BaseException, message: str) -> None:
        if self._stopping:
            return
        log.error("%s: ending every stream", message)
        self._end_everything(cause, EngineDead(message))
        if self._on_fatal is not None:
            self._on_fatal(cause)

    def _end_everything(self, cause: BaseException | None, error: APIError) -> None:
        """Set the client's failure (None: stopped) and end every stream and every waiting caller with it."""
        calls: dict[asyncio.AbstractEventLoop, list[tuple[Callable[..., None], tuple[Any, ...]]]] = defaultdict(list)
        with self._lock:
            if cause is not None and self._error is None:
                self._error = cause
            for stream, _ in self._streams.values():
                calls[stream.loop].append((stream.end, (error if cause is not None else None,)))
            for stream, _, accepted in self._pending.values():
                calls[stream.loop].append((settle, (accepted, None, error)))
            for answer in self._replies.values():
                calls[answer.get_loop()].append((settle, (answer, None, error)))
            self._streams.clear()
            self._pending.clear()
            self._replies.clear()
        for loop, batch in calls.items():
            notify(loop, _run_calls, batch)


def _run_calls(calls: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    for function, args in calls:
        function(*args)
