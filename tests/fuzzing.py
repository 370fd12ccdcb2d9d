"""Property-based fuzzing of the OpenAI routes, shared by the worker's and the gateway's fuzz tests and by
benchmarks/fuzz.py: Hypothesis strategies for hostile request bodies, and the one property every answer has.

The bodies are near-valid on purpose: the right model and mostly the right types, filled with the values that
have taken an engine down before (token ids at and past the vocabulary, floats that underflow, counts at the
bounds, lone surrogates, NaN), so most of them reach the field checks instead of failing on the first one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import strategies as st

ERROR_FIELDS = {"message", "type", "param", "code"}
SURROGATES = ["\ud800", "a\udfffb", "\udc00\ud800", "\ud83d"]
TINY_FLOATS = [0.0, -0.0, 5e-324, 1e-45, 1e-38, 1e-6, 1e-5, 0.01]


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], bad_in: int = 20) -> st.SearchStrategy[Any]:
    """``good`` except about one draw in ``bad_in``. The bad branch is a middle value: Hypothesis draws the ends
    of an integer range far more often than the rest."""
    return st.integers(1, bad_in).flatmap(lambda i: bad if i == bad_in // 2 else good)


def token_ids(vocab: int) -> st.SearchStrategy[int]:
    edges = [0, vocab - 1, vocab, -1, -vocab, -(vocab + 1), 10**9, 2**31, 2**63, 2**64, -(2**63) - 1]
    return mostly(st.integers(0, vocab - 1), st.one_of(st.sampled_from(edges), st.integers()), bad_in=6)


def floats(low: float, high: float) -> st.SearchStrategy[float]:
    """Mostly inside [low, high] (its ends and the tiny values there included), else anything, NaN too."""
    inside = [low, high, *(t for t in TINY_FLOATS if low <= t <= high)]
    outside = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from([*TINY_FLOATS, 2.0000001, 100.0, 101.0, -100.0, -1e308, 1e308]))
    return mostly(st.one_of(st.floats(low, high), st.sampled_from(inside)), outside, bad_in=5)


def counts() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-1, 3), st.sampled_from([0, 16, 20, 21, 64, 65, 2**31, 2**63, 10**30]),
                     st.integers())


def texts() -> st.SearchStrategy[str]:
    """Mostly plain text; one in ten a lone surrogate, a NUL, a special token or any code point at all."""
    odd = st.one_of(st.sampled_from([*SURROGATES, "\x00", "<|endoftext|>", "\ufffd", ""]),
                    st.text(st.characters(codec=None, exclude_categories=()), max_size=8))
    return mostly(st.text(max_size=30), odd, bad_in=10)


def junk(vocab: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.none(), st.booleans(), counts(), floats(-1, 1), texts())
    return st.one_of(leaf, st.lists(leaf, max_size=3), st.dictionaries(texts(), leaf, max_size=2),
                     st.lists(token_ids(vocab), max_size=3))


def _structured_fields(vocab: int) -> dict[str, st.SearchStrategy[Any]]:
    """Constraints: JSON schemas of every shape (nested, broken, of unknown types), regexes of any text,
    catastrophic ones included, choices and grammars."""
    bad = junk(vocab)
    leaf = st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "boolean", "object", "wizard"])},
                                 optional={"maxLength": counts(), "enum": st.lists(texts(), max_size=3)})
    schema = st.recursive(leaf, lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}, optional={"maxItems": counts()}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"properties": st.dictionaries(texts(), inner, max_size=3),
                               "$ref": st.sampled_from(["#", "#/$defs/x", "nowhere"])})), max_leaves=6)
    regex = st.one_of(texts(), st.sampled_from(["a{1000}{1000}", "(a*)*b", "(?=x)", "[", "\\1", ".*"]))
    response_format = st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
        optional={"json_schema": mostly(st.fixed_dictionaries({"name": texts(), "schema": mostly(schema, bad)}),
                                        bad)})
    structured_outputs = st.fixed_dictionaries({}, optional={
        "json": mostly(schema, bad), "regex": mostly(regex, bad), "choice": mostly(st.lists(texts(), max_size=3), bad),
        "grammar": mostly(texts(), bad)})
    return {"response_format": mostly(response_format, bad), "structured_outputs": mostly(structured_outputs, bad),
            "guided_regex": mostly(regex, bad), "guided_choice": mostly(st.lists(texts(), max_size=3), bad)}


def _sampling_fields(vocab: int, model: str) -> dict[str, st.SearchStrategy[Any]]:
    bad = junk(vocab)
    stops = mostly(st.one_of(texts(), st.lists(texts(), max_size=3)), st.lists(st.just("x"), min_size=17), 10)
    return {
        "model": mostly(st.just(model), st.one_of(texts(), bad)),
        "max_tokens": mostly(st.integers(0, 6), st.one_of(counts(), bad)),
        "n": mostly(st.integers(1, 3), st.one_of(counts(), bad)),
        "temperature": mostly(floats(0, 2), bad),
        "top_p": mostly(floats(0, 1), bad),
        "top_k": mostly(st.one_of(st.integers(-1, vocab + 1), counts()), bad),
        "min_p": mostly(floats(0, 1), bad),
        "presence_penalty": mostly(floats(-2, 2), bad),
        "frequency_penalty": mostly(floats(-2, 2), bad),
        "repetition_penalty": mostly(floats(0.01, 10), bad),
        "seed": mostly(st.one_of(st.integers(), st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1])), bad),
        "stop": mostly(stops, bad),
        "stop_token_ids": mostly(st.lists(token_ids(vocab), max_size=4), st.one_of(bad, st.lists(st.just(1),
                                                                                                  min_size=65))),
        "min_tokens": mostly(st.one_of(st.integers(0, 8), counts()), bad),
        "ignore_eos": mostly(st.booleans(), bad),
        "include_stop_str_in_output": mostly(st.booleans(), bad),
        "skip_special_tokens": mostly(st.booleans(), bad),
        "stream": mostly(st.booleans(), bad),
        "stream_options": mostly(st.fixed_dictionaries({}, optional={"include_usage": mostly(st.booleans(), bad)}),
                                 bad),
        "user": mostly(texts(), bad),
        "logit_bias": mostly(st.dictionaries(st.one_of(token_ids(vocab).map(str), texts()), floats(-100, 100),
                                             max_size=2),
                             bad),
        **_structured_fields(vocab),
    }


def _message(vocab: int) -> st.SearchStrategy[dict[str, Any]]:
    bad = junk(vocab)
    part = st.fixed_dictionaries({"type": mostly(st.just("text"), texts())}, optional={"text": mostly(texts(), bad)})
    return st.fixed_dictionaries(
        {"role": mostly(st.sampled_from(["system", "developer", "user", "assistant"]),
                        st.one_of(st.sampled_from(["tool", "function", "wizard"]), bad)),
         "content": mostly(st.one_of(texts(), st.lists(part, max_size=2)), bad)},
        optional={"name": mostly(texts(), bad)},
    )


def chat_bodies(vocab: int, model: str) -> st.SearchStrategy[dict[str, Any]]:
    bad = junk(vocab)
    return st.fixed_dictionaries(
        {"messages": mostly(st.lists(_message(vocab), min_size=1, max_size=3), bad)},
        optional={**_sampling_fields(vocab, model), "max_completion_tokens": mostly(st.integers(0, 6), bad),
                  "logprobs": mostly(st.booleans(), bad),
                  "top_logprobs": mostly(st.one_of(st.integers(0, 20), counts()), bad),
                  "tool_choice": bad, "modalities": bad, "tools": bad},
    ).map(lambda body: {"model": model, **body})


def completion_bodies(vocab: int, model: str) -> st.SearchStrategy[dict[str, Any]]:
    bad = junk(vocab)
    prompt = st.one_of(texts(), st.lists(texts(), max_size=3), st.lists(token_ids(vocab), max_size=6),
                       st.lists(st.lists(token_ids(vocab), max_size=4), max_size=3))
    return st.fixed_dictionaries(
        {"prompt": mostly(prompt, bad)},
        optional={**_sampling_fields(vocab, model), "echo": mostly(st.booleans(), bad),
                  "logprobs": mostly(st.one_of(st.integers(0, 20), counts()), bad),
                  "best_of": mostly(st.one_of(st.integers(1, 3), counts()), bad), "suffix": bad},
    ).map(lambda body: {"model": model, **body})


def _input_item(vocab: int) -> st.SearchStrategy[dict[str, Any]]:
    bad = junk(vocab)
    part = st.fixed_dictionaries({"type": mostly(st.sampled_from(["input_text", "output_text"]), texts())},
                                 optional={"text": mostly(texts(), bad)})
    content = mostly(st.one_of(texts(), st.lists(part, max_size=2)), bad)
    message = st.fixed_dictionaries(
        {"role": mostly(st.sampled_from(["system", "developer", "user", "assistant"]),
                        st.one_of(st.sampled_from(["tool", "wizard"]), bad)), "content": content},
        optional={"type": mostly(st.just("message"), st.one_of(texts(), bad))})
    call = st.fixed_dictionaries({"type": st.just("function_call")},
                                 optional={"call_id": mostly(texts(), bad), "name": mostly(texts(), bad),
                                           "arguments": mostly(st.just("{}"), st.one_of(texts(), bad))})
    output = st.fixed_dictionaries({"type": st.just("function_call_output")},
                                   optional={"call_id": mostly(texts(), bad), "output": content})
    return mostly(message, st.one_of(call, output, st.fixed_dictionaries({"type": st.sampled_from(
        ["reasoning", "item_reference", "web_search_call"])})), bad_in=5)


def responses_bodies(vocab: int, model: str) -> st.SearchStrategy[dict[str, Any]]:
    bad = junk(vocab)
    sampling = _sampling_fields(vocab, model)
    text_format = st.fixed_dictionaries({"type": mostly(st.sampled_from(["text", "json_object", "json_schema"]),
                                                        st.one_of(texts(), bad))},
                                        optional={"name": mostly(texts(), bad), "schema": mostly(st.just({}), bad)})
    return st.fixed_dictionaries(
        {"input": mostly(st.one_of(texts(), st.lists(_input_item(vocab), min_size=1, max_size=3)), bad)},
        optional={**{name: sampling[name] for name in ("model", "temperature", "top_p", "seed", "stop",
                                                       "ignore_eos", "stream", "user")},
                  "instructions": mostly(texts(), bad),
                  "max_output_tokens": mostly(st.integers(1, 6), st.one_of(counts(), bad)),
                  "text": mostly(st.fixed_dictionaries({}, optional={"format": text_format}), bad),
                  "tool_choice": mostly(st.sampled_from(["auto", "none", "required"]), bad),
                  "metadata": mostly(st.dictionaries(texts(), texts(), max_size=3), bad),
                  "tools": mostly(st.just([{"type": "function", "name": "f", "parameters": {"type": "object"}}]),
                                  bad),
                  "store": mostly(st.just(False), bad), "previous_response_id": bad,
                  "include": bad, "reasoning": bad, "truncation": bad},
    ).map(lambda body: {"model": model, **body})


def requests(vocab: int, model: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """(path, raw body): JSON as a hostile client writes it (NaN literals, \\ud800 escapes), now and then not JSON."""
    encoded = st.one_of(
        chat_bodies(vocab, model).map(lambda b: ("/v1/chat/completions", b)),
        completion_bodies(vocab, model).map(lambda b: ("/v1/completions", b)),
        responses_bodies(vocab, model).map(lambda b: ("/v1/responses", b)),
    ).map(lambda pb: (pb[0], json.dumps(pb[1], allow_nan=True).encode()))
    garbage = st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/responses"]),
                        st.binary(max_size=40))
    return mostly(encoded, garbage, bad_in=20)


def assert_serves(url: str, model: str, worker_url: str, headers: dict[str, str] | None = None) -> None:
    """A normal chat request to ``url`` still gets its answer, and the worker's /health says its engine runs."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    response = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"], response.text
    assert httpx.get(worker_url + "/health").status_code == 200


