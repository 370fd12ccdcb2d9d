"""Legacy completions: string, batch and token-id prompts, echo, logprobs, prompt scoring, streaming."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import openai

from moecloud.engine import EngineConfig, LLMEngine
from moecloud.serving.worker import RunningWorker

MODEL = "tiny"  # the served name conftest gives the worker
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


def test_string_prompt(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7, **GREEDY)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 7


def test_batch_of_prompts_with_n_orders_choices(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt=["first prompt", "second one"], n=2, max_tokens=3,
                                      seed=3)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    single = client.completions.create(model=MODEL, prompt="first prompt", max_tokens=3)
    second = client.completions.create(model=MODEL, prompt="second one", max_tokens=3)
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens + second.usage.prompt_tokens
    assert reply.usage.completion_tokens == 12


def test_token_id_prompts_match_text_prompt(client: openai.OpenAI, worker: RunningWorker) -> None:
    ids = worker.client.tokenizer.encode("the quick brown fox")
    by_text = client.completions.create(model=MODEL, prompt="the quick brown fox", max_tokens=6, **GREEDY)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, **GREEDY)
    batch = client.completions.create(model=MODEL, prompt=[ids, ids[:3]], max_tokens=6, **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text == batch.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids) and len(batch.choices) == 2


def test_echo_prepends_the_prompt(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=MODEL, prompt="Echo me", max_tokens=4, **GREEDY)
    echoed = client.completions.create(model=MODEL, prompt="Echo me", max_tokens=4, echo=True, **GREEDY)
    assert echoed.choices[0].text == "Echo me" + plain.choices[0].text


def test_logprobs_legacy_shape(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Score this", max_tokens=4, logprobs=2, **GREEDY)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 4
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert logprob <= 0 and 2 <= len(top) <= 3 and max(top, key=top.get) == token  # greedy


def test_prompt_scoring_like_lm_eval(client: openai.OpenAI, worker: RunningWorker, tiny_checkpoint: Path) -> None:
    """lm-eval's loglikelihood: token ids, echo, max_tokens 0, logprobs; the first token has no logprob."""
    ids = worker.client.tokenizer.encode("The capital of France is Paris")
    reply = client.completions.create(model=MODEL, prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0)
    logprobs = reply.choices[0].logprobs
    assert reply.usage.completion_tokens == 0 and len(logprobs.tokens) == len(ids)
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 and math.isfinite(lp) for lp in logprobs.token_logprobs[1:])
    assert all(len(top) >= 1 for top in logprobs.top_logprobs[1:])
    reference = LLMEngine(EngineConfig(model=str(tiny_checkpoint), dtype="float32", compile=False, device="cpu"))
    logits = reference.compute_logits(ids).log_softmax(dim=-1)
    expected = [logits[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert all(abs(a - b) < 1e-3 for a, b in zip(logprobs.token_logprobs[1:], expected, strict=True))


def test_streamed_text_equals_whole_text(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=10, **GREEDY)
    stream = client.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=10, stream=True,
                                       stream_options={"include_usage": True}, **GREEDY)
    texts, finish, usage = {0: "", 1: ""}, {}, None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
        usage = chunk.usage or usage
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]
    assert finish == {0: "length", 1: "length"} and usage.completion_tokens == 20


def test_stream_echo_and_logprobs(client: openai.OpenAI) -> None:
    stream = client.completions.create(model=MODEL, prompt="abc", max_tokens=3, echo=True, logprobs=0,
                                       stream=True, **GREEDY)
    chunks = [c.choices[0] for c in stream if c.choices]
    assert chunks[0].text.startswith("abc")
    assert sum(len(c.logprobs.tokens) for c in chunks if c.logprobs) >= 3


def test_raw_sse_framing(worker: RunningWorker) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", worker.base_url + "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
