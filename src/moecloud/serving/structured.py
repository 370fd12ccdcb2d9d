"""The request fields that ask for structured output, read into the engine's `StructuredOutput`.

OpenAI's `response_format` (chat and completions), vLLM's `structured_outputs` and its older `guided_json`,
`guided_regex`, `guided_choice`, `guided_grammar`. At most one may be set; every refusal names the field.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from moecloud.engine import StructuredOutput
from moecloud.engine.sampling_params import InvalidParameter
from moecloud.serving.errors import InvalidRequest

if TYPE_CHECKING:
    from moecloud.serving.protocol import SamplingRequest

_STRUCTURED_OUTPUTS_KINDS = ("json", "regex", "choice", "grammar", "json_object")
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}


def requested_constraint(body: SamplingRequest, max_bytes: int) -> tuple[StructuredOutput, str] | None:
    """The constraint the request asks for and the field that asked, or None; ``InvalidRequest`` naming the field
    for a malformed one or one whose spec is longer than ``max_bytes``."""
    found: list[tuple[StructuredOutput, str]] = []
    if body.response_format is not None:
        constraint = _response_format(body.response_format)
        if constraint is not None:
            found.append((constraint, "response_format"))
    if body.structured_outputs is not None:
        found.append(_structured_outputs(body.structured_outputs))
    for name, kind in _GUIDED.items():
        if getattr(body, name) is not None:
            found.append((_build(kind, getattr(body, name), name), name))
    if len(found) > 1:
        raise InvalidRequest(f"'{found[1][1]}' and '{found[0][1]}' both constrain the output: give one",
                             param=found[1][1])
    if not found:
        return None
    constraint, param = found[0]
    if len(constraint.spec.encode("utf-8")) > max_bytes:
        raise InvalidRequest(f"the constraint in '{param}' is longer than {max_bytes} bytes", param=param)
    return constraint, param


def _response_format(value: Any) -> StructuredOutput | None:
    if not isinstance(value, dict):
        raise InvalidRequest("'response_format' must be an object with a 'type'", param="response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput.json_object()
    if kind != "json_schema":
        raise InvalidRequest("'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                             param="response_format.type")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict | bool):
        raise InvalidRequest("'response_format.json_schema' must be an object whose 'schema' is a JSON schema",
                             param="response_format.json_schema")
    schema = spec.get("schema", {})
    return _build("json", {} if schema is True else schema, "response_format")


def _structured_outputs(value: Any) -> tuple[StructuredOutput, str]:
    if not isinstance(value, dict):
        raise InvalidRequest("'structured_outputs' must be an object", param="structured_outputs")
    kinds = [k for k in _STRUCTURED_OUTPUTS_KINDS if value.get(k) not in (None, False)]
    if len(kinds) != 1:
        raise InvalidRequest(f"'structured_outputs' must set exactly one of {', '.join(_STRUCTURED_OUTPUTS_KINDS)}",
                             param="structured_outputs")
    param = f"structured_outputs.{kinds[0]}"
    if kinds[0] == "json_object":
        return StructuredOutput.json_object(), param
    return _build(kinds[0], value[kinds[0]], param), param


def _build(kind: str, value: Any, param: str) -> StructuredOutput:
    """A constraint from one field's value; vLLM accepts a JSON schema as an object or as its JSON text."""
    try:
        if kind == "json":
            if isinstance(value, str):
                value = json.loads(value)
            return StructuredOutput.json_schema(value)
        if kind == "regex":
            return StructuredOutput.regex(value)
        if kind == "choice":
            return StructuredOutput.choice(value if isinstance(value, list) else [])
        return StructuredOutput.grammar(value)
    except (InvalidParameter, ValueError, RecursionError) as exc:
        raise InvalidRequest(f"'{param}' is not a valid {kind} constraint: {exc}", param=param) from exc
