"""The engine-core process: the `LLMEngine` and its step loop, alone in a process of their own.

A worker's API process (HTTP, SSE framing, chat templates) and the engine's step loop are both Python; sharing
one interpreter they share its lock, and the engine waits for the event loop as much as the loop waits for the
engine. `ProcessEngineClient` (``engine_process.py``) therefore runs the engine here, in a child process, as
vLLM v1 runs its EngineCore, and talks to it over two one-way pipes (pickled messages):

* commands, API -> core: first ``(model, settings handed down, parent pid)``, then ``("add", request_id,
  prompt, params)``, ``("abort", request_id)``, ``("abort_all",)``, ``("stats", token)``, ``("compile", token,
  structured)``, ``("arm", request_id, stage)``, ``("stop",)``;
* batches, core -> API: first ``("ready", info)`` (or ``("failed", error)``), then one ``("batch", added, deltas,
  ended, replies)`` per loop turn: the adds it refused or took, each changed request's *delta* (the tokens, text
  and logprobs new since the last batch: `DeltaEncoder`), the requests it aborted, and answers to stats and
  compile commands; a fatal engine error sends ``("fatal", repr)`` and ends the process.

In steady decoding there is one batch per engine step, holding every request that step advanced. The core ends
with its parent: it stops when the command pipe closes and when its parent process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import pickle
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from moecloud.config import Settings, settings_from_parent
from moecloud.engine import EngineConfig, EngineStats, LLMEngine, PromptTooLong, RequestOutput, SamplingParams
from moecloud.engine.failures import FaultInjector, is_fatal
from moecloud.engine.outputs import CompletionOutput, PositionLogprobs, RequestMetrics
from moecloud.engine.processes import exit_with_parent, python_call_command
from moecloud.engine.sampling_params import InvalidParameter
from moecloud.logs import configure_logging
from moecloud.serving.errors import QueueFull, RequestFailed
from moecloud.web.errors import APIError, ContextLengthExceeded, InvalidRequest

log = logging.getLogger(__name__)

# one request's change in a batch: (request_id, finished, error, num_cached_tokens, prompt_token_ids or None,
# new prompt logprobs or None, metrics or None, one SampleDelta per sample)
RequestDelta = tuple[str, bool, str | None, int, list[int] | None, list[PositionLogprobs | None] | None,
                     RequestMetrics | None, list["SampleDelta"]]
# (new token ids, characters of the text sent before that are kept, text appended, new logprobs or None,
#  cumulative logprob, finish reason, stop reason)
SampleDelta = tuple[list[int], int, str, list[PositionLogprobs] | None, float, str | None, str | int | None]
PackedError = tuple[Any, ...]


def build_engine(model: str | Path, settings: Settings) -> LLMEngine:
    faults = FaultInjector() if settings.serving.fault_injection else None
    return LLMEngine(EngineConfig(model=str(model), **settings.engine.model_dump()), faults=faults)


def engine_threads(settings: Settings) -> int:
    """The math threads of a serving engine: ``engine.server_threads``, else all cores but one.

    Math threads on every core starve the event loop that streams the results (measured with the engine in the
    API process: 0.29x of offline throughput with 2 threads on 2 cores, 0.64x with 1; with the engine in its own
    process, 2 threads on 2 cores: 0.47x, 1 thread: 0.80x): leave it a core.
    """
    return settings.engine.server_threads or max(1, (os.cpu_count() or 2) - 1)


def set_engine_threads(settings: Settings) -> None:
    torch.set_num_threads(engine_threads(settings))


# ---- what both engine clients do to an engine ---------------------------------------------------------------

def add_request(engine: LLMEngine, request_id: str, prompt: str | list[int], params: SamplingParams,
                max_waiting: int) -> APIError | None:
    """Add a request to the engine, or the error that refuses it (and only it); raises what is fatal."""
    waiting = engine.num_waiting()
    if waiting >= max_waiting:
        return QueueFull(waiting)
    try:
        engine.add_request(request_id, prompt, params)
    except PromptTooLong as exc:
        return ContextLengthExceeded(str(exc), param="prompt")
    except ValueError as exc:
        return InvalidRequest(str(exc), param=getattr(exc, "param", None))
    except Exception as exc:  # add_request leaves no trace of a request it refused: only this one fails
        if is_fatal(exc):
            raise
        log.exception("adding request %s failed", request_id)
        return RequestFailed(f"{type(exc).__name__} while adding it")
    return None


def read_stats(engine: LLMEngine) -> EngineStats | APIError:
    """The engine's stats, or the error reading them gave; raises what is fatal."""
    try:
        return engine.stats()
    except Exception as exc:
        if is_fatal(exc):
            raise
        log.exception("reading the engine's stats failed")
        return RequestFailed(f"{type(exc).__name__} reading stats")