def failure(status: int, content_type: str, content: bytes) -> str | None:
    """Why an answer breaks the property (None when it holds): no 5xx, every error in OpenAI's shape, and a
    stream that ends with ``[DONE]`` and carries no error event."""
    if status >= 500:
        return f"{status}"
    if status >= 400:
        error = json.loads(content).get("error") if _is_json(content) and content.startswith(b"{") else None
        if not isinstance(error, dict) or set(error) != ERROR_FIELDS or not error["message"]:
            return f"{status} not OpenAI-shaped"
        return None
    if content_type.startswith("application/json"):
        return None if _is_json(content) else "200 not JSON"
    if not content_type.startswith("text/event-stream"):
        return None
    events = [line[6:] for line in content.decode().splitlines() if line.startswith("data: ")]
    if events and _typed_event(events[-1]) is not None:
        return _typed_stream_failure(events)
    if not events or events[-1] != "[DONE]":
        return "stream without [DONE]"
    if any(not _is_json(e.encode()) or "error" in json.loads(e) for e in events[:-1]):
        return "stream error event"
    return None


def _typed_event(data: str) -> str | None:
    """The `type` of a Responses stream event (None for anything else)."""
    event = json.loads(data) if _is_json(data.encode()) else None
    return event.get("type") if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def _typed_stream_failure(events: list[str]) -> str | None:
    """A Responses stream has no `[DONE]`: it ends with its final response event, and has no error events."""
    types = [_typed_event(e) for e in events]
    if any(t in ("error", "response.failed") for t in types):
        return "stream error event"
    if types[-1] not in ("response.completed", "response.incomplete") or None in types:
        return "stream without its final event"
    return None


