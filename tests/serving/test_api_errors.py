"""Bad input gets a 4xx in OpenAI's error shape, never a 500 or a hang."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from fuzzing import assert_serves

from moecloud.serving.worker import RunningWorker

MODEL = "tiny"  # the served name conftest gives the worker


def post(worker: RunningWorker, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(worker.base_url + path, timeout=30, **kwargs)  # type: ignore[arg-type]


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_malformed_json(worker: RunningWorker) -> None:
    response = post(worker, "/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                    headers={"content-type": "application/json"})
    assert error_of(response, 400)["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": MODEL}, "messages"),
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": "hello"}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 50}, "top_logprobs"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": [""]}, "stop[0]"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
])
def test_wrong_types_and_ranges_are_400(worker: RunningWorker, body: dict[str, object], param: str) -> None:
    assert error_of(post(worker, "/v1/chat/completions", json=body), 400)["param"] == param


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": "x", "logprobs": 99}, "logprobs"),
    ({"prompt": "x", "suffix": "tail"}, "suffix"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
])
def test_bad_completion_requests_are_400(worker: RunningWorker, body: dict[str, object], param: str) -> None:
    error = error_of(post(worker, "/v1/completions", json={"model": MODEL, **body}), 400)
    assert error["param"] is None or str(error["param"]).startswith(param)


@pytest.mark.parametrize(("extra", "param"), [
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
])
def test_unsupported_parameters_are_named(client: openai.OpenAI, extra: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                       extra_body=extra)
    assert caught.value.body["param"] == param and param in caught.value.body["message"]


def test_image_content_and_legacy_function_messages_are_rejected(worker: RunningWorker) -> None:
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
    function = {"role": "function", "content": "42", "name": "f"}
    for message, param in ((image, "messages[0].content[0].type"), (function, "messages[0].role")):
        body = {"model": MODEL, "messages": [message]}
        assert error_of(post(worker, "/v1/chat/completions", json=body), 400)["param"] == param


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"


def test_prompt_longer_than_context_states_both_lengths(client: openai.OpenAI, worker: RunningWorker) -> None:
    limit = worker.client.max_model_len
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="hello " * 5000, max_tokens=1)
    message = caught.value.body["message"]
    assert caught.value.body["code"] == "context_length_exceeded" and str(limit) in message and "tokens" in message
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="hello", max_tokens=limit)
    assert str(limit) in caught.value.body["message"] and caught.value.body["param"] == "max_tokens"


def test_unknown_route_and_method_keep_the_shape(worker: RunningWorker) -> None:
    error_of(httpx.get(worker.base_url + "/v1/nothing"), 404)
    error_of(httpx.get(worker.base_url + "/v1/chat/completions"), 405)


def test_full_waiting_queue_is_429(start_worker, model_name: str, async_client_for) -> None:
    async def main(worker: RunningWorker) -> list[BaseException | object]:
        async with async_client_for(worker) as client:
            calls = [client.completions.create(model=model_name, prompt=f"p{i}", max_tokens=40,
                                               extra_body={"ignore_eos": True}) for i in range(8)]
            return await asyncio.gather(*calls, return_exceptions=True)

    with start_worker(engine={"max_num_seqs": 1, "max_waiting_requests": 1}) as worker:
        results = asyncio.run(main(worker))
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert limited and all(r.body["code"] == "queue_full" for r in limited)
    assert all(isinstance(r, openai.RateLimitError) or r.choices for r in results)


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def assert_engine_alive(worker: RunningWorker) -> None:
    assert_serves(worker.base_url, MODEL, worker.base_url)


def engine_killers(vocab: int) -> list[tuple[str, dict[str, object], str]]:
    """(path, extra body fields, param) of requests that stopped the engine before the edge checked them."""
    return [
        ("/v1/chat/completions", {"stop_token_ids": [1_000_000_000], "min_tokens": 1}, "stop_token_ids[0]"),
        ("/v1/chat/completions", {"stop_token_ids": [7, vocab], "min_tokens": 1}, "stop_token_ids[1]"),
        ("/v1/chat/completions", {"stop_token_ids": [-(vocab + 1)], "min_tokens": 1}, "stop_token_ids[0]"),
        ("/v1/chat/completions", {"stop_token_ids": [-1], "min_tokens": 1}, "stop_token_ids[0]"),
        ("/v1/chat/completions", {"repetition_penalty": 1e-45}, "repetition_penalty"),
        ("/v1/chat/completions", {"seed": 2**64}, "seed"),
        ("/v1/chat/completions", {"logit_bias": {str(vocab): 1}}, f"logit_bias.{vocab}"),
        ("/v1/chat/completions", {"logit_bias": {"token": 1}}, "logit_bias.token"),
        ("/v1/chat/completions", {"logit_bias": {"5": 101}}, "logit_bias.5"),
        ("/v1/chat/completions", {"stop": ["x"] * 17}, "stop"),
        ("/v1/chat/completions", {"stop": "x" * 1001}, "stop"),
        ("/v1/chat/completions", {"stop_token_ids": [1] * 65}, "stop_token_ids"),
        ("/v1/completions", {"prompt": [1, vocab]}, "prompt[1]"),
        ("/v1/completions", {"prompt": [[1], [2, -1]]}, "prompt[1][1]"),
        ("/v1/completions", {"prompt": "x", "stop_token_ids": [vocab], "min_tokens": 1}, "stop_token_ids[0]"),
        ("/v1/completions", {"prompt": "x", "best_of": 65, "n": 65}, "n"),
    ]


def test_requests_that_killed_the_engine_are_400s_naming_the_field(worker: RunningWorker) -> None:
    vocab = worker.client.tokenizer.vocab_size
    for path, extra, param in engine_killers(vocab):
        base = CHAT if path == "/v1/chat/completions" else {"model": MODEL, "max_tokens": 4}
        error = error_of(post(worker, path, json={**base, **extra}), 400)
        assert error["param"] == param, (extra, error)
        assert_engine_alive(worker)


RAW_SURROGATES = [
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "messages[0].content"),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", '
     b'"text": "\\udfff"}]}]}', "messages[0].content[0].text"),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "x", "name": "\\ud83d"}]}',
     "messages[0].name"),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], '
     b'"stop": ["ok", "\\ud800"]}', "stop[1]"),
    ("/v1/chat/completions", b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}', "model"),
    ("/v1/completions", b'{"model": "tiny", "prompt": "\\ud800"}', "prompt"),
    ("/v1/completions", b'{"model": "tiny", "prompt": ["a", "b\\udc00"]}', "prompt[1]"),
]


@pytest.mark.parametrize(("path", "raw", "param"), RAW_SURROGATES)
def test_text_that_is_not_unicode_is_a_400(worker: RunningWorker, path: str, raw: bytes, param: str) -> None:
    error = error_of(post(worker, path, content=raw, headers={"content-type": "application/json"}), 400)
    assert error["param"] == param and "Unicode" in str(error["message"])
    assert_engine_alive(worker)


def test_nan_and_infinity_are_400s(worker: RunningWorker) -> None:
    for raw, param in ((b'"temperature": NaN', "temperature"), (b'"top_p": Infinity', "top_p"),
                       (b'"logit_bias": {"5": -Infinity}', "logit_bias.5")):
        body = b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], ' + raw + b"}"
        response = post(worker, "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert error_of(response, 400)["param"] == param
    assert_engine_alive(worker)


def greedy_text(worker: RunningWorker, **extra: object) -> str:
    body = {"model": MODEL, "prompt": "the engine", "max_tokens": 12, "ignore_eos": True, "seed": 3, **extra}
    response = post(worker, "/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_tiny_temperature_is_greedy_and_tiny_top_p_is_top_1(worker: RunningWorker) -> None:
    greedy = greedy_text(worker, temperature=0)
    assert greedy_text(worker, temperature=1e-45) == greedy
    assert greedy_text(worker, temperature=1.5, top_p=5e-324) == greedy
    assert greedy_text(worker, temperature=2, top_p=1e-6, top_k=50) == greedy
    assert_engine_alive(worker)


def test_empty_logit_bias_is_accepted_and_a_real_one_refused_by_name(worker: RunningWorker) -> None:
    assert post(worker, "/v1/chat/completions", json={**CHAT, "logit_bias": {}}).status_code == 200
    error = error_of(post(worker, "/v1/chat/completions", json={**CHAT, "logit_bias": {"5": 10}}), 400)
    assert error["param"] == "logit_bias" and error["code"] == "unsupported_parameter"
