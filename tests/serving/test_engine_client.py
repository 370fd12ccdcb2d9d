"""The in-process engine client: one thread owns the engine; failures and aborts reach every caller."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from moecloud.engine import EngineConfig, LLMEngine, SamplingParams
from moecloud.engine.failures import FaultInjector
from moecloud.serving.engine_client import ThreadEngineClient
from moecloud.serving.errors import EngineDead, QueueFull, RequestFailed

LONG = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)


def make_client(checkpoint: Path, max_waiting: int = 16, **options: object) -> tuple[ThreadEngineClient, LLMEngine]:
    faults = FaultInjector()
    engine = LLMEngine(EngineConfig(model=str(checkpoint), dtype="float32", compile=False, device="cpu",
                                    max_num_seqs=1), faults=faults)
    client = ThreadEngineClient(engine, max_waiting, **options)  # type: ignore[arg-type]
    client.start()
    return client, engine


def test_close_aborts_in_engine(tiny_checkpoint: Path) -> None:
    client, engine = make_client(tiny_checkpoint)

    async def main() -> None:
        stream = await client.generate("r1", "hello", LONG)
        first = await anext(stream)
        assert not first.finished
        stream.close()
        while client.num_active():
            await asyncio.sleep(0.01)
        assert (await client.stats()).num_running == 0

    try:
        asyncio.run(main())
        assert client.num_aborted() == 1 and not engine.has_unfinished_requests()
    finally:
        client.shutdown()


def test_queue_full_is_refused(tiny_checkpoint: Path) -> None:
    client, _ = make_client(tiny_checkpoint, max_waiting=1)

    async def main() -> None:
        running = await client.generate("r0", "hello", LONG)
        await anext(running)  # scheduled: the one batch slot is taken
        streams = [running, await client.generate("r1", "hello", LONG)]  # waits: the queue is now full
        with pytest.raises(QueueFull):
            await client.generate("r9", "hello", LONG)
        for stream in streams:
            stream.close()

    try:
        asyncio.run(main())
    finally:
        client.shutdown()


def test_engine_failure_ends_streams_and_refuses_new_work(tiny_checkpoint: Path) -> None:
    client, engine = make_client(tiny_checkpoint)

    def broken_step() -> list:
        raise RuntimeError("device lost")

    async def main() -> None:
        stream = await client.generate("r1", "hello", LONG)
        with pytest.raises(EngineDead):
            async for _ in stream:
                pass
        assert not client.healthy()
        with pytest.raises(EngineDead):
            await client.generate("r2", "hello", LONG)
        with pytest.raises(EngineDead):
            await client.stats()

    engine.step = broken_step  # type: ignore[method-assign]
    try:
        asyncio.run(main())
    finally:
        client.shutdown()


def test_a_failed_request_ends_its_stream_alone(tiny_checkpoint: Path) -> None:
    client, _ = make_client(tiny_checkpoint)
    assert client.faults is not None
    client.faults.arm("bad", "sample")

    async def main() -> None:
        bad = await client.generate("bad", "hello", LONG)
        with pytest.raises(RequestFailed, match="InjectedFault while sampling"):
            async for _ in bad:
                pass
        good = await client.generate("good", "hello", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
        outputs = [output async for output in good]
        assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 3
        while client.num_active():  # the engine thread counts a stream off just after handing it its last output
            await asyncio.sleep(0.01)
        assert client.healthy()

    try:
        asyncio.run(main())
    finally:
        client.shutdown()


def test_a_fatal_failure_calls_on_fatal_after_ending_the_streams(tiny_checkpoint: Path) -> None:
    failures: list[BaseException] = []
    client, _ = make_client(tiny_checkpoint, on_fatal=failures.append)
    assert client.faults is not None
    client.faults.arm("doomed", "fatal")

    async def main() -> None:
        with pytest.raises(EngineDead):
            async for _ in await client.generate("doomed", "hello", LONG):
                pass

    try:
        asyncio.run(main())
        deadline = time.monotonic() + 10
        while not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(failures) == 1 and "fatal" in str(failures[0]) and not client.healthy()
    finally:
        client.shutdown()


def test_a_step_stuck_past_the_stall_limit_is_not_healthy(tiny_checkpoint: Path) -> None:
    stall = 0.3
    client, engine = make_client(tiny_checkpoint, stall_seconds=stall)
    release = threading.Event()
    step = engine.step

    def stuck_step() -> list:
        release.wait()
        return step()

    async def main() -> None:
        await asyncio.sleep(2 * stall)
        assert client.healthy()  # idle for longer than the limit: waiting is not being stuck
        engine.step = stuck_step  # type: ignore[method-assign]
        stream = await client.generate("r1", "hello", SamplingParams(max_tokens=2))
        started = time.monotonic()
        while client.healthy():
            assert time.monotonic() - started < 60, "a stuck step never failed the health check"
            await asyncio.sleep(0.02)
        assert time.monotonic() - started >= stall
        release.set()
        outputs = [output async for output in stream]
        assert outputs[-1].finished and client.healthy()

    try:
        asyncio.run(main())
    finally:
        release.set()
        client.shutdown()
