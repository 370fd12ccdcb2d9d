"""`Generation`: a request given up on while the engine is still taking it keeps what the engine produced."""

from __future__ import annotations

import asyncio
import contextlib

from moecloud.engine import CompletionOutput, RequestOutput, SamplingParams
from moecloud.serving.engine_client import RequestStream
from moecloud.serving.generation import Generation
from moecloud.serving.metrics import ServingMetrics


class SlowToAccept:
    """An engine client whose `generate` answers only when the test says so (as the engine-core process answers
    after a round trip), and whose engine has generated tokens by then."""

    def __init__(self) -> None:
        self.accept = asyncio.Event()
        self.streams: list[RequestStream] = []
        self.aborted: list[str] = []

    async def generate(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> RequestStream:
        await self.accept.wait()
        stream = RequestStream(request_id, asyncio.get_running_loop(), self._abort)
        self.streams.append(stream)
        return stream

    def _abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        for stream in self.streams:
            if stream.request_id == request_id:
                stream.end()


def _generated(request_id: str, tokens: int) -> RequestOutput:
    return RequestOutput(request_id, None, [1, 2, 3], [CompletionOutput(0, "x" * tokens, list(range(tokens)))],
                         finished=False)


async def _open_then(give_up: str) -> tuple[dict[str, object], SlowToAccept]:
    client = SlowToAccept()
    generation = Generation(client, ServingMetrics(), "cmpl-test")  # type: ignore[arg-type]
    opening = asyncio.create_task(generation.open([[1, 2, 3]], SamplingParams(max_tokens=50)))
    await asyncio.sleep(0)  # open() now waits for the engine to take the prompt
    if give_up == "client hung up":
        opening.cancel()
    usage = asyncio.create_task(generation.final_usage())
    if give_up == "gateway asked for the usage":
        generation.abort()
    await asyncio.sleep(0)
    client.accept.set()
    await asyncio.sleep(0)
    client.streams[0].push(_generated("cmpl-test", 2))  # what the engine produced before it saw the abort
    with contextlib.suppress(asyncio.CancelledError):  # the hung-up client's handler ends cancelled
        await opening
    return await asyncio.wait_for(usage, 5), client


def test_a_client_hanging_up_while_the_engine_takes_its_request_is_billed_what_was_generated() -> None:
    usage, client = asyncio.run(_open_then("client hung up"))
    assert client.aborted == ["cmpl-test"]
    assert usage["completion_tokens"] == 2 and usage["prompt_tokens"] == 3


def test_a_usage_report_asked_while_the_engine_takes_the_request_waits_for_it() -> None:
    usage, client = asyncio.run(_open_then("gateway asked for the usage"))
    assert client.aborted == ["cmpl-test"]
    assert usage["completion_tokens"] == 2
