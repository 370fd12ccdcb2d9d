"""What the gateway checks of a request body before it sizes, meters or forwards it: strict JSON (no NaN or
Infinity, which the worker's JSON encoder refuses) whose every string is valid Unicode (a ``\\ud800`` escape
decodes to a lone surrogate that cannot be encoded as UTF-8 again, so it would fail metering or forwarding);
and the OpenAPI request bodies of the routes that read their JSON themselves."""

from __future__ import annotations

import json
from typing import Any

from moecloud.gateway.errors import InvalidRequest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(raw: bytes) -> Any:
    """The body as JSON, refusing NaN/Infinity; raises ValueError (or RecursionError) when it is not JSON."""
    return json.loads(raw, parse_constant=_refuse_constant)


def check_text(body: Any) -> None:
    """Refuse the first string (key or value) that is not valid Unicode, naming its field as ``a[0].b``.

    A loop, not recursion: JSON nested as deep as the parser allows must not overflow the stack here."""
    pending: list[tuple[str, Any]] = [("", body)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, list):
            pending.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                pending.append((f"{path}.{key}" if path else key, item))
                pending.append((path, key))
        elif isinstance(value, str) and not _encodable(value):
            raise InvalidRequest(f"'{path or 'body'}' is not valid Unicode (a lone surrogate)", param=path or None)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _body(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI request body: the fields the gateway reads itself; the rest pass through to the worker, whose
    own document (``GET /openapi.json`` on a worker) has the full schema."""
    shared = {"model": {"type": "string", "minLength": 1}, "stream": {"type": "boolean"}}
    schema = {"type": "object", "required": required, "properties": {**shared, **properties},
              "additionalProperties": True}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_COMPLETION_FIELDS = {"max_tokens": {"type": "integer", "minimum": 1}, "n": {"type": "integer", "minimum": 1},
                      "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}}}
CHAT_BODY = _body(["model", "messages"], {
    **_COMPLETION_FIELDS,
    "messages": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["role"],
        "properties": {"role": {"type": "string"}, "content": {"type": ["string", "array", "null"]}}}},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
})
COMPLETION_BODY = _body(["model", "prompt"], {
    **_COMPLETION_FIELDS,
    "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1}]},
})
RESPONSES_BODY = _body(["model", "input"], {
    "input": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "object"}}]},
    "instructions": {"type": "string"},
    "max_output_tokens": {"type": "integer", "minimum": 1},
    "tools": {"type": "array", "items": {"type": "object"}},
    "text": {"type": "object", "properties": {"format": {"type": "object"}}},
})
