"""Structured output through the real worker and the openai SDK: response_format (chat and completions, streamed
and not, `parse` with a pydantic model), vLLM's structured_outputs and guided_* fields, and hostile constraints."""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from moecloud.config import ServingSettings
from moecloud.serving.worker import RunningWorker

MODEL = "tiny"  # the served name conftest gives the worker
MESSAGES = [{"role": "user", "content": "Describe a pet."}]
SCHEMA = {
    "type": "object",
    "properties": {"kind": {"enum": ["cat", "dog", "fish"]}, "age": {"type": "integer", "minimum": 0, "maximum": 30},
                   "name": {"type": "string", "minLength": 1, "maxLength": 4}},
    "required": ["kind", "age", "name"], "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}}
SEEDS = (0, 1)


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    age: int = Field(ge=0, le=30)
    name: str = Field(min_length=1, max_length=4)


def test_chat_json_schema(client: openai.OpenAI) -> None:
    for seed in SEEDS:
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=JSON_SCHEMA_FORMAT,
                                               temperature=1.0, seed=seed, max_tokens=64)
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content or ""), SCHEMA)


def test_chat_json_schema_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format=JSON_SCHEMA_FORMAT,
                                            temperature=1.0, seed=2, max_tokens=64, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    for seed in SEEDS:
        reply = client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Pet, temperature=1.0,
                                              seed=seed, max_tokens=64)
        pet = reply.choices[0].message.parsed
        assert isinstance(pet, Pet)
        Pet.model_validate(pet.model_dump())


def test_parse_streamed(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=MODEL, messages=MESSAGES, response_format=Pet, temperature=1.0,
                                        seed=3, max_tokens=64) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Pet)


def test_chat_json_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format={"type": "json_object"},
                                           temperature=1.0, seed=0, max_tokens=48)
    text = reply.choices[0].message.content or ""
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_completions_with_response_format(client: openai.OpenAI) -> None:
    for stream in (False, True):
        reply = client.completions.create(model=MODEL, prompt="A pet:", temperature=1.0, seed=4, max_tokens=64,
                                          stream=stream, extra_body={"response_format": JSON_SCHEMA_FORMAT})
        text = "".join(c.choices[0].text for c in reply) if stream else reply.choices[0].text
        jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize(("extra", "check"), [
    ({"structured_outputs": {"regex": "[a-z]{3}-[0-9]{2}"}}, lambda t: re.fullmatch("[a-z]{3}-[0-9]{2}", t)),
    ({"structured_outputs": {"choice": ["red", "green"]}}, lambda t: t in ("red", "green")),
    ({"structured_outputs": {"json": SCHEMA}}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
    ({"structured_outputs": {"grammar": 'start: "x" DIGIT DIGIT\n%import common.DIGIT'}},
     lambda t: re.fullmatch("x[0-9]{2}", t)),
    ({"guided_json": json.dumps(SCHEMA)}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
    ({"guided_regex": "(yes|no)!"}, lambda t: t in ("yes!", "no!")),
    ({"guided_choice": ["up", "down"]}, lambda t: t in ("up", "down")),
])
def test_vllm_structured_outputs(client: openai.OpenAI, extra: dict[str, object], check) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=1.0, seed=5, max_tokens=64,
                                           extra_body=extra)
    text = reply.choices[0].message.content or ""
    assert reply.choices[0].finish_reason == "stop" and check(text), text


def huge_schema() -> dict[str, object]:
    limit = ServingSettings().max_structured_bytes  # the worker of conftest runs with the default
    count = limit // 20 + 1
    return {"type": "object", "properties": {f"field_{i:06d}": {"type": "integer"} for i in range(count)}}


@pytest.mark.parametrize(("extra", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wizard"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/none"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": "not an object"}}, "response_format.json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": huge_schema()}}},
     "response_format"),
    ({"structured_outputs": {"regex": "a{1000}{1000}"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"regex": "(?=lookahead)x"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"choice": "red"}}, "structured_outputs.choice"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": "start: nowhere"}}, "structured_outputs.grammar"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": 5}, "guided_regex"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
])
def test_hostile_constraints_are_400_naming_the_field(worker: RunningWorker, extra: dict[str, object],
                                                      param: str) -> None:
    for path, body in (("/v1/chat/completions", {"messages": MESSAGES}), ("/v1/completions", {"prompt": "x"})):
        response = httpx.post(worker.base_url + path, json={"model": MODEL, "max_tokens": 4, **body, **extra},
                              timeout=60)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert httpx.get(worker.base_url + "/health").status_code == 200


def test_text_response_format_is_unconstrained(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=1.0, seed=6, max_tokens=8)
    text = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=1.0, seed=6, max_tokens=8,
                                          response_format={"type": "text"})
    assert plain.choices[0].message.content == text.choices[0].message.content
