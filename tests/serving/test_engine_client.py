"""The in-process engine client: one thread owns the engine; failures and aborts reach every caller."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moecloud.engine import EngineConfig, LLMEngine, SamplingParams
from moecloud.serving.engine_client import ThreadEngineClient
from moecloud.serving.errors import EngineDead, QueueFull

LONG = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)


def make_client(checkpoint: Path, max_waiting: int = 16) -> tuple[ThreadEngineClient, LLMEngine]:
    engine = LLMEngine(EngineConfig(model=str(checkpoint), dtype="float32", device="cpu", max_num_seqs=1))
    client = ThreadEngineClient(engine, max_waiting)
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
