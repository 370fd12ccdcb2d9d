"""One request's failure stays its own; only a failure of the engine itself stops it. And the sampler survives
the values that used to kill it (tiny temperature, top_p and repetition penalty, non-finite logits)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from moecloud.engine import EngineConfig, LLMEngine, RequestOutput, SamplingParams
from moecloud.engine.failures import EngineFailed, FaultInjector
from moecloud.engine.sampler import Sampler, SamplingRow, TokenChoice

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def faults() -> FaultInjector:
    return FaultInjector()


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path, faults: FaultInjector) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(tiny_checkpoint), dtype="float32", compile=False, device="cpu",
                                  max_model_len=512), faults=faults)


def run(engine: LLMEngine, *requests: tuple[str, str | list[int], SamplingParams]) -> dict[str, RequestOutput]:
    for request_id, prompt, params in requests:
        engine.add_request(request_id, prompt, params)
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                final[output.request_id] = output
    return final


@pytest.mark.parametrize("stage", ["sample", "forward"])
def test_a_failing_request_fails_alone(engine: LLMEngine, faults: FaultInjector, stage: str) -> None:
    alone = run(engine, (f"alone-{stage}", "hello there", GREEDY))[f"alone-{stage}"]
    faults.arm(f"bad-{stage}", stage)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, n=2)
    final = run(engine, (f"bad-{stage}", "hello", params), (f"good-{stage}", "hello there", GREEDY))
    bad, good = final[f"bad-{stage}"], final[f"good-{stage}"]
    assert bad.error == {"sample": "InjectedFault while sampling", "forward": "InjectedFault while the forward pass"}[
        stage]
    assert [o.finish_reason for o in bad.outputs] == ["error", "error"]
    assert good.error is None and good.outputs[0].token_ids == alone.outputs[0].token_ids
    assert engine.stats().num_running == 0 and not engine.has_unfinished_requests()
    assert run(engine, (f"after-{stage}", "hello there", GREEDY))[f"after-{stage}"].outputs[0].token_ids == \
        alone.outputs[0].token_ids


def test_a_fatal_fault_stops_the_engine(tiny_checkpoint: Path) -> None:
    faults = FaultInjector()
    engine = LLMEngine(EngineConfig(model=str(tiny_checkpoint), dtype="float32", compile=False, device="cpu"),
                       faults=faults)
    faults.arm("doomed", "fatal")
    engine.add_request("bystander", "hello", GREEDY)
    engine.add_request("doomed", "hello", GREEDY)
    with pytest.raises(EngineFailed, match="fatal"):
        while engine.has_unfinished_requests():
            engine.step()


def test_failures_in_a_row_are_the_engines(tiny_checkpoint: Path) -> None:
    faults = FaultInjector()
    limit = 3
    engine = LLMEngine(EngineConfig(model=str(tiny_checkpoint), dtype="float32", compile=False, device="cpu",
                                    max_consecutive_failures=limit), faults=faults)
    for i in range(2 * limit):
        faults.arm(f"bad-{i}", "sample")
    final = run(engine, ("bad-0", "a", GREEDY), ("good", "b", GREEDY), ("bad-1", "c", GREEDY), ("bad-2", "d", GREEDY))
    assert final["good"].error is None and all(final[f"bad-{i}"].error for i in range(3))  # a token between them
    with pytest.raises(EngineFailed, match=f"{limit} requests failed in a row"):
        run(engine, *[(f"bad-{i}", "x", GREEDY) for i in range(limit, 2 * limit)])


def test_a_scheduling_failure_fails_the_request_it_was_admitting(tiny_checkpoint: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(tiny_checkpoint), dtype="float32", compile=False, device="cpu"))
    schedule = engine.scheduler.schedule

    def schedule_refusing_poison():  # as the prefix cache once did on a long prompt it had cached
        if engine.scheduler.waiting and engine.scheduler.waiting[0].token_ids[0] == 7:
            raise RecursionError("maximum recursion depth exceeded")
        return schedule()

    engine.scheduler.schedule = schedule_refusing_poison  # type: ignore[method-assign]
    engine.add_request("good", [5, 6], GREEDY)
    engine.step()  # "good" is running
    final = run(engine, ("poison", [7, 8], GREEDY), ("after", [9, 10], GREEDY))
    assert final["poison"].error == "RecursionError while scheduling"
    assert final["after"].error is None and len(final["after"].outputs[0].token_ids) == 8

    def broken_schedule():
        raise RuntimeError("broken")

    engine.scheduler.schedule = broken_schedule  # type: ignore[method-assign]
    engine.add_request("suspect", [9, 9], GREEDY)
    assert engine.step()[0].error == "RuntimeError while scheduling"  # blamed first, as it was next in line
    with pytest.raises(EngineFailed, match="outside any one request"):  # the failure outlived its suspect
        engine.step()


def test_the_deadly_sampling_values_give_tokens(engine: LLMEngine) -> None:
    vocab = engine.model_config.vocab_size
    cases = {
        "tiny-temperature": SamplingParams(temperature=1e-45, max_tokens=6, ignore_eos=True, logprobs=2),
        "tiny-top-p": SamplingParams(temperature=1.0, top_p=5e-324, max_tokens=6, ignore_eos=True, seed=1),
        "tiny-repetition-penalty": SamplingParams(temperature=1.0, repetition_penalty=1e-45, max_tokens=6,
                                                  ignore_eos=True, logprobs=2, seed=2),
        "min-tokens": SamplingParams(temperature=1.0, min_tokens=3, max_tokens=6, stop_token_ids=[vocab - 1]),
    }
    final = run(engine, *[(name, "hello world", params) for name, params in cases.items()])
    greedy = run(engine, ("greedy", "hello world", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)))
    for name, output in final.items():
        choice = output.outputs[0]
        assert output.error is None and choice.token_ids and all(0 <= t < vocab for t in choice.token_ids), name
        for position in choice.logprobs or []:
            assert all(math.isfinite(entry.logprob) for entry in position.values()), name
    assert final["tiny-temperature"].outputs[0].token_ids == greedy["greedy"].outputs[0].token_ids
    assert final["tiny-top-p"].outputs[0].token_ids == greedy["greedy"].outputs[0].token_ids  # only the top stays


@pytest.mark.parametrize("stop_token_ids", [[10**9], [-385], [-1]])
def test_token_ids_outside_the_vocabulary_are_refused_by_name(engine: LLMEngine, stop_token_ids: list[int]) -> None:
    with pytest.raises(ValueError, match="stop_token_ids") as refused:
        engine.add_request("oov", "hello", SamplingParams(stop_token_ids=stop_token_ids, min_tokens=1))
    assert getattr(refused.value, "param", None) == "stop_token_ids"
    assert "oov" not in engine.requests and not engine.scheduler.has_unfinished()


def test_a_refused_request_leaves_no_trace(engine: LLMEngine) -> None:
    with pytest.raises(ValueError, match="seed"):
        engine.add_request("seeded", "hello", SamplingParams(n=2, seed=(1 << 64) - 1))
    engine.add_request("seeded", "hello", SamplingParams(n=2, seed=(1 << 64) - 2, max_tokens=2))
    assert run(engine)["seeded"].error is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty", "presence_penalty"])
def test_non_finite_sampling_values_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field) as refused:
        SamplingParams(**{field: value})
    assert getattr(refused.value, "param", None) == field


def row(**params: object) -> SamplingRow:
    return SamplingRow(SamplingParams(**params), prompt_ids=[0, 1], output_ids=[2], generator=None,
                       block_eos=[10**9, -385, 3])


NAN, INF = math.nan, math.inf
LOGITS = torch.tensor([[NAN] * 5, [INF, 1.0, INF, 0.0, -INF], [-INF] * 5, [2.0, NAN, 1.0, 9.0, -INF],
                       [1e38, -1e38, 3e38, 0.0, 1.0]])


@pytest.mark.parametrize("params", [
    {"temperature": 0}, {"temperature": 1e-45}, {"temperature": 1.0}, {"temperature": 1.0, "top_p": 5e-324},
    {"temperature": 1.0, "repetition_penalty": 1e-45, "logprobs": 3}, {"temperature": 0.7, "top_k": 2, "min_p": 0.5},
])
def test_non_finite_logits_rows_still_give_a_token(params: dict[str, object]) -> None:
    choices = Sampler(seed=0)(LOGITS, [row(**params) for _ in range(len(LOGITS))])
    for choice in choices:
        assert isinstance(choice, TokenChoice) and 0 <= choice.token_id < 5
        assert choice.token_id != 3  # blocked (min_tokens); the ids outside the vocabulary block nothing
        assert choice.logprob is None or math.isfinite(choice.logprob)


def test_greedy_never_picks_nan_or_a_blocked_token() -> None:
    choices = Sampler(seed=0)(LOGITS, [row(temperature=0) for _ in range(len(LOGITS))])
    assert [c.token_id for c in choices if isinstance(c, TokenChoice)] == [0, 0, 0, 0, 2]


def test_a_row_that_raises_is_returned_not_raised() -> None:
    faults = FaultInjector()
    faults.arm("bad", "sample")
    rows = [row(temperature=0, logprobs=1), row(temperature=0, logprobs=1)]
    rows[0].seq_id = "bad#0"
    choices = Sampler(seed=0, faults=faults)(torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 0.0]]), rows)
    assert isinstance(choices[0], Exception)
    assert isinstance(choices[1], TokenChoice) and choices[1].token_id == 0 and choices[1].logprob is not None
