"""Structured output: a random checkpoint samples garbage at temperature 1, so only real constrained decoding makes
its outputs parse and validate."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jsonschema
import pytest

from moecloud.engine import LLM, CompletionOutput, EngineConfig, LLMEngine, SamplingParams, StructuredOutput
from moecloud.engine.sampling_params import InvalidParameter

SEEDS = range(2)
MAX_TOKENS = 48

SHORT = {"type": "string", "maxLength": 3}
SCHEMAS = {
    "types": {
        "type": "object",
        "properties": {"i": {"type": "integer", "minimum": -50, "maximum": 500}, "b": {"type": "boolean"},
                       "z": {"type": "null"}, "s": SHORT},
        "required": ["i", "b", "z", "s"], "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "mixed": {"enum": [1, "two", None, True]}},
        "required": ["color", "mixed"], "additionalProperties": False,
    },
    "required_and_no_extra": {
        "type": "object",
        "properties": {"must": SHORT, "may": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["must"], "additionalProperties": False,
    },
    "string_lengths": {
        "type": "object",
        "properties": {"word": {"type": "string", "minLength": 3, "maxLength": 5}},
        "required": ["word"], "additionalProperties": False,
    },
    "array_bounds": {
        "type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 2, "maxItems": 4,
    },
    "nesting": {
        "type": "object",
        "properties": {"people": {"type": "array", "maxItems": 1, "items": {
            "type": "object",
            "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,3}$"},
                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["name", "age"], "additionalProperties": False}}},
        "required": ["people"], "additionalProperties": False,
    },
    "refs": {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                                              "y": {"type": "integer", "minimum": 0, "maximum": 9}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"], "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def llm(tiny_checkpoint: Path) -> LLM:
    return LLM(str(tiny_checkpoint), dtype="float32", compile=False, device="cpu", max_model_len=512)


REGEX = r"[a-z]{2,5}-[0-9]{2}"
OPTIONS = ["yes", "no", "not sure", "ask again later"]
CASES = {f"schema:{name}": StructuredOutput.json_schema(schema) for name, schema in SCHEMAS.items()} | {
    "json_object": StructuredOutput.json_object(),
    "regex": StructuredOutput.regex(REGEX),
    "choice": StructuredOutput.choice(OPTIONS),
    "start_after": dataclasses.replace(StructuredOutput.choice(["yes", "no"]), start_after="e"),
    "n=2": StructuredOutput.json_schema(SCHEMAS["enums"]),
    "free": None,
}


@pytest.fixture(scope="module")
def sampled(llm: LLM) -> dict[str, list[CompletionOutput]]:
    """Every case sampled with every seed, in one batch: constrained and unconstrained rows side by side."""
    keys = [(case, seed) for case in CASES for seed in SEEDS]
    runs = [SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, seed=seed, structured=CASES[case],
                           n=2 if case == "n=2" else 1) for case, seed in keys]
    outputs = llm.generate(["The answer:"] * len(runs), runs)
    by_case: dict[str, list[CompletionOutput]] = {case: [] for case in CASES}
    for (case, _), output in zip(keys, outputs, strict=True):
        by_case[case] += output.outputs
    return by_case


@pytest.mark.parametrize("name", SCHEMAS)
def test_json_schema_outputs_parse_and_validate(sampled: dict[str, list[CompletionOutput]], name: str) -> None:
    for choice in sampled[f"schema:{name}"]:
        assert choice.finish_reason == "stop", choice.text
        jsonschema.validate(json.loads(choice.text), SCHEMAS[name])


def test_without_a_constraint_the_checkpoint_writes_no_json(sampled: dict[str, list[CompletionOutput]]) -> None:
    """What makes the tests here able to fail: unconstrained, the same seeds give no valid JSON."""
    for choice in sampled["free"]:
        with pytest.raises(ValueError):
            json.loads(choice.text)


def test_json_object_gives_an_object(sampled: dict[str, list[CompletionOutput]]) -> None:
    choices = sampled["json_object"]
    finished = [c for c in choices if c.finish_reason == "stop"]
    assert finished  # free-form strings may run past max_tokens; a finished object must parse
    for choice in finished:
        assert isinstance(json.loads(choice.text), dict)
    for choice in choices:
        assert choice.text.startswith("{")


def test_regex_is_matched_in_full(sampled: dict[str, list[CompletionOutput]]) -> None:
    for choice in sampled["regex"]:
        assert choice.finish_reason == "stop"
        assert re.fullmatch(REGEX, choice.text), choice.text


def test_choice_is_one_of_the_options(sampled: dict[str, list[CompletionOutput]]) -> None:
    texts = [c.text for c in sampled["choice"]]
    assert set(texts) <= set(OPTIONS)


def test_start_after_leaves_the_text_before_it_free(sampled: dict[str, list[CompletionOutput]]) -> None:
    for choice in sampled["start_after"]:
        if choice.finish_reason == "length":  # no "e" in the first MAX_TOKENS tokens: still free text
            assert "e" not in choice.text
            continue
        answer = next(o for o in ("yes", "no") if choice.text.endswith(o))
        assert "e" in choice.text[: -len(answer)]


def sample(llm: LLM, structured: StructuredOutput | None, seeds=SEEDS, **params) -> list[CompletionOutput]:
    options = {"temperature": 1.0, "max_tokens": MAX_TOKENS, **params}
    runs = [SamplingParams(seed=seed, structured=structured, **options) for seed in seeds]
    return [choice for output in llm.generate(["The answer:"] * len(runs), runs) for choice in output.outputs]


def test_unconstrained_sequences_are_untouched_by_constrained_ones(llm: LLM,
                                                                   sampled: dict[str, list[CompletionOutput]]) -> None:
    """The free rows of the mixed batch sample what they sample alone with the same seeds."""
    alone = sample(llm, None, max_tokens=16)
    assert [c.token_ids for c in alone] == [c.token_ids[:16] for c in sampled["free"]]


def test_each_of_n_samples_has_its_own_matcher(sampled: dict[str, list[CompletionOutput]]) -> None:
    choices = sampled["n=2"]
    assert len(choices) == 2 * len(SEEDS) and len({c.text for c in choices}) > 1
    for choice in choices:
        jsonschema.validate(json.loads(choice.text), SCHEMAS["enums"])


def test_logprobs_see_only_the_allowed_tokens(llm: LLM) -> None:
    choices = sample(llm, StructuredOutput.choice(["yes", "no"]), seeds=[0], logprobs=3, max_tokens=4)
    first = choices[0].logprobs[0]
    chosen = first[choices[0].token_ids[0]]
    allowed = [lp for lp in first.values() if lp.logprob > -1e30]
    assert chosen.logprob > -1e30 and len(allowed) <= 2  # every other token is masked to the lowest float


def test_preempted_sequences_resume_their_matcher(tiny_checkpoint: Path) -> None:
    """A KV cache too small for the batch preempts and recomputes sequences: their matchers must not replay."""
    engine = LLMEngine(EngineConfig(model=str(tiny_checkpoint), dtype="float32", compile=False, device="cpu",
                                    block_size=16, kv_cache_tokens=96, max_model_len=512))
    schema = SCHEMAS["refs"]
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=56, structured=StructuredOutput.json_schema(schema))
              for s in range(4)]
    for i, p in enumerate(params):
        engine.add_request(f"r{i}", "The answer:", p)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
    assert engine.stats().num_preemptions > 0
    assert any(o.outputs[0].finish_reason == "stop" for o in outputs)
    for output in outputs:
        choice = output.outputs[0]
        assert output.error is None
        if choice.finish_reason == "stop":
            jsonschema.validate(json.loads(choice.text), schema)


@pytest.mark.parametrize("structured", [
    lambda: StructuredOutput.json_schema({"type": "no-such-type"}),
    lambda: StructuredOutput.json_schema({"$ref": "#/$defs/missing"}),
    lambda: StructuredOutput.json_schema({"type": "string", "minLength": 5, "maxLength": 2}),
    lambda: StructuredOutput.regex("(unclosed"),
    lambda: StructuredOutput.regex("a{1000}{1000}"),  # the lexer's fuel runs out: refused, not a stalled step
    lambda: StructuredOutput.grammar("start: undefined_rule"),
])
def test_an_invalid_constraint_is_refused_when_added(llm: LLM, structured) -> None:
    engine = llm.engine
    with pytest.raises(InvalidParameter) as refused:
        engine.add_request("bad", "The answer:", SamplingParams(structured=structured()))
    assert refused.value.param == "structured"
    assert not engine.has_unfinished_requests()


def test_constructors_refuse_what_is_not_a_constraint() -> None:
    for build in (lambda: StructuredOutput.json_schema([1]), lambda: StructuredOutput.choice([]),
                  lambda: StructuredOutput.regex(""), lambda: StructuredOutput.json_schema({"x": float("nan")})):
        with pytest.raises(InvalidParameter):
            build()
