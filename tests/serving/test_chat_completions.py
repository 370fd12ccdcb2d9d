"""Chat completions through the official openai SDK over real HTTP. Random weights: check mechanics, not text."""

from __future__ import annotations

import asyncio

import openai

from moecloud.serving.worker import RunningWorker

MODEL = "tiny"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


def test_chat_completion_has_message_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens is not None


def test_repeated_prompt_reports_cached_tokens(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "a long shared prefix " * 8}]
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens >= 16


def test_greedy_is_deterministic_and_max_completion_tokens_wins(client: openai.OpenAI) -> None:
    def ask() -> openai.types.chat.ChatCompletion:
        return client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=50,
                                              max_completion_tokens=6, extra_body={"ignore_eos": True})
    first, second = ask(), ask()
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage.completion_tokens == 6 and first.choices[0].finish_reason == "length"


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    texts = {client.chat.completions.create(model=MODEL, messages=HELLO, seed=7, temperature=1.0, top_p=0.9,
                                            max_tokens=8).choices[0].message.content for _ in range(2)}
    assert len(texts) == 1


def test_n_choices_each_with_index(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, n=3, max_tokens=4, seed=1)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert 3 <= reply.usage.completion_tokens <= 12


def test_stop_string_ends_the_text(client: openai.OpenAI) -> None:
    free = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=30,
                                          extra_body={"ignore_eos": True}).choices[0].message.content
    stop = free[3:6]
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_tokens=30, stop=[stop],
                                           extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and stop not in choice.message.content
    assert free.startswith(choice.message.content)


def test_logprobs_with_top_alternatives(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, logprobs=True,
                                           top_logprobs=3, temperature=0, extra_body={"ignore_eos": True})
    content = reply.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == max(t.logprob for t in entry.top_logprobs)  # greedy picks the top one


def test_stream_matches_and_ends_with_usage(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "messages": HELLO, "temperature": 0, "max_tokens": 12,
            "extra_body": {"ignore_eos": True}}
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_n_choices_and_logprobs(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, n=2, max_tokens=5, stream=True,
                                            logprobs=True, extra_body={"ignore_eos": True})
    tokens: dict[int, int] = {0: 0, 1: 0}
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            tokens[choice.index] += len(choice.logprobs.content) if choice.logprobs else 0
            if choice.finish_reason:
                finished.add(choice.index)
    assert tokens == {0: 5, 1: 5} and finished == {0, 1}


def test_async_client_concurrent_streams(worker: RunningWorker, async_client_for) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=6, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main() -> list[str]:
        async with async_client_for(worker) as client:
            plain = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)
            assert plain.choices[0].message.role == "assistant"
            return await asyncio.gather(*(one(client, i) for i in range(6)))

    assert len(asyncio.run(main())) == 6


def test_developer_role_text_parts_and_user_field(client: openai.OpenAI) -> None:
    messages = [{"role": "developer", "content": "Short."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, user="alice",
                                           response_format={"type": "text"}, presence_penalty=0.5,
                                           frequency_penalty=0.5, extra_body={"no_such_field": 1})
    assert reply.choices[0].message.role == "assistant"
