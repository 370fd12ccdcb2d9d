"""One engine over several ranks (CPU, gloo): the same tokens and logprobs as one rank, whatever the batching;
prefix caching and stats across ranks; a rank that dies fails the engine; no rank outlives its engine."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from devices import DEVICES
from polling import wait_for
from processes import alive, descendants, is_rank

from moecloud import LLM
from moecloud.engine import SamplingParams
from moecloud.engine.failures import EngineFailed

TIMEOUT = 30.0  # parallel_timeout_seconds of these engines: start-up and any one collective
RAY_TIMEOUT = 240.0  # the Ray launcher's: its actors' start-up (a Ray worker process each) included
OPTIONS = {"compile": False, "dtype": "float32", "kv_cache_tokens": 4096, "max_model_len": 512,
           "max_num_batched_tokens": 32, "parallel_timeout_seconds": TIMEOUT}
GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
PROMPTS = [list(range(3, 43)), [5, 6, 7], list(range(100, 125)), [9] * 17]  # 40 tokens: chunked (budget 32)
LAYOUTS = [pytest.param((2, 1), id="tp2"), pytest.param((1, 2), id="ep2"), pytest.param((2, 2), id="tp2xep2")]


def rank_pids(llm: LLM) -> list[int]:
    ranks = llm.engine.ranks
    return [] if ranks is None else [p.pid for p in ranks.processes]


def closed(llm: LLM) -> None:
    pids = rank_pids(llm)
    llm.close()
    assert not [pid for pid in pids if alive(pid)], "a rank outlived its engine"


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint: Callable[..., Path]) -> Path:
    return make_checkpoint("v3")


@pytest.fixture(scope="module")
def single(checkpoint: Path) -> Iterator[LLM]:
    llm = LLM(checkpoint, device="cpu", **OPTIONS)
    yield llm
    llm.close()


@pytest.fixture(scope="module", params=LAYOUTS)
def parallel(request: pytest.FixtureRequest, checkpoint: Path) -> Iterator[LLM]:
    tp, ep = request.param
    llm = LLM(checkpoint, device="cpu", tensor_parallel_size=tp, expert_parallel_size=ep, **OPTIONS)
    yield llm
    closed(llm)


def tokens(outputs: list) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def test_greedy_generations_equal_one_rank_alone_and_in_a_batch(single: LLM, parallel: LLM) -> None:
    expected = tokens(single.generate(PROMPTS, GREEDY))
    assert tokens(parallel.generate(PROMPTS, GREEDY)) == expected
    assert [tokens(parallel.generate(p, GREEDY))[0] for p in PROMPTS] == expected


def test_prompt_and_sample_logprobs_equal_one_rank(single: LLM, parallel: LLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=3, logprobs=2, prompt_logprobs=2)
    expected, got = single.generate(PROMPTS[:2], params), parallel.generate(PROMPTS[:2], params)
    for want, have in zip(expected, got, strict=True):
        assert have.outputs[0].token_ids == want.outputs[0].token_ids
        for rows_want, rows_have in ((want.prompt_logprobs, have.prompt_logprobs),
                                     (want.outputs[0].logprobs, have.outputs[0].logprobs)):
            assert rows_have is not None and rows_want is not None and len(rows_have) == len(rows_want)
            for a, b in zip(rows_want, rows_have, strict=True):
                assert (a is None) == (b is None)
                if a is not None and b is not None:
                    assert a.keys() == b.keys()
                    assert [b[t].logprob for t in a] == pytest.approx([a[t].logprob for t in a], rel=1e-5)


def test_scoring_logits_equal_one_rank(single: LLM, parallel: LLM) -> None:
    ids = PROMPTS[0]
    torch.testing.assert_close(parallel.engine.compute_logits(ids), single.engine.compute_logits(ids),
                               rtol=1e-5, atol=1e-5)


def test_prefix_cache_hits_and_stats(parallel: LLM) -> None:
    prompt = list(range(200, 240))
    first = parallel.generate(prompt, GREEDY)[0]
    before = parallel.engine.stats().prefix_cache_hit_tokens
    second = parallel.generate(prompt, GREEDY)[0]
    stats = parallel.engine.stats()
    assert second.num_cached_tokens >= 32 and stats.prefix_cache_hit_tokens - before == second.num_cached_tokens
    assert second.outputs[0].token_ids == first.outputs[0].token_ids
    layout = parallel.engine.layout
    assert (stats.tensor_parallel_size, stats.expert_parallel_size) == (layout.tp, layout.ep)
    assert stats.comm_seconds > 0 and parallel.engine.comm_seconds == pytest.approx(stats.comm_seconds, abs=1.0)


def test_killed_rank_fails_the_engine_and_the_idle_engine_notices(checkpoint: Path) -> None:
    llm = LLM(checkpoint, device="cpu", tensor_parallel_size=2, **OPTIONS)
    try:
        llm.generate(PROMPTS[1], GREEDY)
        noticed = threading.Event()
        llm.engine.on_failure(lambda failure: noticed.set())
        began = time.monotonic()
        os.kill(rank_pids(llm)[0], signal.SIGKILL)
        assert noticed.wait(TIMEOUT)  # with no step running: the watch thread
        with pytest.raises(EngineFailed, match="rank 1"):
            llm.generate(PROMPTS[1], GREEDY)
        assert time.monotonic() - began < TIMEOUT
    finally:
        closed(llm)


def test_a_rank_that_dies_while_starting_fails_the_start_before_the_timeout(checkpoint: Path) -> None:
    killed: list[int] = []
    others = set(descendants(os.getpid()))  # the ranks of engines other tests share

    def kill_the_rank() -> None:
        deadline = time.monotonic() + TIMEOUT
        while not killed and time.monotonic() < deadline:
            for pid in set(filter(is_rank, descendants(os.getpid()))) - others:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_rank)
    killer.start()
    began = time.monotonic()
    try:
        with pytest.raises(EngineFailed, match="rank 1"):
            LLM(checkpoint, device="cpu", tensor_parallel_size=2, **OPTIONS)
    finally:
        killer.join()
    assert killed and time.monotonic() - began < TIMEOUT


def test_context_manager_stops_its_ranks(checkpoint: Path) -> None:
    with LLM(checkpoint, device="cpu", tensor_parallel_size=2, **OPTIONS) as llm:
        pids = rank_pids(llm)
        assert len(pids) == 1 and alive(pids[0])
    assert not alive(pids[0])


def test_ray_launcher_runs_ranks_as_actors(checkpoint: Path, single: LLM) -> None:
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    try:
        # a Ray worker imports torch before it answers: on a loaded 2-core machine that alone can take longer than
        # the other tests' start-up timeout, so this engine gets its own, generous one
        options = {**OPTIONS, "parallel_timeout_seconds": RAY_TIMEOUT}
        with LLM(checkpoint, device="cpu", tensor_parallel_size=2, parallel_launcher="ray", **options) as llm:
            assert tokens(llm.generate(PROMPTS, GREEDY)) == tokens(single.generate(PROMPTS, GREEDY))
            pid = rank_pids(llm)[0]
            assert pid != os.getpid() and alive(pid)
        wait_for(lambda: not alive(pid), TIMEOUT)  # the actor ends with the engine
    finally:
        if started:
            ray.shutdown()


@pytest.mark.parametrize("device", [p for p in DEVICES if p.id == "cuda"])
def test_nccl_greedy_generations_equal_one_rank(checkpoint: Path, device: str) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    options = {**OPTIONS, "device": device}
    with LLM(checkpoint, **options) as one, LLM(checkpoint, tensor_parallel_size=2, **options) as two:
        assert tokens(two.generate(PROMPTS, GREEDY)) == tokens(one.generate(PROMPTS, GREEDY))
