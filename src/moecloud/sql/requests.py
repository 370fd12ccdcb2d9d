"""What each SQL function asks the gateway and how it reads the answer, in the standard library alone: DuckDB's
functions use it in this process, and `moecloud sql install-postgres` ships this file's text into PostgreSQL,
whose PL/Python functions run it with the server's own Python (``pg_call``)."""

from __future__ import annotations

import json
from typing import Any

PREVIEW = 40  # characters of a row's input shown in its error


def parse_json(text: str, kind: type, field: str) -> Any:
    """``text`` as JSON of ``kind`` (list or dict); a ValueError naming ``field`` otherwise."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{field}: not JSON ({error})") from None
    if not isinstance(value, kind):
        raise ValueError(f"{field}: a JSON {'array' if kind is list else 'object'} is needed")
    return value


def content(data: dict[str, Any]) -> str:
    """A chat completion's text."""
    text = data["choices"][0]["message"]["content"]
    if not isinstance(text, str):
        raise ValueError("the answer has no text content")
    return text


def preview(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= PREVIEW else text[:PREVIEW] + "…")


def chat_body(model: str, messages: list[Any], options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {**defaults, **options, "model": model, "messages": messages, "stream": False}  # one JSON answer


def classify_body(model: str, text: str, labels: list[str | None], defaults: dict[str, Any]) -> dict[str, Any]:
    """A chat request constrained to exactly one of ``labels`` (greedy)."""
    choices = [label for label in labels if label is not None]
    if not choices:
        raise ValueError("labels: give at least one label")
    prompt = f"Classify the text as one of: {', '.join(choices)}.\n\nText: {text}\n\nLabel:"
    return {**defaults, "model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "structured_outputs": {"choice": choices},
            "max_tokens": max(len(c.encode()) for c in choices) + 1}  # a token is at least a byte


def read_label(data: dict[str, Any], body: dict[str, Any]) -> str:
    answer = content(data)
    if answer not in body["structured_outputs"]["choice"]:
        raise ValueError(f"the answer {answer!r} is none of the labels")
    return answer


def extract_body(model: str, text: str, schema: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A chat request whose answer is JSON matching ``schema`` (strict, greedy)."""
    prompt = f"Extract from the text a JSON value matching this JSON schema:\n{json.dumps(schema)}\n\nText: {text}"
    return {"temperature": 0, **defaults, "model": model, "messages": [{"role": "user", "content": prompt}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "extract", "schema": schema, "strict": True}}}


def read_extracted(data: dict[str, Any]) -> Any:
    """The JSON value of an extraction (the caller checks it against the schema where it can)."""
    if data["choices"][0].get("finish_reason") == "length":
        raise ValueError("the answer was cut at max_tokens before the JSON was complete")
    return json.loads(content(data))


def score_body(model: str, prompt: str, continuation: str) -> dict[str, Any]:
    """Scoring the prompt without generating: echo, logprobs, max_tokens 0."""
    return {"model": model, "prompt": prompt + continuation, "echo": True, "logprobs": 0, "max_tokens": 0}


def read_score(data: dict[str, Any], continuation: str) -> float:
    """The log-likelihood of ``continuation``: the sum over the last tokens that cover its characters."""
    logprobs = data["choices"][0]["logprobs"]
    total, covered = 0.0, 0
    for token, logprob in zip(reversed(logprobs["tokens"]), reversed(logprobs["token_logprobs"]), strict=True):
        if covered >= len(continuation):
            break
        total += logprob
        covered += len(token)
    return total


def pg_call(plpy: Any, name: str, args: list[Any], failing: bool) -> Any:
    """One PL/Python function call: the request for ``args``, sent with the database's ``moecloud.base_url`` and
    ``moecloud.api_key`` settings; None for a NULL input, or (``failing`` False) for a failure."""
    import urllib.error
    import urllib.request

    if any(a is None for a in args[:2 if name in ("moe_complete", "moe_chat") else 3]):
        return None
    setting = "SELECT current_setting($1, true) AS value"
    plan = plpy.prepare(setting, ["text"])
    base_url = (plpy.execute(plan, ["moecloud.base_url"])[0]["value"] or "").rstrip("/")
    api_key = plpy.execute(plan, ["moecloud.api_key"])[0]["value"] or ""
    try:
        path, body, read = _pg_request(name, args)
        request = urllib.request.Request(f"{base_url}/{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"authorization": f"Bearer {api_key}",
                                                  "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ValueError(f"HTTP {error.code}: {_message(error.read())}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ValueError(f"{base_url or 'moecloud.base_url (not set)'}: {error}") from None
        return read(data)
    except (ValueError, LookupError, TypeError) as error:
        if failing:
            plpy.error(f"{name} ({preview(args[1])}): {error}")
        return None


def _pg_request(name: str, args: list[Any]) -> tuple[str, dict[str, Any], Any]:
    model, first = args[0], args[1]
    options = parse_json(args[2], dict, "options") if name in ("moe_complete", "moe_chat") and args[2] else {}
    if name == "moe_complete":
        return "chat/completions", chat_body(model, [{"role": "user", "content": first}], options, {}), content
    if name == "moe_chat":
        return "chat/completions", chat_body(model, parse_json(first, list, "messages"), options, {}), content
    if name == "moe_classify":
        body = classify_body(model, first, list(args[2]), {})
        return "chat/completions", body, lambda data: read_label(data, body)
    if name == "moe_extract":
        body = extract_body(model, first, parse_json(args[2], dict, "json_schema"), {})
        return "chat/completions", body, lambda data: json.dumps(read_extracted(data))
    return "completions", score_body(model, first, args[2]), lambda data: read_score(data, args[2])


def _message(raw: bytes) -> str:
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, LookupError, TypeError):
        return raw[:200].decode(errors="replace")