def _is_json(content: bytes) -> bool:
    try:
        json.loads(content)
    except ValueError:
        return False
    return True


def served_model(case: Any, model: str) -> Any:
    """A schemathesis case whose body names the served model, so that it gets past the 404 to the field checks."""
    if isinstance(case.body, dict) and "model" in case.body:
        case.body = {**case.body, "model": model}
    return case


@dataclass
class Tally:
    """What a fuzz run sent and got: requests, answers by status class, and the failures with an example each."""

    requests: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)  # "status code param" of the 4xx answers

    def note(self, status: int, content_type: str, content: bytes, sent: str) -> str | None:
        self.requests += 1
        self.classes[f"{status // 100}xx"] += 1
        why = failure(status, content_type, content)
        if why is None and status >= 400:
            error = json.loads(content)["error"]
            self.refusals[f"{status} {error['code']} {error['param']}"] += 1
        if why is not None:
            self.failures[why] += 1
            self.examples.setdefault(why, f"{sent[:300]} -> {content[:300]!r}")
        return why

    def note_response(self, response: httpx.Response, sent: str) -> str | None:
        return self.note(response.status_code, response.headers.get("content-type", ""), response.content, sent)

    def send_case(self, case: Any, model: str, base_url: str, headers: dict[str, str] | None = None) -> str | None:
        """Send a schemathesis case (its body naming ``model``) and note the answer."""
        case = served_model(case, model)
        response = case.call(base_url=base_url, headers=headers, timeout=120)
        content_type = "".join(response.headers.get("content-type", []))  # schemathesis: a list per header
        return self.note(response.status_code, content_type, response.content,
                         f"{case.method} {case.path} {case.body!r}")
