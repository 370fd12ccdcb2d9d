"""Sampling parameters, logprobs, stops and the offline API."""

from __future__ import annotations

import math

import pytest
import torch

from moecloud.engine import LLM, SamplingParams
from moecloud.engine.sampler import Sampler, SamplingRow


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(str(tiny_checkpoint), dtype="float32", compile=False)


def _row(**params):
    return SamplingRow(SamplingParams(**params), prompt_ids=[], output_ids=[], generator=None, block_eos=[])


def test_filters_restrict_the_candidates():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    sampler = Sampler(seed=0)

    def draws(**params):
        row = _row(**params)
        row.generator = torch.Generator().manual_seed(1)
        return {sampler(logits, [row])[0].token_id for _ in range(200)}

    assert draws(temperature=0) == {0}
    assert draws(temperature=1.0, top_k=2) == {0, 1}
    probs = logits.softmax(-1)[0]
    assert draws(temperature=1.0, top_p=float(probs[0] + probs[1] / 2)) == {0, 1}
    assert draws(temperature=1.0, min_p=float(probs[2] / probs[0]) - 1e-4) == {0, 1, 2}
    assert draws(temperature=5.0) == {0, 1, 2, 3, 4}


def test_penalties_change_logits_as_documented():
    sampler = Sampler()
    logits = torch.tensor([2.0, -2.0, 1.0])
    row = SamplingRow(
        SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25),
        prompt_ids=[0],
        output_ids=[1, 1],
        generator=None,
        block_eos=[],
    )
    sampler._penalize(logits, row)
    assert logits.tolist() == pytest.approx([1.0, -4.0 - 0.5 - 0.5, 1.0])


def test_seed_reproducible_and_temperature_varies(llm):
    params = SamplingParams(temperature=1.0, seed=123, max_tokens=12, ignore_eos=True)
    a = llm.generate("hello world", params)[0].outputs[0].token_ids
    assert llm.generate("hello world", params)[0].outputs[0].token_ids == a
    other = SamplingParams(temperature=1.0, seed=124, max_tokens=12, ignore_eos=True)
    assert llm.generate("hello world", other)[0].outputs[0].token_ids != a


def test_logprobs_are_the_models_distribution(llm):
    prompt = llm.tokenizer.encode("the model")
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=4, logprobs=3, ignore_eos=True))[0]
    completion = out.outputs[0]
    ids = prompt + completion.token_ids
    expected = llm.engine.compute_logits(ids).log_softmax(-1)
    for step, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs, strict=True)):
        row = expected[len(prompt) - 1 + step]
        assert entry[token].rank == 1  # greedy picks the most likely token
        assert entry[token].logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert len(entry) == 3
        assert [e.rank for e in entry.values()] == [1, 2, 3]
    assert completion.cumulative_logprob == pytest.approx(
        sum(e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs, strict=True))
    )


def test_prompt_logprobs_and_scoring_without_generation(llm):
    prompt = llm.tokenizer.encode("score every token of this prompt please")
    engine_chunks = LLM(llm.engine.config.model, dtype="float32", compile=False, max_num_batched_tokens=16)
    out = engine_chunks.generate(prompt, SamplingParams(max_tokens=0, prompt_logprobs=1))[0]
    assert out.outputs[0].token_ids == [] and out.outputs[0].finish_reason == "length"
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    expected = llm.engine.compute_logits(prompt).log_softmax(-1)
    for pos in range(1, len(prompt)):
        assert out.prompt_logprobs[pos][prompt[pos]].logprob == pytest.approx(
            float(expected[pos - 1, prompt[pos]]), abs=1e-4
        )
    total = sum(out.prompt_logprobs[p][prompt[p]].logprob for p in range(1, len(prompt)))
    assert math.isfinite(total) and total < 0


def test_stops_and_max_tokens(llm):
    base = llm.generate("hello", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 20
    stop_token = base.token_ids[5]
    by_id = llm.generate(
        "hello", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop_token_ids=[stop_token])
    )[0].outputs[0]
    first = base.token_ids.index(stop_token)
    assert by_id.token_ids == base.token_ids[: first + 1] and by_id.stop_reason == stop_token
    text = base.text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if stop.strip() and "\ufffd" not in stop:
        by_text = llm.generate("hello", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=[stop]))[
            0
        ].outputs[0]
        assert by_text.finish_reason == "stop" and by_text.stop_reason == stop
        assert by_text.text == text[: text.index(stop)]


def test_min_tokens_blocks_eos(llm):
    eos = llm.tokenizer.eos_token_ids[0]
    params = SamplingParams(temperature=0, max_tokens=6, min_tokens=6, stop_token_ids=[eos])
    out = llm.generate("hello", params)[0].outputs[0]
    assert len(out.token_ids) == 6 and eos not in out.token_ids


def test_chat_renders_template_and_generates(llm):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    rendered = llm.tokenizer.apply_chat_template(messages)
    assert rendered.startswith(llm.tokenizer.bos_token) and rendered.endswith("<｜Assistant｜>")
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0]
    assert out.prompt_token_ids == llm.tokenizer.encode(rendered, add_special_tokens=False)
    assert out.prompt_token_ids.count(llm.tokenizer.bos_token_id) == 1
    assert len(out.outputs[0].token_ids) == 5


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n must"),
        ({"logprobs": 50}, "logprobs"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_sampling_params_raise(params, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**params)


def test_bad_requests_raise(llm):
    from moecloud.engine import PromptTooLong

    with pytest.raises(ValueError, match="empty"):
        llm.engine.add_request("e", [], SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        llm.engine.add_request("v", [10**9], SamplingParams())
    with pytest.raises(PromptTooLong, match="2048"):
        llm.engine.add_request("long", [5] * 5000, SamplingParams())
    assert not llm.engine.has_unfinished_requests()
