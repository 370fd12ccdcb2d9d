"""Long prompts through the real engine: the prefix cache at 18k tokens gives what a full recompute gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from moecloud.engine.engine import EngineConfig, LLMEngine
from moecloud.engine.outputs import RequestOutput
from moecloud.engine.sampling_params import SamplingParams

LONG = 18_000  # the prompt of the RecursionError: ~1,100 chained blocks
BLOCK = 16
PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)


def _prompt(n: int, salt: int = 0) -> list[int]:
    return [(i * 7919 + salt) % 500 + 2 for i in range(n)]  # ids 2..501 of the 512-token vocabulary: no EOS


def _engine(checkpoint: Path, caching: bool = True) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=str(checkpoint),
            dtype="float32",
            device="cpu",
            compile=False,
            kv_cache_tokens=3 * LONG,
            block_size=BLOCK,
            enable_prefix_caching=caching,
        )
    )


def _generate(engine: LLMEngine, request_id: str, prompt: list[int]) -> RequestOutput:
    engine.add_request(request_id, prompt, PARAMS)
    final = None
    while engine.has_unfinished_requests():
        final = next((o for o in engine.step() if o.finished), final)
    assert final is not None and final.request_id == request_id
    return final


def _assert_same_output(got: RequestOutput, want: RequestOutput) -> None:
    assert got.outputs[0].token_ids == want.outputs[0].token_ids
    for got_step, want_step in zip(got.outputs[0].logprobs, want.outputs[0].logprobs, strict=True):
        (token, logprob), = ((t, lp.logprob) for t, lp in want_step.items())
        assert got_step[token].logprob == pytest.approx(logprob, abs=1e-4)


@pytest.fixture(scope="module")
def engine(long_context_checkpoint: Path) -> LLMEngine:
    return _engine(long_context_checkpoint)


def test_the_same_18k_prompt_twice_is_served_from_the_cache_and_gives_the_same_tokens(engine: LLMEngine):
    prompt = _prompt(LONG)
    first = _generate(engine, "first", prompt)
    second = _generate(engine, "second", prompt)
    assert first.num_cached_tokens == 0  # the first run computes everything: it is the uncached reference
    assert second.num_cached_tokens == (LONG - 1) // BLOCK * BLOCK
    _assert_same_output(second, first)


def test_a_prompt_sharing_the_18k_prompts_prefix_hits_its_full_blocks_and_matches_a_recompute(
    engine: LLMEngine, long_context_checkpoint: Path
):
    # the 18k prompt of the test above: cached already when both run, so the suite pays for one long prefill
    long = _generate(engine, "long", _prompt(LONG))
    shared = 4_099
    branch = _prompt(LONG)[:shared] + _prompt(900, salt=1)
    cached = _generate(engine, "branch", branch)
    reference = _generate(_engine(long_context_checkpoint, caching=False), "branch", branch)
    assert cached.num_cached_tokens == shared // BLOCK * BLOCK and reference.num_cached_tokens == 0
    _assert_same_output(cached, reference)
    assert long.outputs[0].token_ids != cached.outputs[0].token_ids  # the tails differ, so do the tokens