# ---- errors across the pipe ---------------------------------------------------------------------------------

def pack_error(exc: BaseException) -> PackedError:
    """An exception as plain values: API errors keep their class, message and param (pickling an exception
    rebuilds it from ``args`` alone, which loses the param and garbles e.g. `QueueFull`'s message)."""
    if isinstance(exc, APIError):
        return ("api", type(exc), exc.message, exc.param)
    if isinstance(exc, InvalidParameter):
        return ("parameter", exc.param, str(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - an exception that does not survive pickling travels as its repr
        return ("other", RuntimeError(repr(exc)))
    return ("other", exc)


def unpack_error(packed: PackedError) -> BaseException:
    kind = packed[0]
    if kind == "api":
        cls, message, param = packed[1:]
        error = cls.__new__(cls)
        APIError.__init__(error, message, param)
        return error
    if kind == "parameter":
        return InvalidParameter(packed[1], packed[2])
    return packed[1]


# ---- cumulative outputs as deltas ---------------------------------------------------------------------------

class DeltaEncoder:
    """Turns the engine's cumulative `RequestOutput`s into `RequestDelta`s: what changed since the last one."""

    def __init__(self) -> None:
        self._sent: dict[str, _Sent] = {}

    def encode(self, output: RequestOutput) -> RequestDelta:
        sent = self._sent.get(output.request_id)
        first = sent is None
        if sent is None:
            sent = self._sent[output.request_id] = _Sent(len(output.outputs))
        samples: list[SampleDelta] = []
        for mark, sample in zip(sent.samples, output.outputs, strict=True):
            text, logprobs = sample.text, sample.logprobs
            keep = len(mark.text) if text.startswith(mark.text) else len(os.path.commonprefix([text, mark.text]))
            samples.append((sample.token_ids[mark.tokens:], keep, text[keep:],
                            None if logprobs is None else logprobs[mark.logprobs:], sample.cumulative_logprob,
                            sample.finish_reason, sample.stop_reason))
            mark.tokens, mark.text = len(sample.token_ids), text
            mark.logprobs = len(logprobs) if logprobs is not None else 0
        prompt_logprobs = output.prompt_logprobs
        new_prompt_logprobs = None if prompt_logprobs is None else prompt_logprobs[sent.prompt_logprobs:]
        sent.prompt_logprobs = len(prompt_logprobs) if prompt_logprobs is not None else 0
        if output.finished:
            del self._sent[output.request_id]
        prompt_ids = output.prompt_token_ids if first and output.prompt is not None else None
        metrics = output.metrics if first or output.finished else None
        return (output.request_id, output.finished, output.error, output.num_cached_tokens, prompt_ids,
                new_prompt_logprobs, metrics, samples)

    def forget(self, request_id: str) -> None:
        self._sent.pop(request_id, None)


class _SampleSent:
    __slots__ = ("tokens", "text", "logprobs")

    def __init__(self) -> None:
        self.tokens, self.text, self.logprobs = 0, "", 0


class _Sent:
    __slots__ = ("samples", "prompt_logprobs")

    def __init__(self, n: int) -> None:
        self.samples = [_SampleSent() for _ in range(n)]
        self.prompt_logprobs = 0


class OutputBuilder:
    """The API side of `DeltaEncoder`: one request's deltas back into cumulative `RequestOutput`s."""

    def __init__(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> None:
        self.request_id = request_id
        self.prompt = prompt if isinstance(prompt, str) else None
        self.prompt_ids: list[int] = [] if isinstance(prompt, str) else list(prompt)
        self.metrics: RequestMetrics | None = None
        self.prompt_logprobs: list[PositionLogprobs | None] | None = None
        self.samples = [_BuiltSample() for _ in range(params.n)]

    def apply(self, delta: RequestDelta) -> RequestOutput:
        _, finished, error, num_cached, prompt_ids, new_prompt_logprobs, metrics, samples = delta
        if prompt_ids is not None:
            self.prompt_ids = prompt_ids
        if metrics is not None:
            self.metrics = metrics
        if new_prompt_logprobs is not None:
            self.prompt_logprobs = (self.prompt_logprobs or []) + new_prompt_logprobs
        outputs = []
        for index, (built, sample) in enumerate(zip(self.samples, samples, strict=True)):
            new_ids, keep, text, new_logprobs, cumulative, finish_reason, stop_reason = sample
            built.token_ids += new_ids
            built.text = built.text[:keep] + text
            if new_logprobs is not None:
                built.logprobs = (built.logprobs or []) + new_logprobs
            outputs.append(CompletionOutput(index, built.text, list(built.token_ids),
                                            None if built.logprobs is None else list(built.logprobs),
                                            cumulative, finish_reason, stop_reason))
        return RequestOutput(self.request_id, self.prompt, self.prompt_ids, outputs, finished, num_cached,
                             None if self.prompt_logprobs is None else list(self.prompt_logprobs),
                             self.metrics, error)


class _BuiltSample:
    __slots__ = ("token_ids", "text", "logprobs")

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.text = ""
        self.logprobs: list[PositionLogprobs] | None = None


# ---- the core's loop ----------------------------------------------------------------------------------------

class EngineCore:
    """Serves one engine over a command pipe and a batch pipe until told to stop or the parent goes away.

    ``busy_since`` (a `BusyClock` shared with the parent) holds the `time.monotonic()` at which the step running
    now began, 0 while the loop waits for work: the parent's stall detection reads it.
    """

    def __init__(self, engine: LLMEngine, commands: Connection, batches: Connection, max_waiting: int,
                 busy_since: BusyClock | None = None) -> None:
        self.engine = engine
        self._commands = commands
        self._batches = batches
        self._max_waiting = max_waiting
        self._busy_since = busy_since
        self._send_lock = threading.Lock()  # the loop and the compile thread both send
        self._encoder = DeltaEncoder()
        self._live: set[str] = set()
        self._added: list[tuple[str, PackedError | None]] = []
        self._ended: list[tuple[str, PackedError | None]] = []
        self._replies: list[tuple[int, Any, PackedError | None]] = []
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix="structured-compile")
        self.batches_sent = 0
        self._handlers: dict[str, Callable[..., None]] = {
            "add": self._add, "abort": self._abort, "abort_all": self._abort_all, "stats": self._stats,
            "compile": self._start_compile, "arm": self._arm}

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._batches.send(message)

    def run(self) -> None:
        """The loop; returns when asked to stop or when the command pipe closes, raises on a fatal error."""
        try:
            while True:
                idle = not self.engine.has_unfinished_requests()
                if idle:
                    self._set_busy(0.0)
                if not self._drain_commands(block=idle):
                    return
                self._flush()
                if self.engine.has_unfinished_requests():
                    self._set_busy(time.monotonic())
                    self._step()
        finally:
            self._compiler.shutdown(wait=False, cancel_futures=True)

    def _set_busy(self, value: float) -> None:
        if self._busy_since is not None:
            self._busy_since.value = value

    def _step(self) -> None:
        deltas: list[RequestDelta] = []
        for output in self.engine.step():
            if output.request_id not in self._live:
                continue
            deltas.append(self._encoder.encode(output))
            if output.finished:
                self._live.discard(output.request_id)
        self._flush(deltas)

    def _flush(self, deltas: list[RequestDelta] | None = None) -> None:
        """One batch with everything that happened since the last one (nothing: no batch)."""
        if not (deltas or self._added or self._ended or self._replies):
            return
        added, ended, replies = self._added, self._ended, self._replies
        self._added, self._ended, self._replies = [], [], []
        self.send(("batch", added, deltas or [], ended, replies))
        self.batches_sent += 1

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued commands (waiting for one if ``block``); False once asked to stop or orphaned."""
        while block or self._commands.poll():
            block = False
            try:
                command = self._commands.recv()
            except (EOFError, OSError):
                log.warning("the engine core's parent closed its pipe: stopping")
                return False
            if command[0] == "stop":
                return False
            self._handlers[command[0]](*command[1:])
        return True

    def _abort_all(self) -> None:
        for request_id in list(self._live):
            self._abort(request_id)

    def _stats(self, token: int) -> None:
        stats = read_stats(self.engine)
        failed = isinstance(stats, APIError)
        self._replies.append((token, None if failed else stats, pack_error(stats) if failed else None))

    def _start_compile(self, token: int, structured: Any) -> None:
        self._compiler.submit(self._compile, token, structured)

    def _arm(self, request_id: str, stage: str) -> None:
        if self.engine.faults is not None:
            self.engine.faults.arm(request_id, stage)

    def _add(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> None:
        error = add_request(self.engine, request_id, prompt, params, self._max_waiting)
        if error is None:
            self._live.add(request_id)
        self._added.append((request_id, None if error is None else pack_error(error)))

    def _abort(self, request_id: str) -> None:
        if request_id in self._live:
            self.engine.abort(request_id)
            self._live.discard(request_id)
            self._encoder.forget(request_id)
            self._ended.append((request_id, None))

    def _compile(self, token: int, structured: Any) -> None:
        """On the compile thread: a large grammar must not stall the step loop."""
        try:
            self.engine.structured.compile(structured)
            reply: tuple[int, Any, PackedError | None] = (token, None, None)
        except Exception as exc:  # noqa: BLE001 - the caller re-raises it
            reply = (token, None, pack_error(exc))
        _send_quietly(self.send, ("batch", [], [], [], [reply]))  # failing: the parent is gone, the loop notices


class BusyClock:
    """When the step running now began (`time.monotonic()`; 0: waiting for work), in 8 bytes of memory the API
    process and the core share (a memfd both map): the core writes it each step, the API's stall check reads it."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            memfd = getattr(os, "memfd_create", None)
            if memfd is not None:
                fd = memfd("moecloud-engine-busy")
            else:  # no memfd (not Linux): an unlinked temporary file
                with tempfile.TemporaryFile() as backing:
                    fd = os.dup(backing.fileno())
            os.ftruncate(fd, 8)
        self.fd = fd
        self._memory = mmap.mmap(fd, 8)

    @property
    def value(self) -> float:
        return struct.unpack_from("d", self._memory)[0]

    @value.setter
    def value(self, value: float) -> None:
        struct.pack_into("d", self._memory, 0, value)


def core_command(commands_fd: int, batches_fd: int, clock_fd: int) -> list[str]:
    """The command line of a core process."""
    return python_call_command("moecloud.serving.engine_core", "engine_core_main", commands_fd, batches_fd, clock_fd)


def engine_core_main(commands_fd: int, batches_fd: int, clock_fd: int) -> None:
    """The core process's entry point: the parent sends ``(model, handed-down settings, its pid)`` first."""
    # Signals are the worker's: it drains on SIGTERM, then stops the core itself. A Ctrl-C sent to the whole
    # process group must not kill the engine under requests the worker is still finishing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    commands, batches = Connection(commands_fd, writable=False), Connection(batches_fd, readable=False)
    try:
        model, handed_down, parent = commands.recv()
    except EOFError:
        os._exit(0)
    exit_with_parent(parent)
    settings = settings_from_parent(handed_down)
    configure_logging(settings.log)
    try:
        set_engine_threads(settings)
        engine = build_engine(model, settings)
        engine.warm_up()  # with engine.compile: compile before the port opens, not in the first request
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        log.exception("the engine core could not start")
        _send_quietly(batches.send, ("failed", pack_error(exc)))
        os._exit(1)
    info = {"model_name": engine.model_name, "max_model_len": engine.max_model_len,
            "vocab_size": engine.model_config.vocab_size, "eos_token_ids": sorted(engine.eos_ids),
            "pid": os.getpid()}
    batches.send(("ready", info))
    core = EngineCore(engine, commands, batches, settings.engine.max_waiting_requests, BusyClock(clock_fd))
    engine.on_failure(lambda failure: _end_core(core, failure))  # a rank that dies while the loop waits for work
    try:
        core.run()
    except BaseException as exc:  # noqa: BLE001 - any engine failure ends the core; the parent ends every stream
        log.exception("engine loop failed")
        _end_core(core, exc)
    os._exit(0)  # no interpreter teardown: nothing is left to flush, and torch's can be slow


def _end_core(core: EngineCore, failure: BaseException) -> None:
    """The engine has failed: tell the parent (it ends every stream) and exit 1, from any thread."""
    _send_quietly(core.send, ("fatal", repr(failure)))
    os._exit(1)


def _send_quietly(send: Callable[[tuple[Any, ...]], None], message: tuple[Any, ...]) -> None:
    with contextlib.suppress(OSError):
        send(message)
