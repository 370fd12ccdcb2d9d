"""The engine-core process: outputs cross as deltas, one batch per step; errors travel back per request; a core
that dies ends every stream with EngineDead and its worker exits; a core outlives neither a stop nor its worker."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing import Pipe
from pathlib import Path

import httpx
import pytest
from polling import read_stream, wait_for, wait_healthy

from moecloud.config import EngineSettings, ServingSettings, load_settings
from moecloud.engine import (
    CompletionOutput,
    EngineConfig,
    LLMEngine,
    RequestOutput,
    SamplingParams,
    StructuredOutput,
)
from moecloud.engine.outputs import Logprob
from moecloud.engine.sampling_params import InvalidParameter
from moecloud.serving.engine_client import ThreadEngineClient
from moecloud.serving.engine_core import DeltaEncoder, EngineCore, OutputBuilder
from moecloud.serving.engine_process import ProcessEngineClient
from moecloud.serving.errors import EngineDead, QueueFull, RequestFailed
from moecloud.serving.worker import ENGINE_FAILED_EXIT_STATUS
from moecloud.web.errors import APIError
from moecloud.web.net import free_port

MODEL = "tiny"
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
ENGINE = {"dtype": "float32", "device": "cpu", "compile": False, "max_model_len": 512, "kv_cache_tokens": 16384}


def process_client(checkpoint: Path, engine: dict[str, object] | None = None,
                   on_fatal: Callable[[BaseException], None] | None = None, **serving: object) -> ProcessEngineClient:
    settings = load_settings(engine=EngineSettings(**{**ENGINE, **(engine or {})}),
                             serving=ServingSettings(**{"fault_injection": True, **serving}))
    client = ProcessEngineClient(checkpoint, settings, on_fatal=on_fatal)
    client.start()
    return client


@pytest.fixture(scope="module")
def core(tiny_checkpoint: Path) -> Iterator[ProcessEngineClient]:
    client = process_client(tiny_checkpoint)
    yield client
    client.shutdown()


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listed:
            found += [int(child) for child in listed.read().split()]
    return found


# ---- the wire: deltas and batches ---------------------------------------------------------------------------

def through_the_pipe(encoder: DeltaEncoder, builders: dict[str, OutputBuilder], output: RequestOutput
                     ) -> RequestOutput:
    delta = pickle.loads(pickle.dumps(encoder.encode(output)))
    return builders[output.request_id].apply(delta)


def without_metrics(output: RequestOutput) -> RequestOutput:
    return replace(output, metrics=None)


def test_deltas_rebuild_every_cumulative_output(tiny_checkpoint: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(tiny_checkpoint), compile=False, dtype="float32", device="cpu"))
    requests = {
        "text": ("a prompt given as text", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)),
        "ids": ([5, 6, 7, 8], SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=9, logprobs=2,
                                             prompt_logprobs=1, ignore_eos=True)),
        "stop": ("stop somewhere", SamplingParams(temperature=1.0, seed=1, max_tokens=30, stop=["e", "a"])),
    }
    encoder, builders = DeltaEncoder(), {}
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
        builders[request_id] = OutputBuilder(request_id, prompt, params)
    finished = 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            rebuilt = through_the_pipe(encoder, builders, output)
            assert without_metrics(rebuilt) == without_metrics(output)
            assert rebuilt.metrics is not None and rebuilt.metrics.arrival_time == output.metrics.arrival_time
            if output.finished:
                assert rebuilt.metrics == output.metrics
                finished += 1
    assert finished == len(requests)


def test_a_text_that_shrinks_is_rebuilt() -> None:
    params = SamplingParams(logprobs=1)
    encoder, builders = DeltaEncoder(), {"r": OutputBuilder("r", [1, 2], params)}
    texts = ["ab", "abcd", "abX", "abXYZ"]
    for step, text in enumerate(texts):
        ids = list(range(step + 1))
        logprobs = [{i: Logprob(-0.5, 1, str(i))} for i in ids]
        output = RequestOutput("r", None, [1, 2], [CompletionOutput(0, text, ids, logprobs)],
                               finished=step == len(texts) - 1)
        assert through_the_pipe(encoder, builders, output) == output


def test_the_core_sends_one_batch_per_step_with_every_request_it_advanced(tiny_checkpoint: Path) -> None:
    engine = LLMEngine(
        EngineConfig(model=str(tiny_checkpoint), compile=False, dtype="float32", device="cpu", max_num_seqs=8)
    )
    commands_in, commands_out = Pipe(duplex=False)
    batches_in, batches_out = Pipe(duplex=False)
    core = EngineCore(engine, commands_in, batches_out, max_waiting=16)
    tokens, prompts = 8, ["one", "two", "three", "four"]
    for i, prompt in enumerate(prompts):  # queued before the loop starts: its first step takes them all
        commands_out.send(("add", f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=tokens,
                                                                  ignore_eos=True)))
    loop = threading.Thread(target=core.run)
    loop.start()
    batches, finished = [], set()
    while len(finished) < len(prompts):
        kind, added, deltas, ended, replies = batches_in.recv()
        assert kind == "batch" and not ended and not replies
        batches.append((added, deltas))
        finished |= {delta[0] for delta in deltas if delta[1]}
    commands_out.send(("stop",))
    loop.join(timeout=60)
    assert not loop.is_alive()
    assert [request_id for request_id, error in batches[0][0]] == [f"r{i}" for i in range(len(prompts))]
    stepped = [deltas for _, deltas in batches if deltas]
    assert len(stepped) == tokens  # one batch per step, not one message per request and token
    for deltas in stepped:
        assert sorted(delta[0] for delta in deltas) == [f"r{i}" for i in range(len(prompts))]
        assert all(len(delta[7][0][0]) == 1 for delta in deltas)  # each carries its one new token only
    assert core.batches_sent == len(batches)


# ---- the process client, end to end -------------------------------------------------------------------------

def test_streams_and_stats_come_from_the_core(core: ProcessEngineClient, tiny_checkpoint: Path) -> None:
    async def main() -> None:
        streams = [await core.generate(f"s{i}", "hello", SamplingParams(temperature=0, max_tokens=6,
                                                                        ignore_eos=True)) for i in range(3)]
        finals = await asyncio.gather(*(last(stream) for stream in streams))
        assert all(final.finished and len(final.outputs[0].token_ids) == 6 for final in finals)
        assert len({tuple(final.outputs[0].token_ids) for final in finals}) == 1  # greedy, same prompt
        stats = await core.stats()
        assert stats.generation_tokens >= 18 and stats.num_running == 0

    asyncio.run(main())
    assert core.healthy() and core.num_active() == 0
    assert core.model_name == tiny_checkpoint.resolve().name and core.max_model_len == 512


async def last(stream: AsyncIterator[RequestOutput]) -> RequestOutput:
    return [output async for output in stream][-1]


def refusal(client: ThreadEngineClient | ProcessEngineClient, prompt: str | list[int], params: SamplingParams
            ) -> tuple[type, str, str | None]:
    async def main() -> tuple[type, str, str | None]:
        with pytest.raises(APIError) as refused:
            await client.generate("refused", prompt, params)
        return type(refused.value), refused.value.message, refused.value.param

    return asyncio.run(main())


@pytest.mark.parametrize(("prompt", "params"), [
    ([10**6], SamplingParams(max_tokens=2)),  # a token id outside the vocabulary
    ("x", SamplingParams(max_tokens=2, stop_token_ids=[-3])),
    (list(range(1, 600)), SamplingParams(max_tokens=2)),  # longer than max_model_len
    ([], SamplingParams(max_tokens=2)),
])
def test_refusals_come_back_per_request_as_the_thread_client_words_them(core: ProcessEngineClient,
                                                                        tiny_checkpoint: Path,
                                                                        prompt: str | list[int],
                                                                        params: SamplingParams) -> None:
    engine = LLMEngine(EngineConfig(model=str(tiny_checkpoint), **ENGINE))  # type: ignore[arg-type]
    thread = ThreadEngineClient(engine, 16)
    thread.start()
    try:
        assert refusal(core, prompt, params) == refusal(thread, prompt, params)
    finally:
        thread.shutdown()
    assert core.healthy()


def test_queue_full_and_failed_requests_fail_alone(tiny_checkpoint: Path) -> None:
    client = process_client(tiny_checkpoint, engine={"max_num_seqs": 1, "max_waiting_requests": 1})
    assert client.faults is not None
    client.faults.arm("bad", "sample")

    async def main() -> None:
        running = await client.generate("r0", "hello", LONG)
        await anext(running)  # scheduled: the one batch slot is taken
        waiting = await client.generate("r1", "hello", LONG)  # waits: the queue is now full
        with pytest.raises(QueueFull):
            await client.generate("r2", "hello", LONG)
        running.close()
        waiting.close()
        bad = await client.generate("bad", "hello", LONG)
        with pytest.raises(RequestFailed, match="InjectedFault while sampling"):
            async for _ in bad:
                pass
        good = await client.generate("good", "hello", SamplingParams(max_tokens=3, ignore_eos=True))
        assert [output async for output in good][-1].finished
        while client.num_active():
            await asyncio.sleep(0.01)

    try:
        asyncio.run(main())
        assert client.healthy() and client.num_aborted() == 2
    finally:
        client.shutdown()


def test_a_bad_schema_is_refused_by_the_cores_compiler(core: ProcessEngineClient) -> None:
    async def main() -> None:
        await core.compile_structured(StructuredOutput.json_schema({"type": "object"}))
        with pytest.raises(InvalidParameter):
            await core.compile_structured(StructuredOutput.regex("(unclosed"))

    asyncio.run(main())
    assert core.healthy()


def test_a_closed_stream_is_aborted_in_the_core(core: ProcessEngineClient) -> None:
    aborted = core.num_aborted()

    async def main() -> None:
        stream = await core.generate("closed", "hello", LONG)
        assert not (await anext(stream)).finished
        stream.close()
        while core.num_active():
            await asyncio.sleep(0.01)
        assert (await core.stats()).num_running == 0

    asyncio.run(main())
    assert core.num_aborted() == aborted + 1


def test_a_fatal_fault_ends_every_stream_and_calls_on_fatal(tiny_checkpoint: Path) -> None:
    failures: list[BaseException] = []
    client = process_client(tiny_checkpoint, on_fatal=failures.append)
    assert client.faults is not None
    client.faults.arm("doomed", "fatal")

    async def main() -> None:
        with pytest.raises(EngineDead, match="fatal"):
            async for _ in await client.generate("doomed", "hello", LONG):
                pass
        with pytest.raises(EngineDead):
            await client.generate("later", "hello", LONG)
        with pytest.raises(EngineDead):
            await client.stats()

    try:
        asyncio.run(main())
        wait_for(lambda: bool(failures), 30)
        assert len(failures) == 1 and "fatal" in str(failures[0]) and not client.healthy()
    finally:
        client.shutdown()


def test_a_killed_core_ends_every_stream_with_engine_dead(tiny_checkpoint: Path) -> None:
    failures: list[BaseException] = []
    client = process_client(tiny_checkpoint, on_fatal=failures.append)

    async def main() -> None:
        streams = [await client.generate(f"k{i}", "hello", LONG) for i in range(2)]
        for stream in streams:
            await anext(stream)
        assert client.core_pid is not None
        os.kill(client.core_pid, signal.SIGKILL)
        for stream in streams:
            with pytest.raises(EngineDead, match="exited"):
                async for _ in stream:
                    pass
        with pytest.raises(EngineDead):
            await client.generate("after", "hello", LONG)

    try:
        asyncio.run(main())
        wait_for(lambda: bool(failures), 30)
        assert not client.healthy() and "status -9" in str(failures[0])
    finally:
        client.shutdown()


def test_a_stopped_core_is_not_healthy_until_it_steps_again(tiny_checkpoint: Path) -> None:
    client = process_client(tiny_checkpoint, health_stall_seconds=0.3)
    assert client.core_pid is not None

    async def main() -> None:
        stream = await client.generate("stuck", "hi", SamplingParams(temperature=0, max_tokens=480,
                                                                     ignore_eos=True))
        await anext(stream)
        os.kill(client.core_pid, signal.SIGSTOP)  # frozen mid-generation: a step that never ends
        try:
            while client.healthy():
                await asyncio.sleep(0.02)
        finally:
            os.kill(client.core_pid, signal.SIGCONT)
        assert [output async for output in stream][-1].finished
        assert client.healthy()

    try:
        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        client.shutdown()
    assert gone(client.core_pid)


# ---- a worker process and its core --------------------------------------------------------------------------

@contextmanager
def worker_process(checkpoint: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """A `moecloud worker` process, healthy: (the process, its port, its core's pid); killed at the end."""
    port = free_port()
    environment = {**os.environ, "MOECLOUD_ENGINE__DEVICE": "cpu", "MOECLOUD_ENGINE__COMPILE": "false",
                   "MOECLOUD_ENGINE__MAX_MODEL_LEN": "2048",
                   "MOECLOUD_SERVING__SHUTDOWN_GRACE_SECONDS": "1", **env}
    process = subprocess.Popen([sys.executable, "-m", "moecloud.cli", "worker", "--model", str(checkpoint),
                                "--port", str(port), "--served-model-name", MODEL], env=environment)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", 120, process)
        [core_pid] = children(process.pid)
        yield process, port, core_pid
    finally:
        if process.poll() is None:
            process.kill()


def long_stream(port: int) -> tuple[threading.Thread, list[str]]:
    lines: list[str] = []
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    reader = threading.Thread(target=read_stream, args=(f"http://127.0.0.1:{port}/v1/completions", body, lines))
    reader.start()
    wait_for(lambda: len(lines) > 0, 60)
    return reader, lines


def test_a_worker_whose_core_is_killed_ends_its_streams_and_exits(tiny_checkpoint: Path) -> None:
    with worker_process(tiny_checkpoint, MOECLOUD_SERVING__ENGINE_FAILURE_GRACE_SECONDS="2") as (process, port,
                                                                                                 core_pid):
        reader, lines = long_stream(port)
        os.kill(core_pid, signal.SIGKILL)
        assert process.wait(timeout=60) == ENGINE_FAILED_EXIT_STATUS
        reader.join(timeout=30)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "engine_dead"


def test_sigterm_drains_then_stops_the_core(tiny_checkpoint: Path) -> None:
    with worker_process(tiny_checkpoint) as (process, port, core_pid):
        reader, lines = long_stream(port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        reader.join(timeout=30)
        wait_for(lambda: gone(core_pid), 30)
    assert json.loads(lines[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "abort"


def test_no_core_outlives_a_killed_worker(tiny_checkpoint: Path) -> None:
    with worker_process(tiny_checkpoint) as (process, port, core_pid):
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        process.kill()
        process.wait(timeout=30)
        wait_for(lambda: gone(core_pid), 30)


def test_the_thread_client_stays_available(start_worker) -> None:
    with start_worker(serving={"engine_process": False}) as worker:
        assert isinstance(worker.client, ThreadEngineClient)
        reply = httpx.post(worker.base_url + "/v1/completions", json={"model": MODEL, "prompt": "hi",
                                                                      "max_tokens": 3}, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3


def test_fault_injection_reaches_the_core(start_worker) -> None:
    with start_worker(serving={"fault_injection": True}) as worker:
        assert isinstance(worker.client, ProcessEngineClient) and worker.client.faults is not None
        with pytest.raises(ValueError, match="fault stage"):
            worker.client.faults.arm("x", "meteor")
