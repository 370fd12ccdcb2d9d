"""Sampling parameters, logprobs, stops and the offline API."""

from __future__ import annotations

import math

import pytest
import torch
from devices import DEVICES

from moecloud.engine import LLM, SamplingParams
from moecloud.engine.failures import FaultInjector
from moecloud.engine.sampler import Sampler, SamplingRow, TokenChoice, finite_log_softmax


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


# ---- on every device: the sampler's tensors, generators and read-backs live with the logits -----------------------
# Each option below, alone and combined, with a per-request generator on the logits' device.
OPTIONS = [
    {"temperature": 0},
    {"temperature": 0, "repetition_penalty": 1.5},
    {"temperature": 0.8},
    {"temperature": 1.0, "top_k": 3},
    {"temperature": 1.0, "top_p": 0.5},
    {"temperature": 1.0, "min_p": 0.2},
    {"temperature": 1.0, "repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.25},
    {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "min_p": 0.05, "logprobs": 3, "frequency_penalty": 0.1},
]


def _device_rows(device: str, seed: int) -> list[SamplingRow]:
    rows = []
    for i, options in enumerate(OPTIONS):
        generator = torch.Generator(device=device).manual_seed(seed + i)
        options = dict(options)
        rows.append(SamplingRow(SamplingParams(logprobs=options.pop("logprobs", 2), **options), prompt_ids=[1, 2],
                                output_ids=[3, 3, 4], generator=generator, block_eos=[0], seq_id=f"r{i}"))
    return rows


def _device_logits(device: str) -> torch.Tensor:
    return torch.randn(len(OPTIONS), 64, generator=torch.Generator().manual_seed(5)).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_every_option_samples_on_the_logits_device(device):
    logits = _device_logits(device)
    sampler = Sampler(seed=0, device=device)
    first = sampler(logits, _device_rows(device, 7))
    assert all(isinstance(c, TokenChoice) for c in first), first
    again = sampler(logits, _device_rows(device, 7))
    assert [c.token_id for c in again] == [c.token_id for c in first]  # the same seeds: the same tokens
    reference = finite_log_softmax(logits.cpu())
    for i, (row, choice) in enumerate(zip(_device_rows(device, 7), first, strict=True)):
        assert 1 <= choice.token_id < 64  # token 0 is blocked (min_tokens' eos)
        assert choice.logprob == pytest.approx(float(reference[i, choice.token_id]), abs=1e-5)
        assert choice.rank == 1 + int((reference[i] > reference[i, choice.token_id]).sum())
        assert [t for t, _ in choice.top] == reference[i].topk(row.params.logprobs).indices.tolist()
    draws = {tuple(c.token_id for c in sampler(logits, _device_rows(device, seed))) for seed in range(8)}
    assert len(draws) > 1  # and different seeds draw differently


@pytest.mark.parametrize("device", DEVICES)
def test_penalties_on_device_match_the_cpu(device):
    row = _device_rows(device, 0)[6]
    expected = _device_logits("cpu")[6].clone()
    Sampler._penalize(expected, row)
    on_device = _device_logits(device)[6].clone()
    Sampler._penalize(on_device, row)
    assert torch.allclose(on_device.cpu(), expected)
    assert not torch.equal(expected, _device_logits("cpu")[6])  # the penalties did something


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_rows_read_back_together_and_a_failing_row_fails_alone(device):
    logits = _device_logits(device)
    rows = [_row(temperature=0) for _ in range(len(OPTIONS))]
    rows[2] = SamplingRow(SamplingParams(temperature=0), [], [], None, [int(logits[2].argmax())])  # blocked best
    rows[4].params = SamplingParams(temperature=1.0, seed=1)  # no generator of its own: the sampler's, on device
    rows[5].seq_id = "bad"
    faults = FaultInjector()
    faults.arm("bad", "sample")
    out = Sampler(device=device, faults=faults)(logits, rows)
    assert isinstance(out[5], Exception)  # that row alone fails
    expected = logits.cpu().argmax(-1).tolist()
    for i, choice in enumerate(out):
        if i in (2, 4, 5):
            continue
        assert choice.token_id == expected[i]
    assert out[2].token_id != expected[2] and out[2].token_id == int(logits[2].cpu().topk(2).indices[1])
    assert isinstance(out[4], TokenChoice)


@pytest.mark.parametrize("device", DEVICES)
def test_a_row_with_nothing_left_falls_back_on_device(device):
    logits = torch.full((2, 8), float("-inf"), device=device)
    logits[1, 3] = float("nan")
    rows = [_row(temperature=1.0, top_p=0.5), _row(temperature=0.5, min_p=0.5)]
    for row in rows:
        row.generator = torch.Generator(device=device).manual_seed(0)
    assert [c.token_id for c in Sampler(device=device)(logits, rows)] == [0, 0]


@pytest.fixture(scope="module", params=DEVICES)
def device_llm(request, tiny_checkpoint):
    return LLM(str(tiny_checkpoint), compile=False, dtype="float32", device=request.param)


def test_seeded_generation_repeats_on_its_device(device_llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=11, n=2, max_tokens=10, ignore_eos=True,
                            presence_penalty=0.3, logprobs=2)
    first = device_llm.generate("hello world", params)[0].outputs
    again = device_llm.generate("hello world", params)[0].outputs
    assert [o.token_ids for o in again] == [o.token_ids for o in first]
    assert first[0].token_ids != first[1].token_ids  # seed + index per sample


def test_logprobs_and_prompt_logprobs_on_device(device_llm):
    prompt = device_llm.tokenizer.encode("score the prompt on its device")
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=2, prompt_logprobs=2, ignore_eos=True)
    out = device_llm.generate(prompt, params)[0]
    completion = out.outputs[0]
    expected = device_llm.engine.compute_logits(prompt + completion.token_ids).log_softmax(-1).cpu()
    for pos in range(1, len(prompt)):
        entry = out.prompt_logprobs[pos][prompt[pos]]
        assert entry.logprob == pytest.approx(float(expected[pos - 1, prompt[pos]]), abs=1e-4)
        assert entry.rank == 1 + int((expected[pos - 1] > expected[pos - 1, prompt[pos]]).sum())
    for step, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs, strict=True)):
        assert entry[token].logprob == pytest.approx(float(expected[len(prompt) - 1 + step, token]), abs=1e-4)
