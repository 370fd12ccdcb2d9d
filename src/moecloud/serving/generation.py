"""One API request's engine requests (one per prompt): open them, merge their outputs, time them, end them.

Outputs stay cumulative here; `ChoiceCursor` turns them into the deltas a stream sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from moecloud.engine import CompletionOutput, RequestOutput, SamplingParams
from moecloud.serving.engine_client import EngineClient, RequestStream
from moecloud.serving.metrics import ServingMetrics
from moecloud.web.errors import ContextLengthExceeded


def resolve_max_tokens(requested: int | None, prompt_len: int, max_model_len: int, default: int) -> int:
    """The request's max_tokens, checked against the context; when absent, the default capped to what fits."""
    if prompt_len >= max_model_len:
        raise ContextLengthExceeded.for_request(prompt_len, max_model_len)
    if requested is None:
        return min(default, max_model_len - prompt_len)
    if prompt_len + requested > max_model_len:
        raise ContextLengthExceeded.for_request(prompt_len, max_model_len, requested)
    return requested


@dataclass
class ChoiceCursor:
    """How much of one choice has been sent: deltas are the cumulative output past these marks."""

    text_sent: int = 0
    tokens_sent: int = 0
    text_offset: int = 0  # legacy logprobs' running character offset
    started: bool = False
    finished: bool = False

    def advance(self, output: CompletionOutput) -> tuple[str, int, int]:
        """(new text, first new token, end token); keeps text back if the engine ever shortens it."""
        text = output.text[self.text_sent:] if len(output.text) >= self.text_sent else ""
        start, end = self.tokens_sent, len(output.token_ids)
        self.text_sent = max(self.text_sent, len(output.text))
        self.tokens_sent = max(self.tokens_sent, end)
        self.finished = output.finish_reason is not None
        return text, start, end


class Generation:
    """The engine requests behind one API request, opened together and aborted together."""

    def __init__(self, client: EngineClient, metrics: ServingMetrics, request_id: str) -> None:
        self.client = client
        self.metrics = metrics
        self.request_id = request_id
        self.arrival = time.monotonic()
        self.streams: list[RequestStream] = []
        self.final: list[RequestOutput] = []
        self._n = 1
        self._tasks: list[asyncio.Task[None]] = []
        self._final: asyncio.Future[dict[str, object]] | None = None
        self.on_final: Callable[[dict[str, object]], None] | None = None  # told the final usage, once
        self._opening = False  # inside open(): the engine is taking the prompts
        self._opened = asyncio.Event()  # open() has returned (or raised)
        self._abandoned = False  # aborted: nothing more is handed to the engine

    async def open(self, prompts: list[str | list[int]], params: SamplingParams) -> None:
        """Hand the prompts to the engine. A request given up on meanwhile (its client hung up, or the gateway
        asked for its final usage) keeps every stream the engine took, so what the engine produced before the
        abort is still counted: cancelled while the engine is taking a prompt, it waits for that answer first."""
        self._n = params.n
        self._opening = True
        try:
            for i, prompt in enumerate(prompts):
                if self._abandoned:
                    break
                request_id = self.request_id if len(prompts) == 1 else f"{self.request_id}-{i}"
                taking = asyncio.ensure_future(self.client.generate(request_id, prompt, params))
                try:
                    self.streams.append(await asyncio.shield(taking))
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        self.streams.append(await taking)
                    raise
        except BaseException:
            self.close()
            raise
        finally:
            self._opening = False
            self._opened.set()
        if self._abandoned:
            self.abort()

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, cumulative output) as they come; a stream the server aborted ends with "abort"."""
        merged: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()
        self.final = [_empty_output(s.request_id, self._n) for s in self.streams]

        async def pump(index: int, stream: RequestStream) -> None:
            try:
                async for output in stream:
                    merged.put_nowait((index, output))
                merged.put_nowait((index, None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises
                merged.put_nowait((index, exc))

        self._tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        open_streams, last_token_time, first = len(self.streams), None, True
        while open_streams:
            index, item = await merged.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                open_streams -= 1
                if self.streams[index].aborted:
                    self.final[index] = _aborted(self.final[index])
                    yield index, self.final[index]
                continue
            now = time.monotonic()
            if any(o.token_ids for o in item.outputs):
                if first:
                    self.metrics.ttft.observe(now - self.arrival)
                    first = False
                elif last_token_time is not None:
                    self.metrics.itl.observe(now - last_token_time)
                last_token_time = now
            self.final[index] = item
            yield index, item
        self._finalize()

    def usage(self) -> dict[str, object]:
        """The usage of the outputs read so far (what a response or its usage chunk reports)."""
        return _usage(self.final)

    async def final_usage(self) -> dict[str, object]:
        """The usage of everything the engine produced, once each of its requests has ended, finished or
        aborted: tokens generated after the last one read (a client that hung up) included."""
        return await asyncio.shield(self._finalize())

    def _finalize(self) -> asyncio.Future[dict[str, object]]:
        if self._final is None:
            self._final = asyncio.ensure_future(self._settle())
        return self._final

    async def _settle(self) -> dict[str, object]:
        if self._opening:  # the streams the engine is taking now count too
            await self._opened.wait()
        await asyncio.gather(*(stream.ended.wait() for stream in self.streams))
        produced = [stream.last or _empty_output(stream.request_id, self._n) for stream in self.streams]
        usage = _usage(produced)
        if self.streams:  # a request refused before the engine took it is not counted
            self._record(usage, produced)
        if self.on_final is not None:
            self.on_final(usage)
        return usage

    def _record(self, usage: dict[str, object], produced: list[RequestOutput]) -> None:
        """Counted once per request, aborted ones included."""
        self.metrics.e2e.observe(time.monotonic() - self.arrival)
        self.metrics.prompt_tokens.inc(usage["prompt_tokens"])  # type: ignore[arg-type]
        self.metrics.generation_tokens.inc(usage["completion_tokens"])  # type: ignore[arg-type]
        for output in produced:
            timing = output.metrics
            if timing is not None and timing.first_scheduled_time is not None:
                self.metrics.queue_time.observe(max(0.0, timing.first_scheduled_time - timing.arrival_time))

    async def collect(self) -> list[RequestOutput]:
        async for _ in self.outputs():
            pass
        return self.final

    def close(self) -> None:
        """Abort whatever has not finished (a client that went away, an error half-way)."""
        for task in self._tasks:
            task.cancel()
        self.abort()

    def abort(self) -> None:
        """Abort what the engine still runs, leaving a reader to see its outputs end (the gateway's report)."""
        self._abandoned = True
        for stream in self.streams:
            stream.close()
        self._finalize()


def _usage(outputs: list[RequestOutput]) -> dict[str, object]:
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    cached = sum(o.num_cached_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _empty_output(request_id: str, n: int) -> RequestOutput:
    return RequestOutput(request_id, None, [], [CompletionOutput(i, "", []) for i in range(n)], finished=False)


def _aborted(output: RequestOutput) -> RequestOutput:
    outputs = [o if o.finished else dataclasses.replace(o, finish_reason="abort") for o in output.outputs]
    return dataclasses.replace(output, outputs=outputs, finished=True)
